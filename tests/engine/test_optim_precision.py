import pytest
import torch

from cxrssl.engine.optim import LRSchedule, build_optimizer, param_groups
from cxrssl.engine.precision import resolve_precision


def _opt(name="sgd", lr=0.1):
    model = torch.nn.Linear(4, 1)
    return build_optimizer({"name": name, "lr": lr, "momentum": 0.9}, param_groups(model.named_parameters(), 0.01))


def test_bias_not_decayed():
    groups = param_groups(torch.nn.Linear(4, 1).named_parameters(), 0.05)
    assert [g["weight_decay"] for g in groups] == [0.05, 0.0]


def test_cosine_warmup_then_decay():
    opt = _opt()
    sched = LRSchedule(opt, {"name": "cosine", "warmup_epochs": 1, "min_lr_ratio": 0.0}, 10, 5)
    lrs = []
    for _ in range(50):
        lrs.append(opt.param_groups[0]["lr"])
        sched.step_batch()
    assert lrs[0] == pytest.approx(0.01) and max(lrs) == pytest.approx(0.1)
    assert lrs.index(max(lrs)) == 9 and lrs[-1] < 0.01


def test_onecycle_cycles_lr_and_momentum():
    opt = _opt()
    sched = LRSchedule(opt, {"name": "onecycle", "pct_start": 0.3}, 10, 2)
    seen = []
    for _ in range(20):
        seen.append(sched.lrs())
        sched.step_batch()
    peak = max(range(20), key=lambda i: seen[i]["lr"])
    assert 4 <= peak <= 7 and seen[peak]["momentum"] < seen[0]["momentum"]


def test_plateau_reduces_after_patience():
    opt = _opt()
    sched = LRSchedule(opt, {"name": "plateau", "patience": 1, "factor": 0.5}, 2, 10, mode="max")
    for metric in (0.5, 0.5, 0.5):
        sched.step_batch()
        sched.step_epoch(metric)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.05)


def test_unknown_names_fail_clearly():
    with pytest.raises(ValueError, match="adamw, adam or sgd"):
        _opt("lion")
    with pytest.raises(ValueError, match="auto, bf16, fp16 or off"):
        resolve_precision("cpu", "fp8")


def test_amp_auto_is_off_on_cpu():
    p = resolve_precision("cpu", "auto")
    assert p.dtype is None and not p.use_scaler and p.name == "fp32"
    assert resolve_precision("cpu", "bf16").dtype == torch.bfloat16
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA is not available"):
            resolve_precision("cuda", "auto")
