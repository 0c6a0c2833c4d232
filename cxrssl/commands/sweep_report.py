"""The closing lines of a multirun: which sweep it was and which run won.

Each job prints its own closing lines; without this the user scrolls back through N of them and
still has to find the sweep id to filter on in `mlflow ui`. A Hydra callback runs once, in the
launching process, after every job has finished (also with parallel launchers), and reads the
jobs' `summary.json` files rather than the tracking store, so it works with `mlflow.enabled=false`.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback

from cxrssl.sweeps import sanitize_sweep_id


def sweep_result(sweep_dir: Path) -> tuple[str, list[dict], dict | None]:
    """(sweep id, every job's summary, the summary with the best monitored value or None)."""
    sweep_id = sanitize_sweep_id("_".join(Path(sweep_dir).parts[-2:]))  # as sweeps.sweep_info_from_hydra
    summaries = []
    for path in sorted(Path(sweep_dir).glob("*/summary.json")):
        try:
            summaries.append(json.loads(path.read_text()))
        except (OSError, ValueError):
            continue  # a job that died mid-write has no result to rank
    scored = [s for s in summaries if isinstance(s.get("best_value"), (int, float))
              and not math.isnan(float(s["best_value"]))]
    if not scored:
        return sweep_id, summaries, None
    pick = min if scored[0].get("monitor_mode", "min") == "min" else max
    return sweep_id, summaries, pick(scored, key=lambda s: float(s["best_value"]))


class PrintSweepResult(Callback):
    def on_multirun_end(self, config: Any, **kwargs: Any) -> None:
        sweep_dir = Path(str(config.hydra.sweep.dir))
        sweep_id, summaries, best = sweep_result(sweep_dir)
        lines = ["", f"sweep:       {sweep_id}: {len(summaries)} run(s) finished in {sweep_dir}",
                 f"mlflow ui:   filter tags.sweep_id = '{sweep_id}' (runs nested under 'sweep-{sweep_id}')"]
        if best is None:
            lines.append("best run:    none (no run reported a monitored value)")
        else:
            lines.append(f"best run:    {best.get('monitor')}={float(best['best_value']):.4g} "
                         f"({best.get('monitor_mode', 'min')}) in {best.get('run_dir')}"
                         f"  mlflow run {best.get('mlflow_run_id') or 'disabled'}")
        print("\n".join(lines), flush=True)
