"""`cxrssl pretrain` preempted by SIGTERM mid-epoch, as a cluster does it: exit status 143, the MLflow
run KILLED with a resume hint, and `resume=true` reaching the uninterrupted run's weights exactly."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cxrssl.engine.checkpoint import load_checkpoint
from tests.conftest import TINY

ROOT = Path(__file__).resolve().parents[2]


def pretrain(tmp_path: Path, run: str, *extra: str, pause_s: float = 0) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("CXRSSL_TEST_CHECKPOINT_PAUSE_S", None)
    if pause_s:
        env["CXRSSL_TEST_CHECKPOINT_PAUSE_S"] = str(pause_s)
    args = [sys.executable, "-m", "cxrssl", "pretrain", *TINY, "trainer.max_epochs=2",
            "trainer.checkpoint_every_n_steps=2", f"mlflow.tracking_uri=sqlite:///{tmp_path}/mlflow.db",
            f"hydra.run.dir={tmp_path / run}", *extra]
    return subprocess.Popen(args, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
def test_sigterm_exits_143_marks_run_killed_and_resume_is_exact(tmp_path):
    straight = pretrain(tmp_path, "straight")
    out, err = straight.communicate(timeout=900)
    assert straight.returncode == 0, err[-3000:]

    proc = pretrain(tmp_path, "preempted", pause_s=3)
    for line in proc.stdout:  # the first recovery write, mid-epoch 1
        if line.startswith("checkpoint pause:"):
            proc.send_signal(signal.SIGTERM)
            break
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 143, err[-3000:]
    assert "preempted" in err and "resume=true" in err and "Traceback" not in err
    recovery = tmp_path / "preempted" / "checkpoints" / "recovery.pt"
    state = load_checkpoint(recovery)
    # SIGTERM came during step 2's periodic recovery write, after that step's (all-rank) look at the
    # flag: the run stops at the next step boundary, step 3, with a fresh recovery.pt
    assert state["epoch"] == 0 and state["batch_cursor"] == 3

    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    run = client.get_run(state["meta"]["mlflow_run_id"])
    assert run.info.status == "KILLED"
    assert "resume=true" in run.data.tags["resume_hint"] and run.data.tags["preempted"] == "SIGTERM"

    resumed = pretrain(tmp_path, "preempted", "resume=true")
    out, err = resumed.communicate(timeout=900)
    assert resumed.returncode == 0, err[-3000:]
    assert "resumed from" in out and "recovery.pt" in out
    summary = json.loads((tmp_path / "preempted" / "summary.json").read_text())
    assert summary["epochs_completed"] == 2
    assert client.get_run(state["meta"]["mlflow_run_id"]).info.status == "FINISHED"
    a = load_checkpoint(tmp_path / "straight" / "checkpoints" / "last.pt")["model"]
    b = load_checkpoint(tmp_path / "preempted" / "checkpoints" / "last.pt")["model"]
    for key, value in a.items():
        assert torch.equal(b[key], value), key
