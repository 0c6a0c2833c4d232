"""Claims that are cheap to observe without a training run: atomic checkpoints, sampler fractions,
per-group learning rates, the default Grad-CAM layer, patient-level bootstrap by default.

Each test compares against an independently known value (bytes of the old file, a target
fraction other than ½, a parameter's actual update size, the deepest feature map's shape), never a
value with itself.
"""
from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest
import torch

from cxrssl.data.samplers import OversampleSampler, UndersampleSampler
from cxrssl.engine import checkpoint as checkpoint_module
from cxrssl.engine.checkpoint import load_checkpoint, save_checkpoint
from cxrssl.engine.optim import LRSchedule, build_optimizer, param_groups
from cxrssl.evaluation import evaluate_predictions
from cxrssl.evaluation.bootstrap import bootstrap_ci
from cxrssl.models import Classifier, create_encoder
from cxrssl.tasks.cardiomegaly import CardiomegalyTask
from cxrssl.tasks.imbalance import build_imbalance


# ------------------------------------------------------------------ checkpoints
def test_failed_replace_leaves_the_old_checkpoint_byte_identical(tmp_path, monkeypatch):
    """A crash between writing and renaming must not touch the previous checkpoint."""
    target = tmp_path / "last.pt"
    save_checkpoint({"model": {"w": torch.zeros(64)}, "epoch": 1}, target)
    before = target.read_bytes()

    def crash(src, dst):
        raise OSError("simulated crash before rename")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="simulated crash"):
        save_checkpoint({"model": {"w": torch.ones(64)}, "epoch": 2}, target)
    monkeypatch.undo()
    assert target.read_bytes() == before
    assert load_checkpoint(target)["epoch"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]  # no temp file left behind


def test_interrupted_serialisation_leaves_the_old_checkpoint(tmp_path, monkeypatch):
    """A crash half-way through torch.save (partial bytes written) leaves the old file intact."""
    target = tmp_path / "best.pt"
    save_checkpoint({"model": {"w": torch.zeros(8)}, "epoch": 3}, target)
    before = target.read_bytes()
    real_save = torch.save

    def half_save(obj, fh, *args, **kwargs):
        fh.write(b"PK\x03\x04 partial")
        raise KeyboardInterrupt("killed mid-write")

    monkeypatch.setattr(torch, "save", half_save)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint({"model": {"w": torch.ones(8)}, "epoch": 4}, target)
    monkeypatch.setattr(torch, "save", real_save)
    assert target.read_bytes() == before
    assert checkpoint_module.load_checkpoint(target)["epoch"] == 3


# ------------------------------------------------------------------ samplers
LABELS = np.array([1] * 20 + [0] * 180, dtype=float)


@pytest.mark.parametrize("fraction", [0.2, 0.7])
def test_oversampler_hits_the_requested_positive_fraction(fraction):
    sampler = OversampleSampler(LABELS, positive_fraction=fraction, seed=1, num_samples=20_000)
    drawn = LABELS[list(sampler)]
    assert drawn.mean() == pytest.approx(fraction, abs=0.015)
    first = list(sampler)
    sampler.set_epoch(1)
    second = list(sampler)
    assert LABELS[second].mean() == pytest.approx(fraction, abs=0.015)
    assert second != first  # a fresh draw each epoch ...
    sampler.set_epoch(0)
    assert list(sampler) == first  # ... that is a function of (seed, epoch): resumes see the same batches


@pytest.mark.parametrize("ratio", [0.5, 3.0])
def test_undersampler_keeps_all_positives_and_ratio_negatives(ratio):
    sampler = UndersampleSampler(LABELS, ratio=ratio, seed=0)
    indices = list(sampler)
    assert len(indices) == len(sampler) == 20 + int(round(ratio * 20))
    assert len(set(indices)) == len(indices)
    drawn = LABELS[indices]
    assert drawn.sum() == 20 and (drawn == 0).sum() == int(round(ratio * 20))
    sampler.set_epoch(1)
    assert sorted(list(sampler)) != sorted(indices)  # another subset of negatives next epoch


def test_oversample_strategy_passes_its_fraction_to_the_sampler():
    strategy = build_imbalance({"name": "oversample", "positive_fraction": 0.3, "strong_augment": True}, LABELS, 0)
    sampler = strategy.sampler
    sampler.num_samples = 20_000
    assert LABELS[list(sampler)].mean() == pytest.approx(0.3, abs=0.015)
    assert strategy.strong_augment_positives


# ------------------------------------------------------------------ learning rates
def _step_sizes(groups_owner, groups, lr=1.0):
    """Apply one plain-SGD step with every gradient = 1 and return {param id: |Δ|}."""
    opt = build_optimizer({"name": "sgd", "lr": lr, "momentum": 0.0, "weight_decay": 0.0}, groups)
    before = {id(p): p.detach().clone() for g in opt.param_groups for p in g["params"]}
    for g in opt.param_groups:
        for p in g["params"]:
            p.grad = torch.ones_like(p)
    opt.step()
    return opt, {id(p): float((p.detach() - before[id(p)]).abs().max()) for g in opt.param_groups
                 for p in g["params"]}


def test_lr_scale_sets_a_groups_effective_learning_rate():
    fast, slow = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    groups = [*param_groups(fast.named_parameters(), 0.0), *param_groups(slow.named_parameters(), 0.0, lr_scale=0.1)]
    opt, steps = _step_sizes(None, groups, lr=0.5)
    for p in fast.parameters():
        assert steps[id(p)] == pytest.approx(0.5)
    for p in slow.parameters():
        assert steps[id(p)] == pytest.approx(0.05)
    # The schedule scales every group from its own base LR, keeping the ratio.
    schedule = LRSchedule(opt, {"name": "cosine", "warmup_epochs": 0}, steps_per_epoch=4, max_epochs=1)
    schedule.step_batch()
    lrs = [g["lr"] for g in opt.param_groups]
    assert lrs[-1] / lrs[0] == pytest.approx(0.1)


def test_finetune_head_trains_at_full_lr_and_encoder_at_backbone_scale():
    encoder = create_encoder("test_resnet")
    task = CardiomegalyTask(encoder, build_imbalance({"name": "none"}, [0, 1], 0), strategy="full",
                            backbone_lr_scale=0.1)
    _, steps = _step_sizes(None, task.optimizer_groups(0.0), lr=1.0)
    head = [steps[id(p)] for p in task.head.parameters()]
    enc = [steps[id(p)] for p in task.encoder.parameters() if p.requires_grad]
    assert head and enc
    assert all(s == pytest.approx(1.0) for s in head), head
    assert all(s == pytest.approx(0.1) for s in enc), enc


# ------------------------------------------------------------------ Grad-CAM layer
def _output_shape(model, layer, x):
    seen = {}

    def hook(module, inputs, output):  # returns None: the output is left unchanged
        seen["shape"] = tuple(output.shape)

    handle = layer.register_forward_hook(hook)
    with torch.no_grad():
        model(x)
    handle.remove()
    return seen["shape"]


@pytest.mark.parametrize("name", ["test_resnet", "resnet18"])
def test_default_gradcam_layer_outputs_the_deepest_feature_map(name):
    from cxrssl.explain.attributions import resolve_layer

    encoder = create_encoder(name).eval()
    model = Classifier(encoder).eval()
    x = torch.rand(2, 1, 64, 64)
    deepest = tuple(encoder(x).shape)
    assert deepest[1] == encoder.out_channels and deepest[-1] == 64 // encoder.reduction
    assert _output_shape(model, resolve_layer(model, None), x) == deepest


# ------------------------------------------------------------------ patient-level bootstrap
def _clustered_predictions(n_patients=40, per_patient=10, seed=0):
    """Every patient's images share one probability and label: image resampling understates the CI."""
    rng = np.random.default_rng(seed)
    label = (np.arange(n_patients) % 2).astype(float)
    prob = np.clip(0.5 + 0.25 * (label - 0.5) + rng.normal(0, 0.25, n_patients), 0.01, 0.99)
    rows = [{"image_id": f"p{p}_{k}", "patient_id": f"p{p}", "label": label[p], "probability": prob[p],
             "age": 50.0, "sex": "F" if p % 3 else "M", "view": "PA"}
            for p in range(n_patients) for k in range(per_patient)]
    return pd.DataFrame(rows)


def test_evaluate_predictions_bootstraps_patients_by_default(tmp_path):
    pred = _clustered_predictions()
    summary = evaluate_predictions(pred, 0.5, tmp_path, n_boot=400, seed=0)
    assert summary["bootstrap"]["cluster"] == "patient_id"
    by_patient = bootstrap_ci(pred, 0.5, n_boot=400, seed=0, cluster="patient_id")["auroc"]
    by_image = bootstrap_ci(pred, 0.5, n_boot=400, seed=0, cluster=None)["auroc"]
    auroc = summary["metrics"]["auroc"]
    assert (auroc["ci_low"], auroc["ci_high"]) == pytest.approx(by_patient[1:])
    # With 10 identical images per patient the image-level CI is far too narrow.
    assert (by_patient[2] - by_patient[1]) > 2 * (by_image[2] - by_image[1])
    assert "clusters by patient_id" in (tmp_path / "report.md").read_text()


def test_bootstrap_interval_is_the_95_percent_percentile_of_its_resamples():
    """Independent check of the interval level and of tied-score AUROC (ties count ½, as sklearn)."""
    from sklearn.metrics import roc_auc_score

    from cxrssl.evaluation.bootstrap import bootstrap_samples, weighted_metrics

    pred = _clustered_predictions(n_patients=30, per_patient=2, seed=1)
    pred["probability"] = pred["probability"].round(1)  # many tied scores
    y, p = pred["label"].to_numpy(), pred["probability"].to_numpy()
    one = weighted_metrics(y, p, 0.5, np.ones((1, len(y))))["auroc"][0]
    assert one == pytest.approx(roc_auc_score(y, p))
    codes = pd.factorize(pred["patient_id"])[0]
    samples = bootstrap_samples(y, p, codes, 0.5, n_boot=300, seed=4).values["auroc"]
    ci = bootstrap_ci(pred, 0.5, n_boot=300, seed=4)["auroc"]
    assert ci[1:] == pytest.approx(tuple(np.quantile(samples, [0.025, 0.975])))


def test_resume_true_in_a_fresh_run_dir_picks_the_newest_sibling_run(tmp_path):
    """README: `resume=true` continues this run dir's checkpoint, or else the newest run beside it."""
    import os

    from cxrssl.engine.checkpoint import find_resume_checkpoint

    stamps = {"2026-01-01_old": 1_000_000, "2026-01-02_newest": 3_000_000, "2026-01-03_middle": 2_000_000}
    for name, mtime in stamps.items():  # names do not sort by age: only the file times say which is newest
        last = tmp_path / name / "checkpoints" / "last.pt"
        last.parent.mkdir(parents=True)
        last.write_bytes(b"x")
        os.utime(last, (mtime, mtime))
    fresh = tmp_path / "2026-01-04_fresh"
    fresh.mkdir()
    assert find_resume_checkpoint(True, fresh) == tmp_path / "2026-01-02_newest" / "checkpoints" / "last.pt"
