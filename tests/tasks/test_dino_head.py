"""DINO's head: BatchNorm for CNN encoders (the cause of the uniform collapse on the phantom) and
the teacher-entropy collapse monitor (DINO paper sec. 5.3), which the backbone monitor cannot replace."""
from __future__ import annotations

import math
import warnings

import pytest
import torch

from cxrssl.models.backbones import Encoder
from cxrssl.tasks.dino import DINOTask, HeadEntropyMonitor, head_batch_norm


def _phantom_like(n_batches: int, size: int = 48, batch: int = 32) -> torch.Tensor:
    """Images sharing one bright structure with small per-image variation, like the phantom's
    radiographs: a CNN's pooled features then sit around one large common mean direction."""
    g = torch.Generator().manual_seed(0)
    base = torch.rand(1, 1, 1, size, size, generator=g)
    return (0.5 + 0.3 * base + 0.05 * torch.randn(n_batches, batch, 1, size, size, generator=g)).clamp(0, 1)


def _teacher_entropy(batch_norm) -> dict[str, float]:
    torch.manual_seed(0)
    task = DINOTask(Encoder("test_resnet"), batch_norm=batch_norm)
    x = _phantom_like(6)
    with torch.no_grad():
        task.train()
        for _ in range(15):  # the teacher centre (momentum 0.9) reaches its fixed point on these images
            for b in x[:3]:
                task.ssl_loss([b, b])
        task.eval()
        task.reset_metrics()
        for b in x[3:]:
            task.ssl_loss([b, b])
    return task.head_monitor.compute()


def test_cnn_head_keeps_the_centred_teacher_informative_on_phantom_like_images():
    """Regression for the uniform collapse: without BatchNorm the head maps every image to
    nearly the same output, the centre removes it and the teacher is ~flat (ratio 0.79 here at init,
    0.89 of log K after 6 epochs on the phantom). With BN (auto for CNNs): 0.55 here, 0.58 trained.
    (At 32 px the tiny CNN's map is too small for the difference to show: 0.57 vs 0.62.)"""
    assert head_batch_norm("auto", Encoder("test_resnet")) is True
    stats = _teacher_entropy("auto")
    assert stats["head_entropy_ratio"] < 0.7, stats
    assert stats["head_marginal_entropy_ratio"] > 0.5, stats  # and the images do not all pick one output


def test_batch_norm_setting_auto_is_off_for_vits_and_bad_values_are_named():
    class Vit:
        name = "vit_tiny_patch16_224"

    assert head_batch_norm("auto", Vit()) is False and head_batch_norm(False, Vit()) is False
    with pytest.raises(ValueError, match="pretext.task.batch_norm"):
        head_batch_norm("yes", Vit())


def _run_monitor(logits: torch.Tensor, capsys) -> tuple[dict, str, list]:
    monitor = HeadEntropyMonitor(output_dim=logits.shape[-1])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        monitor.update(logits, torch.zeros(1, 1, logits.shape[-1]), temperature=0.04)
        stats = monitor.compute()
    return stats, capsys.readouterr().out, [w for w in caught if issubclass(w.category, RuntimeWarning)]


def test_head_monitor_warns_on_uniform_teacher(capsys):
    logits = 1e-4 * torch.randn(2, 64, 256)  # centred teacher with nothing left: flat after sharpening
    stats, out, caught = _run_monitor(logits, capsys)
    assert stats["head_entropy_ratio"] > 0.99 and stats["head_entropy"] == pytest.approx(math.log(256), rel=0.01)
    assert "WARNING: DINO head collapse (uniform)" in out and len(caught) == 1


def test_head_monitor_warns_on_one_hot_teacher(capsys):
    logits = torch.zeros(2, 64, 256)
    logits[..., 7] = 1.0  # every image: the same dominant output
    stats, out, caught = _run_monitor(logits, capsys)
    assert stats["head_entropy_ratio"] < 0.01 and stats["head_marginal_entropy_ratio"] < 0.01
    assert "WARNING: DINO head collapse (one-hot)" in out and len(caught) == 1


def test_head_monitor_is_quiet_for_a_sharp_diverse_teacher(capsys):
    g = torch.Generator().manual_seed(0)
    logits = torch.nn.functional.normalize(torch.randn(2, 64, 256, generator=g), dim=-1) * 3
    stats, out, caught = _run_monitor(logits, capsys)
    assert 0.05 < stats["head_entropy_ratio"] < 0.98 and stats["head_marginal_entropy_ratio"] > 0.5, stats
    assert "WARNING" not in out and not caught


def test_pretrain_logs_the_teacher_entropy_each_validation_epoch(tmp_path):
    from cxrssl.commands.inprocess import run_command
    from tests.conftest import TINY

    _, summary = run_command("pretrain", [*TINY, f"mlflow.tracking_uri=sqlite:///{tmp_path}/mlflow.db", "pretext=dino",
                                          "trainer.limit_batches=2", "data.pretrain_pool=train"], run_dir=tmp_path / "run")
    final = summary["final"]
    assert {"val/head_entropy", "val/head_entropy_ratio", "val/head_marginal_entropy_ratio"} <= set(final), final
    assert 0.0 < final["val/head_entropy_ratio"] <= 1.0
