"""Check a command's config before any work: impossible values fail in well under a second.

Without these checks a non-positive learning rate was caught by torch after ~13 s of data
loading (without naming ``optimizer.lr``), and ``data=nih`` without ``data.root`` said
"data.root '.' is not a folder". Every check names the key, the value and what is allowed, and
raises a :class:`~cxrssl.errors.ConfigError` (exit status 2 from the CLI, no traceback).

Only cheap, local checks live here (no data loading, no network); the tracking store is checked
by :func:`cxrssl.tracking.start_tracking`, images by the data layer.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from cxrssl.errors import ConfigError, DeviceUnavailable, InputNotFound

_MISSING = object()
MIN_IMAGE_SIZE = 32
ON_ERROR = ("raise", "skip")
STRATEGIES = ("linear", "partial", "full")

#: What to write for a mandatory (``???``) key, per key.
_MANDATORY_HINTS = {
    "data.root": "the dataset folder, e.g. data.root=/data/nih (see docs/datasets.md)",
    "checkpoint": "a finetune checkpoint, its run dir or an MLflow run id, e.g. checkpoint=outputs/finetune/<run>/checkpoints/best.pt",
    "inputs": "a folder, a quoted glob or a CSV of images, e.g. inputs=/data/xrays",
}


def _value(cfg: DictConfig, key: str) -> Any:
    return OmegaConf.select(cfg, key, default=_MISSING, throw_on_missing=False)


def _number(cfg: DictConfig, key: str) -> float | None:
    value = _value(cfg, key)
    if value is _MISSING or value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{key}={value!r} is not a number") from None
    if math.isnan(number):
        raise ConfigError(f"{key}=nan is not allowed")
    return number


def _check_range(cfg: DictConfig, key: str, low: float | None, high: float | None, *,
                 low_open: bool = False, high_open: bool = False, integer: bool = False,
                 allowed: str | None = None) -> None:
    number = _number(cfg, key)
    if number is None:
        return
    bad = not math.isfinite(number) or (integer and not number.is_integer())
    if low is not None:
        bad |= number <= low if low_open else number < low
    if high is not None:
        bad |= number >= high if high_open else number > high
    if bad:
        if allowed is None:
            lo = "" if low is None else ("(" if low_open else "[") + f"{low:g}"
            hi = "" if high is None else f"{high:g}" + (")" if high_open else "]")
            allowed = f"{'an integer' if integer else 'a number'} in {lo or '(-inf'}, {hi or 'inf)'}"
        raise ConfigError(f"{key}={_value(cfg, key)!r} is not allowed: must be {allowed}")


def check_missing(cfg: DictConfig) -> None:
    """Mandatory keys (``???`` in the configs) the user has not set, all named at once."""
    missing = sorted(k for k in OmegaConf.missing_keys(cfg) if not k.startswith("hydra."))
    if missing:
        hints = "; ".join(f"{k}: {_MANDATORY_HINTS.get(k, 'required')}" for k in missing)
        source = _value(cfg, "data.source")
        where = f" for data={source}" if "data.root" in missing and source not in (_MISSING, None) else ""
        raise ConfigError(f"missing mandatory value(s){where}: {', '.join(missing)} ({hints})")


def check_device(device: Any) -> None:
    """``trainer.device``: auto | cpu | cuda | cuda:N, and CUDA only where a GPU is present."""
    text = str(device)
    if text in ("auto", "cpu"):
        return
    if text != "cuda" and not (text.startswith("cuda:") and text[5:].isdigit()):
        raise ConfigError(f"trainer.device={text!r} is not allowed: must be auto, cpu, cuda or cuda:N")
    import torch

    if not torch.cuda.is_available():
        raise DeviceUnavailable(f"trainer.device={text} but CUDA is not available on this machine; "
                                "use trainer.device=auto or trainer.device=cpu")
    index = int(text[5:]) if ":" in text else 0
    if index >= torch.cuda.device_count():
        raise DeviceUnavailable(f"trainer.device={text}: this machine has {torch.cuda.device_count()} GPU(s) "
                                f"(cuda:0 .. cuda:{torch.cuda.device_count() - 1})")


def check_data(cfg: DictConfig, prefix: str = "data") -> None:
    """Sizes, fractions and the data root of ``cfg.<prefix>``."""
    if _value(cfg, prefix) in (_MISSING, None):
        return
    _check_range(cfg, f"{prefix}.image_size", MIN_IMAGE_SIZE, None, integer=True,
                 allowed=f"an integer >= {MIN_IMAGE_SIZE} (pixels)")
    _check_range(cfg, f"{prefix}.batch_size", 1, None, integer=True, allowed="an integer >= 1")
    _check_range(cfg, f"{prefix}.num_workers", 0, None, integer=True, allowed="an integer >= 0")
    _check_range(cfg, f"{prefix}.clahe_clip", 1, None, allowed="a number >= 1 (CLAHE contrast limit)")
    _check_range(cfg, f"{prefix}.label_fraction", 0, 1, low_open=True,
                 allowed="a fraction in (0, 1] of the training patients")
    for key in ("val_fraction", "test_fraction"):
        _check_range(cfg, f"{prefix}.{key}", 0, 1, high_open=True, allowed="a fraction in [0, 1)")
    fractions = [_number(cfg, f"{prefix}.{k}") or 0.0 for k in ("val_fraction", "test_fraction")]
    if sum(fractions) >= 1:
        raise ConfigError(f"{prefix}.val_fraction + {prefix}.test_fraction = {sum(fractions):g} leaves no "
                          "training patients: their sum must be < 1")
    on_error = _value(cfg, f"{prefix}.on_error")
    if on_error not in (_MISSING, None) and str(on_error) not in ON_ERROR:
        raise ConfigError(f"{prefix}.on_error={on_error!r} is not allowed: must be one of {ON_ERROR}")
    source, root = _value(cfg, f"{prefix}.source"), _value(cfg, f"{prefix}.root")
    if source not in ("synthetic", _MISSING, None) and root not in (_MISSING, None):
        path = Path(str(root)).expanduser()
        if not path.is_dir():
            raise InputNotFound(f"{prefix}.root={root}: {'not a folder' if path.exists() else 'no such folder'} "
                                f"(data={source} needs the folder its files were unpacked into)")


def check_config(cfg: DictConfig) -> None:
    """Every cheap check for ``cfg.command``'s config; raises a ConfigError naming the key."""
    check_missing(cfg)
    check_data(cfg)
    _check_range(cfg, "optimizer.lr", 0, None, low_open=True, allowed="a number > 0 (e.g. 1e-3)")
    _check_range(cfg, "optimizer.weight_decay", 0, None, allowed="a number >= 0")
    _check_range(cfg, "trainer.max_epochs", 1, None, integer=True, allowed="an integer >= 1")
    _check_range(cfg, "trainer.accumulate_grad_batches", 1, None, integer=True, allowed="an integer >= 1")
    _check_range(cfg, "trainer.limit_batches", 1, None, integer=True, allowed="null or an integer >= 1")
    _check_range(cfg, "trainer.grad_clip_norm", 0, None, low_open=True, allowed="null or a number > 0")
    _check_range(cfg, "trainer.early_stopping.patience", 1, None, integer=True, allowed="an integer >= 1")
    _check_range(cfg, "finetune.trainable_blocks", 1, None, integer=True, allowed="an integer >= 1")
    _check_range(cfg, "finetune.backbone_lr_scale", 0, None, allowed="a number >= 0")
    _check_range(cfg, "finetune.recon_weight", 0, None, allowed="a number >= 0")
    _check_range(cfg, "finetune.dropout", 0, 1, high_open=True, allowed="a probability in [0, 1)")
    _check_range(cfg, "evaluate.n_boot", 0, None, integer=True, allowed="an integer >= 0")
    _check_range(cfg, "explain.per_group", 1, None, integer=True, allowed="an integer >= 1")
    _check_range(cfg, "explain.batch_size", 1, None, integer=True, allowed="an integer >= 1")
    _check_range(cfg, "predict.batch_size", 1, None, integer=True, allowed="an integer >= 1")
    _check_range(cfg, "trainer.profile_steps", 0, None, integer=True, allowed="0 (off) or an integer >= 1")
    _check_range(cfg, "trainer.profile_skip_steps", 0, None, integer=True, allowed="an integer >= 0")
    for key in ("trainer.cudnn_benchmark", "trainer.deterministic"):
        value = _value(cfg, key)
        if value not in (_MISSING, None) and not isinstance(value, bool):
            raise ConfigError(f"{key}={value!r} is not allowed: must be true or false")
    # the suggestions skip the first tenth of the curve and fit a window of an eighth: 8 points at least
    _check_range(cfg, "lr_finder.num_steps", 8, None, integer=True, allowed="an integer >= 8")
    _check_range(cfg, "lr_finder.start_lr", 0, None, low_open=True, allowed="a number > 0")
    _check_range(cfg, "lr_finder.end_lr", 0, None, low_open=True, allowed="a number > lr_finder.start_lr")
    _check_range(cfg, "lr_finder.smoothing", 0, 1, low_open=True, allowed="a number in (0, 1]")
    _check_range(cfg, "lr_finder.min_drop", 0, 1, high_open=True, allowed="a number in [0, 1)")
    start, end = _number(cfg, "lr_finder.start_lr"), _number(cfg, "lr_finder.end_lr")
    if start is not None and end is not None and not start < end:
        raise ConfigError(f"lr_finder.end_lr={end:g} is not allowed: must be above lr_finder.start_lr={start:g}")
    rule = _value(cfg, "evaluate.threshold")
    if rule not in (_MISSING, None, "youden", "f1"):  # the common rules need no parsing (nor sklearn)
        from cxrssl.evaluation.thresholds import check_rule

        try:
            check_rule(rule)
        except ConfigError as error:
            raise ConfigError(f"evaluate.threshold={rule!r}: {error}") from None
    for key in ("explain.threshold", "predict.threshold"):
        _check_range(cfg, key, 0, 1, allowed="null (the checkpoint's threshold) or a probability in [0, 1]")
    strategy = _value(cfg, "finetune.strategy")
    if strategy not in (_MISSING, None) and str(strategy) not in STRATEGIES:
        raise ConfigError(f"finetune.strategy={strategy!r} is not allowed: must be one of {STRATEGIES}")
    device = _value(cfg, "trainer.device")
    if device not in (_MISSING, None):
        check_device(device)
    check_gpu_augment(cfg)


def check_gpu_augment(cfg: DictConfig) -> None:
    """``data.gpu_augment``: a boolean, and only for single-view training. The joint-embedding pretexts
    (``pretext.views``: simclr, moco, byol, dino) build their views in the loader workers."""
    value = _value(cfg, "data.gpu_augment")
    if value in (_MISSING, None, False):
        return
    if value is not True:
        raise ConfigError(f"data.gpu_augment={value!r} is not allowed: must be true or false")
    views = _value(cfg, "pretext.views")
    if views not in (_MISSING, None):
        raise ConfigError(f"data.gpu_augment=true is not supported with pretext={_value(cfg, 'pretext.name')}: its "
                          "augmented views (pretext.views) are built in the DataLoader workers, on the CPU; set "
                          "data.gpu_augment=false (or use a single-view pretext: age, sex, recon, mae)")
