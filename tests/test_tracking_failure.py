"""Tracking never loses training (issue 8 item 7).

* A real `mlflow server`, started here, is killed by its PID while `cxrssl pretrain` runs: training
  finishes, checkpoints and summary.json are intact, unsent metrics are kept in the run dir, the
  summary says tracking failed and how to re-upload, and the re-upload fills the run.
* Parallel sweep jobs updating the parent's "best" under the store lock lose no update.
"""
from __future__ import annotations

import json
import multiprocessing
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from cxrssl.engine.checkpoint import load_checkpoint
from cxrssl.tracking import Tracker, start_tracking
from cxrssl.tracking_offline import OFFLINE_FILE, UPLOADED_FILE, read_records, replay
from tests.conftest import TINY
from tests.test_mlflow_server import free_port, group_alive, stop_process_group

CONF = Path(__file__).resolve().parents[1] / "conf" / "mlflow" / "default.yaml"


def start_server(root: Path, port: int) -> subprocess.Popen:
    command = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
               "--backend-store-uri", f"sqlite:///{root / 'db.sqlite'}",
               "--artifacts-destination", str(root / "artifacts")]
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    log = open(root / f"server-{port}.log", "ab")
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    began = time.monotonic()
    while time.monotonic() - began < 120:
        if process.poll() is not None:
            pytest.fail(f"mlflow server exited: {(root / f'server-{port}.log').read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1) as response:
                if response.status == 200:
                    return process
        except OSError:
            time.sleep(0.5)
    stop_process_group(process)
    pytest.fail("mlflow server not ready after 120 s")


def test_dead_store_goes_offline_and_replays(tmp_path, monkeypatch):
    """Fast, no server: a store that refuses every call after start never raises into training."""
    from mlflow import MlflowClient

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    dead = MlflowClient(tracking_uri=f"http://127.0.0.1:{free_port()}")
    live_uri = f"sqlite:///{tmp_path}/mlflow.db"
    live = MlflowClient(tracking_uri=live_uri)
    experiment = live.create_experiment("x")
    run_id = live.create_run(experiment).info.run_id
    (tmp_path / "summary.json").write_text("{}")
    tracker = Tracker(dead, run_id, experiment, live_uri, run_dir=tmp_path)
    with tracker:
        for step in range(3):
            tracker.log_metrics({"train/loss": 1.0 / (step + 1)}, step=step)
        tracker.log_params({"optimizer.lr": "0.1"})
        tracker.log_artifact(tmp_path / "summary.json")
    status = tracker.tracking_status()
    assert status["status"] == "failed" and status["unsent"] == str(tmp_path / OFFLINE_FILE)
    assert "python" in status["reupload"] and "cxrssl.tracking_offline" in status["reupload"]
    ops = [r["op"] for r in read_records(tmp_path / OFFLINE_FILE)]
    assert ops == ["header", "metrics", "metrics", "metrics", "params", "artifact", "end"]
    from cxrssl.tracking_offline import main as upload

    assert upload([str(tmp_path)]) == 0  # what the summary tells the user to run
    run = live.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.params == {"optimizer.lr": "0.1"}
    assert [m.step for m in live.get_metric_history(run_id, "train/loss")] == [0, 1, 2]
    assert (tmp_path / UPLOADED_FILE).is_file() and not (tmp_path / OFFLINE_FILE).exists()
    assert upload([str(tmp_path)]) == 2  # nothing left to send: a one-line user error, not a traceback


@pytest.mark.server
@pytest.mark.slow  # ~1 min idle (two server starts); the fast offline test above covers the mechanism
def test_server_killed_mid_run_training_completes(tmp_path):
    root = tmp_path / "server"
    root.mkdir()
    port = free_port()
    server = start_server(root, port)
    uri = f"http://127.0.0.1:{port}"
    run_dir = tmp_path / "run"
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
           "MLFLOW_HTTP_REQUEST_TIMEOUT": "5"}
    exe = Path(sys.executable).with_name("cxrssl")
    job = subprocess.Popen([str(exe), "pretrain", *TINY, "trainer.max_epochs=4", f"mlflow.tracking_uri={uri}",
                            f"hydra.run.dir={run_dir}", "trainer.log_every_n_steps=1"],
                           cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output = []
    try:
        for line in job.stdout:  # kill the server once training has started
            output.append(line)
            if line.startswith("training "):
                time.sleep(1.0)
                os.killpg(server.pid, signal.SIGKILL)
                server.wait(timeout=30)
                break
        output.append(job.communicate(timeout=900)[0])
    finally:
        stop_process_group(server)
        if job.poll() is None:
            job.kill()
    text = "".join(output)
    assert not group_alive(server.pid, wait_s=1.0)
    assert job.returncode == 0, text[-4000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["epochs_completed"] == 4
    for name in ("best.pt", "last.pt"):
        assert load_checkpoint(run_dir / "checkpoints" / name)["meta"]["command"] == "pretrain"
    tracking = summary["tracking"]
    assert tracking["status"] == "failed" and tracking["unsent"] == str(run_dir / OFFLINE_FILE)
    assert f"cxrssl.tracking_offline {run_dir}" in tracking["reupload"]
    assert "tracking:    FAILED" in text and "re-upload with" in text
    records = read_records(run_dir / OFFLINE_FILE)
    unsent_epochs = {r["step"] for r in records if r["op"] == "metrics" and any(k.startswith("val/") for k in r["metrics"])}
    assert unsent_epochs, "no validation metrics kept for re-upload"
    assert records[-1] == {"op": "end", "status": "FINISHED"}

    # the same store behind a new server: the re-upload fills the run
    port2 = free_port()
    server2 = start_server(root, port2)
    try:
        run_id = replay(run_dir, f"http://127.0.0.1:{port2}")
        from mlflow import MlflowClient

        client = MlflowClient(tracking_uri=f"http://127.0.0.1:{port2}")
        run = client.get_run(run_id)
        assert run.info.status == "FINISHED" and run_id == summary["mlflow_run_id"]
        history = {m.step for m in client.get_metric_history(run_id, summary["monitor"])}
        assert history >= unsent_epochs and len(history) == 4
    finally:
        stop_process_group(server2)


def _sweep_job(uri: str, experiment_id: str, parent_id: str, value: float, delay: float, barrier) -> None:
    from mlflow import MlflowClient

    from cxrssl.sweeps import PARENT_RUN_TAG, update_sweep_parent

    client = MlflowClient(tracking_uri=uri)
    run_id = client.create_run(experiment_id, tags={PARENT_RUN_TAG: parent_id}).info.run_id
    tracker = Tracker(client, run_id, experiment_id, uri, parent_run_id=parent_id)
    barrier.wait()  # all jobs finish training together ...
    time.sleep(delay)  # ... the best one first, so a last-writer-wins bug always shows
    tracker.log_metrics({"best/val/loss": value}, step=0)  # as finish_run does, just before the parent update
    update_sweep_parent(tracker, "best/val/loss", "min")
    barrier.wait()  # nobody's run ends before every job has updated the parent (all RUNNING meanwhile)
    tracker.end()


def test_parallel_sweep_jobs_keep_the_best_parent(tmp_path):
    """Four processes finish at once; the parent must name the true best. (Before: only FINISHED
    children counted and nothing was locked, so a job that updated while the best one was still
    RUNNING overwrote it; and a read-then-write could interleave with another job's.)"""
    from mlflow import MlflowClient

    from cxrssl.tracking_store import resolve_tracking_uri

    uri = resolve_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db", tmp_path)
    tracker = start_tracking(OmegaConf.merge(OmegaConf.load(CONF), {"tracking_uri": uri}), command="pretrain",
                             tags={}, params={}, run_name="warm-up", base_dir=tmp_path)  # creates + migrates the db
    tracker.end()
    client = MlflowClient(tracking_uri=uri)
    experiment_id = tracker.experiment_id
    parent_id = client.create_run(experiment_id, run_name="sweep-parent").info.run_id
    values = [0.2, 0.5, 0.7, 0.9]  # best first; delays below make the worst write last
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(len(values))
    jobs = [ctx.Process(target=_sweep_job, args=(uri, experiment_id, parent_id, v, 0.5 * i, barrier))
            for i, v in enumerate(values)]
    for job in jobs:
        job.start()
    for job in jobs:
        job.join(timeout=300)
        assert job.exitcode == 0
    parent = client.get_run(parent_id)
    best = client.get_run(parent.data.tags["best_run_id"])
    assert best.data.metrics["best/val/loss"] == min(values)
    assert parent.data.metrics["best/val/loss"] == min(values)
