"""Run a real `cxrssl` multirun in a subprocess and check that the store holds every run and metric.

Shared by the parallel-launcher test (sqlite store) and the team-server test (PostgreSQL behind
`mlflow server`): the same counting, whatever the backend.
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_cli(args: list[str], cwd: Path, timeout: int = 900) -> subprocess.CompletedProcess:
    """`python -m cxrssl <args>` with this checkout (and its hydra_plugins) first on the path."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-m", "cxrssl", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)
    assert done.returncode == 0, done.stdout[-4000:] + "\n" + done.stderr[-4000:]
    return done


def check_sweep_complete(tracking_uri: str, sweep_dir: Path, n_jobs: int) -> list:
    """Every job of the sweep is one FINISHED child run of one parent, holding every param it was given
    and every epoch metric its summary.json reports (same value). Returns the child runs."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    experiment = client.get_experiment_by_name("cxrssl")
    parents = client.search_runs([experiment.experiment_id], "tags.`cxrssl.sweep_parent` != ''")
    assert len(parents) == 1, [p.info.run_name for p in parents]
    children = client.search_runs([experiment.experiment_id],
                                  f"tags.`mlflow.parentRunId` = '{parents[0].info.run_id}'", max_results=1000)
    assert len(children) == n_jobs, f"{len(children)} child runs for {n_jobs} jobs"
    by_id = {c.info.run_id: c for c in children}
    summaries = [json.loads((sweep_dir / str(job) / "summary.json").read_text()) for job in range(n_jobs)]
    assert sorted(s["mlflow_run_id"] for s in summaries) == sorted(by_id)
    param_counts = {len(c.data.params) for c in children}
    assert len(param_counts) == 1 and param_counts.pop() > 50, "runs hold different numbers of params"
    for summary in summaries:
        run = by_id[summary["mlflow_run_id"]]
        assert run.info.status == "FINISHED"
        epochs = int(summary["epochs_completed"])
        for key, value in summary["final"].items():
            if value is None or not math.isfinite(float(value)):
                continue
            history = client.get_metric_history(run.info.run_id, key)
            at_last = [m.value for m in history if m.step == epochs]
            assert at_last and math.isclose(at_last[-1], float(value), rel_tol=1e-6), (key, history, value)
        monitor = summary["monitor"]
        assert math.isclose(run.data.metrics[f"best/{monitor}"], float(summary["best_value"]), rel_tol=1e-6)
    return children
