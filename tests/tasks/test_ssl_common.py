"""Pieces the SSL methods share, each against a reference computation written out here."""
from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from cxrssl.tasks.dino import teacher_temperature
from cxrssl.tasks.registry import UnsafeTargetError, build_registered_task, check_targets
from cxrssl.tasks.ssl_common import (EmbeddingMonitor, collapse_stats, effective_rank, ema_update,
                                     knn_cv_score, make_teacher, momentum_at)


def test_effective_rank_matches_entropy_of_singular_values():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(50, 6, generator=g) * torch.tensor([5.0, 3, 1, 1, 0.5, 0.1])
    xc = (x - x.mean(0)).numpy().astype(np.float64)
    s = np.linalg.svd(xc, compute_uv=False)
    p = s / s.sum()
    assert effective_rank(x) == pytest.approx(float(np.exp(-(p * np.log(p)).sum())), rel=1e-6)
    line = torch.linspace(0, 1, 20)[:, None] * torch.tensor([[1.0, 2.0, 3.0]])
    assert effective_rank(line) == pytest.approx(1.0, abs=1e-3)
    spread = torch.cat([torch.eye(4), -torch.eye(4)]) * 3  # equal variance along 4 axes
    assert effective_rank(spread) == pytest.approx(4.0, rel=1e-6)


def test_collapse_stats_reference_and_collapse_warning():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(200, 16, generator=g)
    z = x / x.norm(dim=1, keepdim=True)
    assert collapse_stats(x)["std"] == pytest.approx(float(z.std(0).mean()) * 4.0, rel=1e-6)
    assert 0.8 < collapse_stats(x)["std"] < 1.1  # isotropic: ~1
    collapsed = torch.ones(200, 16) + 1e-4 * torch.randn(200, 16, generator=g)
    assert collapse_stats(collapsed)["std"] < 0.01
    monitor = EmbeddingMonitor(target="sex")
    monitor.update(collapsed, {"sex": torch.tensor([0.0, 1.0] * 100)})
    with pytest.warns(RuntimeWarning, match="collapse"):
        out = monitor.compute()
    assert out["collapse_std"] < 0.01
    healthy = EmbeddingMonitor(target="sex")
    healthy.update(x, {"sex": torch.tensor([0.0, 1.0] * 100)})
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        healthy.compute()


def test_ema_update_and_cosine_momentum():
    student, teacher = nn.Linear(3, 2), nn.Linear(3, 2)
    old = [p.detach().clone() for p in teacher.parameters()]
    ema_update(student, teacher, 0.9)
    for t, s, o in zip(teacher.parameters(), student.parameters(), old):
        assert torch.allclose(t, 0.9 * o + 0.1 * s)
    assert momentum_at(0, 100, 0.99, 1.0) == pytest.approx(0.99)
    assert momentum_at(100, 100, 0.99, 1.0) == pytest.approx(1.0)
    mid = 0.99 + (1.0 - 0.99) * (1 - math.cos(math.pi * 50 / 99)) / 2
    assert momentum_at(50, 100, 0.99, 1.0) == pytest.approx(mid)
    frozen = make_teacher(student)
    assert not any(p.requires_grad for p in frozen.parameters())
    assert all(torch.equal(a, b) for a, b in zip(frozen.parameters(), student.parameters()))


def test_teacher_temperature_warmup():
    assert teacher_temperature(0, 100, 0.04, 0.07, 0.1) == pytest.approx(0.04)
    assert teacher_temperature(5, 100, 0.04, 0.07, 0.1) == pytest.approx(0.055)
    assert teacher_temperature(10, 100, 0.04, 0.07, 0.1) == pytest.approx(0.07)
    assert teacher_temperature(3, 100, 0.04, 0.07, 0.0) == pytest.approx(0.07)


def test_knn_cv_score_separates_and_matches_chance():
    rng = np.random.default_rng(0)
    y = np.repeat([0.0, 1.0], 60)
    x = rng.normal(size=(120, 8))
    informative = x.copy()
    informative[:, 0] += 4 * y
    assert knn_cv_score(informative, y, "binary", k=10) > 0.95
    assert abs(knn_cv_score(x, y, "binary", k=10) - 0.5) < 0.2
    assert knn_cv_score(x, np.r_[y[:-1] * 0, 1.0], "binary") is None  # one positive: not scorable
    age = rng.uniform(20, 80, size=120)
    feats = np.c_[np.cos(age / 30), np.sin(age / 30), rng.normal(size=(120, 2)) * 0.01]
    assert knn_cv_score(feats, age, "regression", k=5) > 0.8


def test_registry_allow_list_blocks_foreign_targets():
    check_targets({"_target_": "cxrssl.tasks.simclr.SimCLRTask", "x": {"y": 1}})
    with pytest.raises(UnsafeTargetError, match=r"pretext.task._target_='os.system'"):
        check_targets({"_target_": "os.system", "_args_": ["echo"]})
    with pytest.raises(UnsafeTargetError, match=r"pretext.task.inner._target_"):
        check_targets({"_target_": "cxrssl.tasks.simclr.SimCLRTask", "inner": {"_target_": "subprocess.run"}})
    with pytest.raises(UnsafeTargetError):
        check_targets({"_target_": "cxrssl.tasks..os.system"})
    with pytest.raises(UnsafeTargetError):  # nothing is instantiated before the check
        build_registered_task({"name": "x", "task": {"_target_": "builtins.exec", "_partial_": True}}, nn.Identity())
