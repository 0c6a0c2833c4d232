"""Fine-tuning strategies and imbalance modes do exactly what they claim."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from cxrssl.data.samplers import OversampleSampler, UndersampleSampler
from cxrssl.models import create_encoder
from cxrssl.tasks.cardiomegaly import CardiomegalyTask
from cxrssl.tasks.imbalance import build_imbalance

LABELS = np.array([1.0] * 10 + [0.0] * 90)


def task(strategy="full", blocks=1, imbalance="none", **kw):
    return CardiomegalyTask(create_encoder("test_resnet"), build_imbalance({"name": imbalance}, LABELS, 0),
                            strategy=strategy, trainable_blocks=blocks, **kw)


def trainable(t):
    return {n for n, p in t.encoder.named_parameters() if p.requires_grad}


def test_linear_probe_freezes_encoder_and_its_batchnorm_stats():
    t = task("linear").train()
    assert trainable(t) == set()
    assert all(p.requires_grad for p in t.head.parameters())
    bns = [m for m in t.encoder.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and not any(m.training for m in bns)
    before = bns[0].running_mean.clone()
    t(torch.rand(4, 1, 32, 32))
    torch.testing.assert_close(bns[0].running_mean, before)


def test_partial_trains_only_the_last_blocks():
    one, two = trainable(task("partial", 1)), trainable(task("partial", 2))
    assert one and all(n.startswith("net.layer4.") for n in one)
    assert one < two and any(n.startswith("net.layer3.") for n in two)
    with pytest.raises(ValueError, match="trainable_blocks=9"):
        task("partial", 9)


def test_full_uses_lower_backbone_lr():
    t = task("full", backbone_lr_scale=0.1)
    scales = {g["lr_scale"] for g in t.optimizer_groups(0.01)}
    assert scales == {1.0, 0.1}


def test_weighted_pos_weight_is_negatives_over_positives():
    imb = build_imbalance({"name": "weighted"}, LABELS, 0)
    assert imb.pos_weight == pytest.approx(9.0) and imb.sampler is None
    given = build_imbalance({"name": "weighted", "pos_weight": 3.0}, LABELS, 0)
    logits, target = torch.zeros(2), torch.tensor([1.0, 0.0])
    assert given.loss(logits, target).item() == pytest.approx((3 * np.log(2) + np.log(2)) / 2, rel=1e-5)


def test_oversample_draws_requested_positive_share_and_reshuffles_per_epoch():
    sampler = OversampleSampler(LABELS, positive_fraction=0.5, seed=0, num_samples=20000)
    first = list(sampler)
    share = LABELS[first].mean()
    assert 0.47 < share < 0.53 and len(first) == 20000
    sampler.set_epoch(1)
    assert list(sampler) != first
    imb = build_imbalance({"name": "oversample_weighted", "positive_fraction": 0.5}, LABELS, 0)
    assert isinstance(imb.sampler, OversampleSampler) and imb.pos_weight == pytest.approx(9.0)


def test_undersample_is_balanced_and_redrawn_every_epoch():
    sampler = UndersampleSampler(LABELS, ratio=1.0, seed=0)
    epoch0 = list(sampler)
    sampler.set_epoch(1)
    epoch1 = list(sampler)
    for chosen in (epoch0, epoch1):
        assert len(chosen) == 20 and LABELS[chosen].sum() == 10 and len(set(chosen)) == 20
    assert set(epoch0) != set(epoch1)


def test_focal_loss_downweights_easy_examples():
    imb = build_imbalance({"name": "focal", "gamma": 2.0}, LABELS, 0)
    easy = imb.loss(torch.tensor([6.0]), torch.tensor([1.0]))
    bce = torch.nn.functional.binary_cross_entropy_with_logits(torch.tensor([6.0]), torch.tensor([1.0]))
    assert easy < bce / 100


def test_nan_labels_are_ignored_and_dual_loss_adds_reconstruction():
    t = task("full", recon_weight=0.5)
    out = t(torch.rand(3, 1, 32, 32))
    batch = {"cardiomegaly": torch.tensor([1.0, float("nan"), 0.0])}
    loss, logs = t.loss(out, batch)
    assert torch.isfinite(loss) and logs["recon_loss"] > 0
    assert all(isinstance(v, torch.Tensor) and v.ndim == 0 and not v.requires_grad for v in logs.values())
    assert float(logs["loss"]) == pytest.approx(float(logs["cls_loss"] + 0.5 * logs["recon_loss"]), rel=1e-5)


def test_unknown_strategy_and_imbalance_are_refused():
    with pytest.raises(ValueError, match="linear"):
        task("freeze")
    with pytest.raises(ValueError, match="oversample"):
        build_imbalance({"name": "smote"}, LABELS, 0)


def test_undersampled_epoch_smaller_than_a_batch_still_trains(tmp_path):
    import pandas as pd
    from omegaconf import OmegaConf

    from cxrssl.data.loaders import build_dataloaders

    rows = pd.DataFrame({"image_id": [f"i{i}" for i in range(40)], "path": [str(tmp_path / "x.png")] * 40,
                         "patient_id": [f"p{i}" for i in range(40)], "age": 50.0, "sex": "M", "view": "PA",
                         "cardiomegaly": [1.0, 1.0] + [0.0] * 38, "split": "train", "mask_path": float("nan")})
    cfg = OmegaConf.create({"image_size": 32, "batch_size": 16, "num_workers": 0, "cache": {"enabled": False},
                            "augment": {"rotate_limit": 0, "scale_limit": 0, "brightness_contrast": 0, "hflip": False}})
    sampler = UndersampleSampler(rows["cardiomegaly"], ratio=1.0)
    loader = build_dataloaders(cfg, rows, seed=0, splits=("train",), train_sampler=sampler)["train"]
    assert len(loader) == 1 and not loader.drop_last  # 4 sampled images < batch 16: one batch, not none
    assert loader.sampler.base is sampler  # wrapped in the resumable (seed, epoch) sampler
