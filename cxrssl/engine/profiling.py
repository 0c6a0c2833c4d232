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

import bisect
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


def _top_level(events: list[dict[str, Any]]) -> list[tuple[float, float, str]]:
    """The outermost ops of one thread as disjoint (start, end, name), sorted."""
    out: list[tuple[float, float, str]] = []
    for e in sorted(events, key=lambda e: (float(e["ts"]), -float(e["dur"]))):
        a, b = float(e["ts"]), float(e["ts"]) + float(e["dur"])
        if not out or a >= out[-1][1]:
            out.append((a, b, str(e["name"])))
    return out


def _overlapping(spans: list[tuple[float, float, str]], starts: list[float], a: float, b: float, longest: float):
    """(overlap, name) of the spans (sorted by start, none longer than `longest`) that overlap [a, b]."""
    i = bisect.bisect_left(starts, a - longest)
    while i < len(spans) and spans[i][0] < b:
        overlap = min(b, spans[i][1]) - max(a, spans[i][0])
        if overlap > 0:
            yield overlap, spans[i][2]
        i += 1


def summarise_trace(events: list[dict[str, Any]], min_gap_ms: float = 0.05, top: int = 8) -> dict[str, Any]:
    """Chrome-trace events (``ph == "X"``, times in µs) → the summary described in the module doc."""
    complete = [e for e in events if e.get("ph") == "X" and "ts" in e and "dur" in e]
    steps = [e for e in complete if str(e.get("name", "")).startswith("ProfilerStep#")
             and str(e.get("cat", "")).lower() == "user_annotation"]  # not the device-side copies
    if not steps:
        return {"steps": 0}
    main_tid = steps[0].get("tid")
    device_events = [e for e in complete if str(e.get("cat", "")).lower() in DEVICE_CATEGORIES]
    device = [(float(e["ts"]), float(e["ts"]) + float(e["dur"])) for e in device_events]
    host = [e for e in complete if str(e.get("cat", "")).lower() in ("user_annotation", "cuda_runtime", "cpu_op")
            and not str(e.get("name", "")).startswith("ProfilerStep#")]
    start = min(float(e["ts"]) for e in steps)
    host_end = max(float(e["ts"]) + float(e["dur"]) for e in steps)
    end = max([host_end] + [b for _, b in device])
    window = max(end - start, 1e-9)
    labelled = ((e, _label(str(e["name"]))) for e in host)
    named = sorted((float(e["ts"]), float(e["ts"]) + float(e["dur"]), label) for e, label in labelled
                   if label != str(e["name"]))
    loader = _union([(max(a, start), min(b, host_end)) for a, b, label in named if label.startswith("waiting")])
    cpu_ops = [e for e in host if str(e.get("cat", "")).lower() == "cpu_op"]
    main_ops = _top_level([e for e in cpu_ops if e.get("tid") == main_tid])
    # every thread's outermost ops: on CUDA the backward pass runs on autograd's device thread
    ops = sorted(op for tid in {e.get("tid") for e in cpu_ops} for op in _top_level([e for e in cpu_ops if e.get("tid") == tid]))
    host_ops: dict[str, float] = {}
    for a, b, name in main_ops:
        if b > start:
            host_ops[name] = host_ops.get(name, 0.0) + (min(b, end) - max(a, start)) / 1e3
    out: dict[str, Any] = {
        "steps": len(steps), "window_ms": window / 1e3, "step_ms": window / 1e3 / len(steps),
        "host_dataloader_frac": sum(b - a for a, b in loader if b > a) / window,
        "host_ops_busy_frac": sum(host_ops.values()) * 1e3 / window,  # main thread inside some op
        "top_host_ops": [{"name": n, "ms": v} for n, v in sorted(host_ops.items(), key=lambda kv: -kv[1])[:top]]}
    if not device:
        return {**out, "gpu_busy_frac": None, "gaps": [], "top_kernels": []}
    busy = _union([(max(a, start), min(b, end)) for a, b in device if b > start])
    out["gpu_busy_frac"] = sum(b - a for a, b in busy) / window
    kernels: dict[str, float] = {}
    for e in device_events:
        kernels[str(e["name"])] = kernels.get(str(e["name"]), 0.0) + float(e["dur"])
    out["top_kernels"] = [{"name": n[:120], "share_of_window": v / window}
                          for n, v in sorted(kernels.items(), key=lambda kv: -kv[1])[:top]]
    idle = [(a, b) for a, b in zip([start] + [b for _, b in busy], [a for a, _ in busy] + [end])
            if b - a >= min_gap_ms * 1e3]
    named_starts, op_starts = [a for a, _, _ in named], [a for a, _, _ in ops]
    longest_named = max((b - a for a, b, _ in named), default=0.0)
    longest_op = max((b - a for a, b, _ in ops), default=0.0)
    by_cause: dict[str, list[float]] = {}
    for a, b in idle:
        # a named wait (DataLoader, sync) that covers most of the gap explains it before the op that
        # happens to enclose it; a 2 µs .item() on a CPU tensor inside a 4 ms gap does not
        pick = max(_overlapping(named, named_starts, a, b, longest_named), default=None)
        if pick is None or pick[0] < 0.5 * (b - a):
            pick = max(_overlapping(ops, op_starts, a, b, longest_op), default=None)
        cause = pick[1] if pick else "host idle (nothing recorded)"
        by_cause.setdefault(cause, []).append((b - a) / 1e3)
    out["gaps"] = sorted(({"cause": c, "count": len(v), "total_ms": sum(v), "share_of_window": sum(v) * 1e3 / window}
                          for c, v in by_cause.items()), key=lambda g: -g["total_ms"])
    return out


def format_summary(summary: dict[str, Any], top: int = 4) -> str:
    if not summary.get("steps"):
        return "profile: no step was recorded"
    busy = summary.get("gpu_busy_frac")
    text = (f"profile: {summary['steps']} steps in {summary['window_ms']:.0f} ms ({summary['step_ms']:.1f} ms/step) | "
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

    def __enter__(self) -> "StepProfiler":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

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
