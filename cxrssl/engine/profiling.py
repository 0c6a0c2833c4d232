"""``trainer.profile_steps=N``: is the GPU busy, and when it is not, what is the host doing?

torch.profiler records N training batches after ``trainer.profile_skip_steps``
warm-up batches (cuDNN autotuning, worker start-up, allocator growth) and writes the Chrome trace
to ``<run>/profile/trace.json`` (open it in chrome://tracing or Perfetto). `summarise_trace`
then reduces it to the numbers that answer "is this run input-bound?":

* ``gpu_busy_frac``: the union of kernel/memcpy/memset intervals over the profiled window (from the
  first profiled step's start on the host to the last device activity). 1.0 = the card never
  waited; what is missing is time in which it had nothing queued.
* ``gaps``: device idle time in gaps of at least ``min_gap_ms``, attributed to what the host was
  doing meanwhile — the DataLoader (``enumerate(DataLoader)…``: input-bound), a synchronising call
  (``cudaStreamSynchronize``, ``aten::item``…: a host sync in the step), or the top-level op the
  host was running (host-bound: Python/launch overhead).
* ``host_dataloader_frac``: the share of the window the host spent blocked in the DataLoader (on
  the CPU this is the whole story, there being no device timeline).

The profiler slows the host down (it records every op), so `gpu_busy_frac` under profiling is a
lower bound for an unprofiled run; gaps attributed to the DataLoader or to syncs are real.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

DEVICE_CATEGORIES = ("kernel", "gpu_memcpy", "gpu_memset")
SYNC_MARKERS = ("synchronize", "_local_scalar_dense", "aten::item", "cudamemcpy ")  # blocking calls


def _union(intervals: list[tuple[float, float]]) -> list[tuple[float, float]]:
    merged: list[list[float]] = []
    for start, end in sorted(intervals):
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    return [(a, b) for a, b in merged]


def _label(name: str) -> str:
    low = name.lower()
    if "dataloader" in low:
        return "waiting for the DataLoader"
    if any(marker in low + " " for marker in SYNC_MARKERS):
        return f"host sync ({name})"
    return name


def summarise_trace(events: list[dict[str, Any]], min_gap_ms: float = 0.05) -> dict[str, Any]:
    """Chrome-trace events (``ph == "X"``, times in µs) → the summary described in the module doc."""
    complete = [e for e in events if e.get("ph") == "X" and "ts" in e and "dur" in e]
    steps = [e for e in complete if str(e.get("name", "")).startswith("ProfilerStep#")]
    device = [(float(e["ts"]), float(e["ts"]) + float(e["dur"])) for e in complete
              if str(e.get("cat", "")).lower() in DEVICE_CATEGORIES]
    host = [e for e in complete if str(e.get("cat", "")).lower() in ("user_annotation", "cuda_runtime", "cpu_op")
            and not str(e.get("name", "")).startswith("ProfilerStep#")]
    if not steps:
        return {"steps": 0}
    start = min(float(e["ts"]) for e in steps)
    host_end = max(float(e["ts"]) + float(e["dur"]) for e in steps)
    end = max([host_end] + [b for _, b in device])
    window = max(end - start, 1e-9)
    loader = _union([(max(float(e["ts"]), start), min(float(e["ts"]) + float(e["dur"]), host_end)) for e in host
                     if "dataloader" in str(e.get("name", "")).lower()])
    out: dict[str, Any] = {"steps": len(steps), "window_ms": window / 1e3,
                           "host_dataloader_frac": sum(b - a for a, b in loader if b > a) / window}
    if not device:
        return {**out, "gpu_busy_frac": None, "gaps": []}
    busy = _union([(max(a, start), min(b, end)) for a, b in device if b > start])
    out["gpu_busy_frac"] = sum(b - a for a, b in busy) / window
    idle = [(a, b) for a, b in zip([start] + [b for _, b in busy], [a for a, _ in busy] + [end])
            if b - a >= min_gap_ms * 1e3]
    by_cause: dict[str, list[float]] = {}
    for a, b in idle:
        overlaps = [(min(b, float(e["ts"]) + float(e["dur"])) - max(a, float(e["ts"])), e) for e in host]
        overlaps = [(o, e) for o, e in overlaps if o > 0]
        # a named wait (DataLoader, sync) explains a gap before the op that happens to enclose it
        named = [(o, e) for o, e in overlaps if _label(str(e["name"])) != str(e["name"])]
        pick = max(named or overlaps, key=lambda oe: oe[0], default=None)
        cause = _label(str(pick[1]["name"])) if pick else "host idle (nothing recorded)"
        by_cause.setdefault(cause, []).append((b - a) / 1e3)
    out["gaps"] = sorted(({"cause": c, "count": len(v), "total_ms": sum(v), "share_of_window": sum(v) * 1e3 / window}
                          for c, v in by_cause.items()), key=lambda g: -g["total_ms"])
    return out


def format_summary(summary: dict[str, Any], top: int = 4) -> str:
    if not summary.get("steps"):
        return "profile: no step was recorded"
    busy = summary.get("gpu_busy_frac")
    text = (f"profile: {summary['steps']} steps in {summary['window_ms']:.0f} ms | "
            f"host blocked in the DataLoader {summary['host_dataloader_frac']:.1%}")
    if busy is not None:
        text += f" | GPU busy {busy:.1%}"
        gaps = summary["gaps"][:top]
        if gaps:
            text += " | idle: " + "; ".join(f"{g['cause']} {g['share_of_window']:.1%} ({g['count']}×)" for g in gaps)
    return text


class StepProfiler:
    """Profiles training batches ``[skip, skip + steps)`` of this fit (counted across epochs); a
    no-op when ``steps`` is 0 or on a non-main rank. ``step()`` is called once per training batch;
    the trace and summary are written when the window closes (or at ``stop()``, if the run ends
    inside it)."""

    def __init__(self, steps: int, skip: int, out_dir: Path, device: torch.device, enabled: bool = True):
        self.steps, self.skip, self.out_dir = int(steps or 0), max(int(skip or 0), 0), Path(out_dir)
        self.summary: dict[str, Any] | None = None
        self._prof = None
        if self.steps > 0 and enabled:
            from torch.profiler import ProfilerActivity, profile, schedule

            activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
            self._prof = profile(activities=activities, on_trace_ready=self._ready,
                                 schedule=schedule(wait=max(self.skip - 1, 0), warmup=1 if self.skip else 0,
                                                   active=self.steps, repeat=1))
            self._prof.start()

    def step(self) -> None:
        if self._prof is not None:
            self._prof.step()

    def stop(self) -> None:
        if self._prof is not None:
            prof, self._prof = self._prof, None
            prof.stop()

    def _ready(self, prof) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        trace = self.out_dir / "trace.json"
        prof.export_chrome_trace(str(trace))
        events = json.loads(trace.read_text()).get("traceEvents", [])
        self.summary = summarise_trace(events)
        (self.out_dir / "summary.json").write_text(json.dumps(self.summary, indent=2) + "\n")
        print(format_summary(self.summary), flush=True)
