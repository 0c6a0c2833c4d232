"""The learning-rate range test (Smith 2017; the original study tuned its LR this way).

Train for a bounded number of steps while the LR grows exponentially from `start_lr` to `end_lr`;
record an exponentially smoothed (bias-corrected) loss; stop once it diverges. Two suggestions:

* ``steepest``: the LR where the smoothed loss falls fastest against log(LR);
* ``min_div_10``: the LR of the smoothed minimum divided by 10 (the fastai "min/10" rule).

Neither is offered when the curve has no descent to speak of: when the smoothed loss falls by less
than ``lr_finder.min_drop`` (default 5 %) of its level from the highest point before its minimum to
the minimum, the "steepest" point is noise. On the default data (age pretext, resnet18, 64 px) the
curve is flat from 1e-7 to ~1e-3 and then rises: steepest said 1.25e-6, a thousand times below the
LR that trains. The test then reports no suggestion, the LR where the loss starts to rise (an upper
bound), and `lr_find=apply` keeps the configured `optimizer.lr`.

The test must not leave a trace on the real run, so everything it touches is snapshotted with
deep copies first (``state_dict()`` returns live references to the very tensors the optimizer
updates) and restored afterwards: model weights and buffers (BatchNorm statistics), optimizer state
and LRs, global RNGs and the data loader's shuffling generators (data order).
"""
from __future__ import annotations

import copy
import csv
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cxrssl.engine.seed import rng_state, set_rng_state

SUGGESTIONS = ("steepest", "min_div_10")
RISE = 0.2  # the loss has clearly turned up once its running median is 20 % above its minimum


@dataclass
class LRFindResult:
    lrs: list[float] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)       # raw per-step losses
    smoothed: list[float] = field(default_factory=list)     # bias-corrected EMA of the loss
    diverged: bool = False
    steepest: float | None = None
    min_div_10: float | None = None
    drop: float | None = None      # relative fall of the smoothed loss before its minimum
    rise_lr: float | None = None   # first LR from which the loss stays clearly (RISE) above its minimum
    min_drop: float = 0.05

    @property
    def flat(self) -> bool:
        """No descent worth the name: the suggestions would be noise."""
        return self.drop is not None and self.drop < self.min_drop

    def suggestion(self, rule: str = "steepest") -> float | None:
        """The chosen rule's LR, or None for a flat curve (see `flat_message`)."""
        if rule not in SUGGESTIONS:
            raise ValueError(f"lr_finder.suggestion={rule!r}: expected one of {', '.join(SUGGESTIONS)}")
        value = getattr(self, rule)
        if value is None:
            from cxrssl.errors import ConfigError

            where = (f": the loss was not finite at lr={self.lrs[-1] if self.lrs else 'lr_finder.start_lr'}"
                     if self.diverged else "")
            raise ConfigError(f"the LR range test recorded only {len(self.lrs)} usable steps{where}; too few to "
                              "suggest an LR: lower lr_finder.start_lr or raise lr_finder.num_steps")
        return None if self.flat else value

    def flat_message(self) -> str:
        rise = f"; the loss starts to rise at ~{self.rise_lr:.1e}, so stay below that" if self.rise_lr else ""
        return (f"no LR suggested: the smoothed loss fell only {self.drop:.1%} before its minimum (< lr_finder.min_drop "
                f"{self.min_drop:.0%}), so the curve is flat and its steepest point is noise{rise}. Keep optimizer.lr, "
                "or rerun with more lr_finder.num_steps or a larger data.batch_size")

    def summary(self) -> dict[str, Any]:
        return {"steepest": self.steepest, "min_div_10": self.min_div_10, "steps": len(self.lrs),
                "diverged": self.diverged, "lr_range": [self.lrs[0], self.lrs[-1]] if self.lrs else None,
                "drop": self.drop, "flat": self.flat, "rise_lr": self.rise_lr}


def zero_lag_smooth(losses: list[float], smoothing: float) -> list[float]:
    """The bias-corrected EMA run forwards and then backwards over the raw losses. The causal EMA
    (used to detect divergence as it happens) lags by ~1/smoothing steps, which on an exponential
    LR axis shifts the curve's minimum and slope to larger LRs; the two passes cancel that lag."""
    def ema(values):
        out, avg = [], 0.0
        for i, v in enumerate(values):
            avg = (1 - smoothing) * avg + smoothing * v
            out.append(avg / (1 - (1 - smoothing) ** (i + 1)))
        return out
    return ema(ema(list(losses))[::-1])[::-1]


def suggest(lrs: list[float], smoothed: list[float]) -> tuple[float | None, float | None]:
    """(steepest, min_div_10) from a recorded curve.

    The first tenth (EMA warm-up) and the last 5 % (the divergence spike) are skipped. The steepest
    point is the centre of the window of ~1/8 of the curve whose least-squares slope of smoothed loss
    against log10(LR) is most negative, searched before the minimum (past it the curve only rises);
    a window, not a point-wise gradient, because per-batch losses are noisy.
    """
    n = len(lrs)
    if n < 8:
        return None, None
    loss = np.asarray(smoothed, dtype=float)
    log_lr = np.log10(np.asarray(lrs, dtype=float))
    lo, hi = max(n // 10, 1), n - max(n // 20, 1)
    best = lo + int(np.argmin(loss[lo:hi]))
    width = max(n // 8, 3)
    starts = range(lo, max(best - width + 2, lo + 1))
    slopes = [np.polyfit(log_lr[i:i + width], loss[i:i + width], 1)[0] for i in starts]
    first = starts[int(np.argmin(slopes))]
    steepest = float(10 ** log_lr[first:first + width].mean())
    return steepest, float(lrs[best]) / 10.0


def descent(lrs: list[float], losses: list[float], smoothed: list[float]) -> tuple[float | None, float | None]:
    """(drop, rise_lr). `drop`: the fall of the smoothed loss from its highest point before its
    minimum to the minimum, relative to that highest point (the window `suggest` uses: first tenth
    and last 5 % out). `rise_lr`: the first LR from which the running median of the raw losses (9
    steps) stays at least RISE above its own minimum — where the loss has clearly turned up; a median,
    not the smoothed curve, because the EMA (forward and backward) smears the late rise over ~20
    steps, more than a decade of LR at 100 steps."""
    n = len(lrs)
    if n < 8:
        return None, None
    loss = np.asarray(smoothed, dtype=float)
    lo, hi = max(n // 10, 1), n - max(n // 20, 1)
    best = lo + int(np.argmin(loss[lo:hi]))
    peak = float(loss[lo:best + 1].max())
    drop = (peak - float(loss[best])) / abs(peak) if peak != 0 else 0.0
    raw = np.asarray(losses, dtype=float)
    median = np.array([np.median(raw[max(i - 4, 0):i + 5]) for i in range(n)])
    low = lo + int(np.argmin(median[lo:hi]))
    high = median > median[low] + RISE * abs(median[low])
    sustained = [i for i in range(low, n) if high[i:].all()]
    return drop, (float(lrs[sustained[0]]) if sustained else None)


def _to_device(value: Any, device: torch.device) -> Any:
    if torch.is_tensor(value):
        return value.to(device, non_blocking=True)
    if isinstance(value, Mapping):
        return {k: _to_device(v, device) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_to_device(v, device) for v in value)
    return value


def _generators(loader) -> list[torch.Generator]:
    """Every torch.Generator that decides the loader's order (its own, its sampler's, a batch sampler's)."""
    found: list[torch.Generator] = []
    for owner in (loader, getattr(loader, "sampler", None), getattr(getattr(loader, "batch_sampler", None), "sampler", None)):
        gen = getattr(owner, "generator", None)
        if isinstance(gen, torch.Generator) and all(gen is not g for g in found):
            found.append(gen)
    return found


def _batches(loader) -> Iterator[dict]:
    while True:  # a small training set may hold fewer batches than the test's steps
        yielded = False
        for batch in loader:
            yielded = True
            yield batch
        if not yielded:
            raise ValueError("the LR range test got an empty training loader")


class _Snapshot:
    """Deep copies of everything the range test changes; `restore()` puts them back."""

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, loader):
        self.model, self.optimizer, self.loader = model, optimizer, loader
        self.model_state = copy.deepcopy(model.state_dict())
        self.optimizer_state = copy.deepcopy(optimizer.state_dict())
        self.rng = copy.deepcopy(rng_state())
        self.generators = [(g, g.get_state().clone()) for g in _generators(loader)]
        self.training = model.training

    def restore(self) -> None:
        self.model.load_state_dict(self.model_state)
        self.optimizer.load_state_dict(self.optimizer_state)
        # load_state_dict keeps the current 'lr' of each group only if it is in the saved groups:
        # it is, but set it explicitly so a later LRSchedule reads the configured LR.
        for group, saved in zip(self.optimizer.param_groups, self.optimizer_state["param_groups"]):
            group["lr"] = saved["lr"]
        set_rng_state(self.rng)
        for gen, state in self.generators:
            gen.set_state(state)
        self.model.train(self.training)


def _step_loss(task, batch: dict, precision, batch_transform=None, step: int = 0) -> torch.Tensor:
    batch = _to_device(batch, precision.device)
    if batch_transform is not None:  # as the Trainer does (data.gpu_augment); epoch -1: the finder's own draws
        batch = batch_transform(batch, -1, step)
    with precision.autocast():
        if hasattr(task, "training_step"):
            return task.training_step(batch)["loss"]
        outputs = task(batch["image"])
    return task.loss(outputs, batch)[0]


def lr_range_test(task: torch.nn.Module, optimizer: torch.optim.Optimizer, loader, precision, *,
                  start_lr: float = 1e-7, end_lr: float = 1.0, num_steps: int = 100, smoothing: float = 0.05,
                  diverge_factor: float = 4.0, grad_clip_norm: float | None = None,
                  batch_transform=None, min_drop: float = 0.05) -> LRFindResult:
    """Run the test and restore `task`, `optimizer` and the loader's order afterwards.

    Each parameter group keeps its ratio to the base LR (`lr_scale`, e.g. a fine-tuned backbone's
    lower LR), so the suggestion is the base `optimizer.lr`. `smoothing` is the EMA weight of the
    newest loss; the test stops when the smoothed loss exceeds `diverge_factor` × its minimum
    or a loss is not finite.
    """
    if not 0 < start_lr < end_lr:
        raise ValueError(f"lr_finder: need 0 < start_lr < end_lr, got start_lr={start_lr}, end_lr={end_lr}")
    if num_steps < 2:
        raise ValueError(f"lr_finder.num_steps={num_steps}: need at least 2")
    if not 0 < smoothing <= 1:
        raise ValueError(f"lr_finder.smoothing={smoothing}: must be in (0, 1]")
    snapshot = _Snapshot(task, optimizer, loader)
    scales = [float(g.get("lr_scale", 1.0)) for g in optimizer.param_groups]
    scaler = precision.grad_scaler()
    params = [p for g in optimizer.param_groups for p in g["params"]]
    ratio = (end_lr / start_lr) ** (1.0 / (num_steps - 1))
    result, avg, best = LRFindResult(min_drop=float(min_drop)), 0.0, math.inf
    try:
        task.train()
        optimizer.zero_grad(set_to_none=True)
        for step, batch in zip(range(num_steps), _batches(loader)):
            lr = start_lr * ratio ** step
            for group, scale in zip(optimizer.param_groups, scales):
                group["lr"] = lr * scale
            loss = _step_loss(task, batch, precision, batch_transform, step)
            value = float(loss.detach())  # one sync per step is fine here: the test is bounded and short
            if not math.isfinite(value):
                result.diverged = True
                break
            scaler.scale(loss).backward()
            if grad_clip_norm:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(params, float(grad_clip_norm))
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            if hasattr(task, "on_after_optimizer_step"):  # EMA/momentum teachers follow, as in training
                task.on_after_optimizer_step(step + 1, num_steps)
            avg = (1 - smoothing) * avg + smoothing * value
            smooth = avg / (1 - (1 - smoothing) ** (step + 1))
            result.lrs.append(lr)
            result.losses.append(value)
            result.smoothed.append(smooth)
            best = min(best, smooth)
            if step > 0 and smooth > diverge_factor * best:
                result.diverged = True
                break
    finally:
        optimizer.zero_grad(set_to_none=True)
        snapshot.restore()
    curve = zero_lag_smooth(result.losses, smoothing)
    result.steepest, result.min_div_10 = suggest(result.lrs, curve)
    result.drop, result.rise_lr = descent(result.lrs, result.losses, curve)
    return result


def save_lr_find(result: LRFindResult, out_dir: Path, chosen: str | None = None) -> dict[str, Path]:
    """lr_find.csv (the curve) and lr_find.png (smoothed loss vs log LR, suggestions marked)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    csv_path, png_path = out_dir / "lr_find.csv", out_dir / "lr_find.png"
    with open(csv_path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["step", "lr", "loss", "smoothed_loss"])
        writer.writerows([i, lr, loss, sm] for i, (lr, loss, sm) in enumerate(zip(result.lrs, result.losses, result.smoothed)))
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(result.lrs, result.losses, color="0.75", lw=0.8, label="loss")
    ax.plot(result.lrs, result.smoothed, color="C0", lw=1.8, label="smoothed loss")
    for rule, color in (("steepest", "C3"), ("min_div_10", "C2")):
        value = getattr(result, rule)
        if value is not None:
            style = "-" if rule == chosen and not result.flat else "--"
            ax.axvline(value, color=color, ls=style,
                       label=f"{rule}: {value:.2e}{' (used)' if rule == chosen and not result.flat else ''}")
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("training loss")
    ax.set_title("LR range test" + (" (stopped: diverged)" if result.diverged else "")
                 + (f" — flat: no suggestion (drop {result.drop:.1%})" if result.flat else ""), fontsize=10)
    if result.rise_lr:
        ax.axvline(result.rise_lr, color="0.3", ls=":", label=f"loss rises: {result.rise_lr:.1e}")
    if result.smoothed:
        lo, hi = min(result.smoothed), max(result.smoothed[: max(len(result.smoothed) // 2, 1)])
        ax.set_ylim(lo - 0.1 * (hi - lo + 1e-12), hi + 0.5 * (hi - lo + 1e-12))
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(png_path, dpi=120)
    plt.close(fig)
    return {"csv": csv_path, "png": png_path}


def lr_find_mode(value: Any) -> str | None:
    """`lr_find` key: false/null → None, true → "report" (run, report, stop), "apply" → "apply"."""
    text = str(value).strip().lower()
    if text in ("false", "none", "null", "0", ""):
        return None
    if text in ("true", "1", "report"):
        return "report"
    if text == "apply":
        return "apply"
    raise ValueError(f"lr_find={value!r}: expected false, true (run the LR range test, report, stop) "
                     "or apply (run it, then train at the suggested LR)")


def find_lr_for_run(settings: Mapping, task, optimizer, loader, precision, tracker, run_dir: Path,
                    grad_clip_norm: float | None = None, batch_transform=None) -> dict[str, Any]:
    """Run the range test for a command: curve + plot under <run_dir>/lr_find/, logged to MLflow,
    and the chosen suggestion (`lr_finder.suggestion`) returned as `suggested_lr`."""
    rule = str(settings.get("suggestion", "steepest"))
    if rule not in SUGGESTIONS:
        raise ValueError(f"lr_finder.suggestion={rule!r}: expected one of {', '.join(SUGGESTIONS)}")
    task.to(precision.device)
    result = lr_range_test(task, optimizer, loader, precision, start_lr=float(settings.get("start_lr", 1e-7)),
                           end_lr=float(settings.get("end_lr", 1.0)), num_steps=int(settings.get("num_steps", 100)),
                           smoothing=float(settings.get("smoothing", 0.05)),
                           diverge_factor=float(settings.get("diverge_factor", 4.0)), grad_clip_norm=grad_clip_norm,
                           batch_transform=batch_transform, min_drop=float(settings.get("min_drop", 0.05)))
    suggested = result.suggestion(rule)
    paths = save_lr_find(result, Path(run_dir) / "lr_find", chosen=rule)
    for i, (lr, smooth) in enumerate(zip(result.lrs, result.smoothed)):
        tracker.log_metrics({"lr_find/lr": lr, "lr_find/smoothed_loss": smooth}, step=i)
    tracker.log_metrics({**({"lr_find/suggested_lr": suggested} if suggested is not None else {}),
                         "lr_find/steepest": result.steepest, "lr_find/min_div_10": result.min_div_10,
                         "lr_find/drop": result.drop}, step=0)
    tracker.set_tags({"lr_find.suggestion": rule, "lr_find.flat": str(result.flat).lower()})
    for path in paths.values():
        tracker.log_artifact(path, "lr_find")
    print(f"LR range test: {len(result.lrs)} steps {result.lrs[0]:.1e} → {result.lrs[-1]:.1e}"
          f"{' (stopped on divergence)' if result.diverged else ''} | steepest {result.steepest:.2e} | "
          f"min/10 {result.min_div_10:.2e} | loss drop {result.drop:.1%} | "
          + (result.flat_message() if suggested is None else f"suggested ({rule}) optimizer.lr={suggested:.2e}")
          + f" | plot {paths['png']}", flush=True)
    return {**result.summary(), "suggestion": rule, "suggested_lr": suggested,
            "message": result.flat_message() if suggested is None else None,
            "plot": str(paths["png"]), "curve": str(paths["csv"])}


def apply_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set the base LR, keeping each group's `lr_scale` (before the LR schedule is built)."""
    for group in optimizer.param_groups:
        group["lr"] = lr * float(group.get("lr_scale", 1.0))
