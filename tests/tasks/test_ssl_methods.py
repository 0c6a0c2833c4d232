"""Each SSL method built from its real conf/pretext/<name>.yaml: it learns on a fixed batch,
its teacher moves by exactly the EMA rule, and validation leaves training state alone."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch
from omegaconf import OmegaConf

from cxrssl.tasks import build_pretext_task

CONF = Path(__file__).resolve().parents[2] / "conf"
SIZE, B = 32, 8


def build(name: str, backbone: str = "tiny", **task_overrides):
    cfg = OmegaConf.create({"data": {"image_size": SIZE},
                            "pretext": OmegaConf.load(CONF / "pretext" / f"{name}.yaml"),
                            "backbone": OmegaConf.load(CONF / "backbone" / f"{backbone}.yaml")})
    if backbone.startswith("vit"):
        cfg.backbone.timm_kwargs.patch_size = 8
    for key, value in task_overrides.items():
        cfg.pretext.task[key] = value
    torch.manual_seed(0)
    return build_pretext_task(cfg.pretext, cfg.backbone, pd.DataFrame())


def batch(n_local: int = 0, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(B, 1, SIZE, SIZE, generator=g)
    views = [(base + 0.05 * torch.randn(base.shape, generator=g)).clamp(0, 1) for _ in range(2)]
    views += [torch.rand(B, 1, SIZE // 2, SIZE // 2, generator=g) for _ in range(n_local)]
    return {"image": base, "views": views, "sex": torch.tensor([0.0, 1.0] * (B // 2)),
            "age": torch.linspace(20, 80, B), "cardiomegaly": torch.full((B,), float("nan"))}


def train_steps(task, data, steps: int, lr: float = 1e-3) -> list[float]:
    opt = torch.optim.Adam([p for p in task.parameters() if p.requires_grad], lr)
    task.train()
    losses = []
    for step in range(steps):
        torch.manual_seed(step % 1)  # MAE: the same mask every step, so losses compare
        out = task.training_step(data)
        assert out["loss"].requires_grad and out["loss"].ndim == 0
        assert all(not v.requires_grad for k, v in out.items() if k != "loss")
        out["loss"].backward()
        opt.step()
        opt.zero_grad()
        task.on_after_optimizer_step(step + 1, steps)
        losses.append(float(out["loss"].detach()))
    return losses


@pytest.mark.parametrize("name,backbone,n_local", [("simclr", "tiny", 0), ("moco", "tiny", 0),
                                                   ("byol", "tiny", 0), ("dino", "tiny", 2),
                                                   ("mae", "vit_tiny", 0)])
def test_method_learns_on_a_fixed_batch_and_keeps_encoder_prefix(name, backbone, n_local):
    overrides = {"memory_bank_size": 0} if name == "moco" else {}  # a filling bank raises the loss
    task = build(name, backbone, **overrides)
    assert task.name == name and task.monitor == "knn" and task.monitor_mode == "max"
    losses = train_steps(task, batch(n_local), steps=8)
    assert losses[-1] < losses[0] - 0.02 * abs(losses[0]), losses
    # the encoder every command loads lives under `encoder.`; teachers do not shadow it
    state = task.state_dict()
    encoder_keys = {k for k in state if k.startswith("encoder.")}
    assert encoder_keys == {f"encoder.{k}" for k in task.encoder.state_dict()}
    task.eval()
    task.reset_metrics()
    with torch.no_grad():
        val = task.validation_step(batch(n_local, seed=1))
    assert torch.isfinite(val["loss"])
    metrics = task.on_validation_epoch_end()
    assert {"knn", "collapse_std", "collapse_eff_rank"} <= set(metrics)
    assert task.batch_size(batch(n_local)) == B


@pytest.mark.parametrize("name,student,teacher", [("moco", "projection", "teacher_projection"),
                                                  ("byol", "projection", "teacher_projection"),
                                                  ("dino", "head", "teacher_head")])
def test_teacher_moves_by_the_ema_rule(name, student, teacher):
    task = build(name, momentum=0.9, momentum_end=0.99)
    train_steps(task, batch(2 if name == "dino" else 0), steps=1)
    s_params = [p.detach().clone() for p in task.encoder.parameters()]
    t_before = [p.detach().clone() for p in task.teacher_encoder.parameters()]
    task.on_after_optimizer_step(5, 10)
    m = task.momentum
    assert 0.9 < m < 0.99
    for s, t0, t1 in zip(s_params, t_before, task.teacher_encoder.parameters()):
        assert torch.allclose(t1, m * t0 + (1 - m) * s, atol=1e-6)
    assert not any(p.requires_grad for p in getattr(task, teacher).parameters())
    assert all(p.requires_grad for p in task.encoder.parameters())
    assert any(p.requires_grad for p in getattr(task, student).parameters())  # DINO: weight_g stays fixed


def test_dino_validation_keeps_the_centre_and_training_moves_it():
    task = build("dino")
    data = batch(2)
    task.eval()
    with torch.no_grad():
        task.validation_step(data)
    assert torch.count_nonzero(task.criterion.center) == 0
    train_steps(task, data, steps=1)
    assert torch.count_nonzero(task.criterion.center) > 0
    assert task.current_teacher_temp == pytest.approx(0.04)


def test_moco_memory_bank_fills_only_in_training():
    task = build("moco", memory_bank_size=16)
    bank = task.criterion.memory_bank.bank.clone()
    task.eval()
    with torch.no_grad():
        task.validation_step(batch())
    assert torch.equal(task.criterion.memory_bank.bank, bank)
    train_steps(task, batch(), steps=1)
    assert not torch.equal(task.criterion.memory_bank.bank, bank)


def test_mae_targets_are_the_hidden_patches_and_cnn_is_refused():
    task = build("mae", "vit_tiny", mask_ratio=0.75)
    task.eval()
    images = batch()["image"]
    out = task.reconstruct(images)
    n_patches = (SIZE // 8) ** 2
    assert out["idx_mask"].shape == (B, n_patches - int(n_patches * 0.25))
    # reference patchify: unfold the normalised image into 8×8 patches in row-major order
    x = (images - 0.5) / 0.25
    patches = x.unfold(2, 8, 8).unfold(3, 8, 8).reshape(B, n_patches, 64)
    ref = torch.stack([patches[i, out["idx_mask"][i] - 1] for i in range(B)])
    assert torch.allclose(out["target"], ref, atol=1e-6)
    assert torch.equal(task.reconstruct(images)["idx_mask"], out["idx_mask"])  # fixed mask in eval
    # norm_pix_loss reference: per-patch standardised MSE
    pred = torch.zeros_like(ref)
    std = (ref - ref.mean(-1, keepdim=True)) / (ref.var(-1, keepdim=True) + 1e-6).sqrt()
    assert float(task.mae_loss(pred, ref)) == pytest.approx(float((std ** 2).mean()), rel=1e-5)
    with pytest.raises(ValueError, match="needs a ViT backbone"):
        build("mae", "tiny")
