"""start_tracking against a real local `mlflow server` (own process group, always stopped)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Iterator

import pytest
from omegaconf import OmegaConf

from cxrssl.tracking import Tracker, resolve_run_artifact, start_tracking

pytestmark = pytest.mark.server

CONF = Path(__file__).resolve().parents[1] / "conf" / "mlflow" / "default.yaml"
READY_TIMEOUT_S = 60


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def tail(log_path: Path) -> str:
    return log_path.read_text(errors="replace")[-3000:]


def stop_process_group(process: subprocess.Popen) -> None:
    """Terminate the server's whole process group (uvicorn workers included), then kill if needed."""
    if process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)


@pytest.fixture(scope="module")
def server_uri(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("mlflow_server")
    port = free_port()
    command = [
        sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
        "--backend-store-uri", f"sqlite:///{root / 'db.sqlite'}", "--artifacts-destination", str(root / "artifacts"),
    ]  # fmt: skip
    log_file = open(root / "server.log", "wb")
    began = time.monotonic()
    # Job execution would start a job runner plus ~7 huey consumers: slow, and not needed here.
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    process = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    try:
        while True:
            if process.poll() is not None:
                pytest.fail(f"mlflow server exited with {process.returncode}:\n{tail(root / 'server.log')}")
            try:
                with urllib.request.urlopen(f"{uri}/health", timeout=1) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() - began > READY_TIMEOUT_S:
                pytest.fail(f"mlflow server not ready after {READY_TIMEOUT_S} s:\n{tail(root / 'server.log')}")
            time.sleep(0.5)
        print(f"mlflow server ready after {time.monotonic() - began:.1f} s")
        yield uri
    finally:
        stop_process_group(process)
        log_file.close()
    assert not group_alive(process.pid), "mlflow server left processes behind"


def group_alive(pgid: int, wait_s: float = 5.0) -> bool:
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return False
        time.sleep(0.2)
    return True


def test_run_through_real_server(server_uri: str, tmp_path: Path):
    from mlflow import MlflowClient

    cfg = OmegaConf.merge(OmegaConf.load(CONF), {"tracking_uri": server_uri, "experiment_name": "server-test"})
    (tmp_path / "best.pt").write_bytes(b"weights")
    tracker = start_tracking(
        cfg, command="pretrain", tags={"pretext": "sex", "backbone": "resnet18"},
        params={"optimizer.lr": "0.001"}, run_name=None, base_dir=tmp_path,
    )  # fmt: skip
    assert isinstance(tracker, Tracker)
    with tracker:
        for step in range(3):
            tracker.log_metrics({"val/auroc": 0.6 + step / 10}, step=step)
        tracker.log_artifact(tmp_path / "best.pt", "checkpoints")

    client = MlflowClient(tracking_uri=server_uri)
    run = client.get_run(tracker.run_id)
    assert run.info.status == "FINISHED"
    assert run.info.run_name == "pretrain-sex-resnet18"
    assert run.data.params == {"optimizer.lr": "0.001"}
    assert run.data.tags["command"] == "pretrain"
    assert [round(m.value, 3) for m in client.get_metric_history(tracker.run_id, "val/auroc")] == [0.6, 0.7, 0.8]
    assert [f.path for f in client.list_artifacts(tracker.run_id, "checkpoints")] == ["checkpoints/best.pt"]
    local = resolve_run_artifact(f"runs:/{tracker.run_id}/checkpoints/best.pt", server_uri, dst=tmp_path / "dl")
    assert local.read_bytes() == b"weights" and (tmp_path / "dl") in local.parents
