"""A team tracking server: real PostgreSQL + `mlflow server`, fed by a parallel multirun.

PostgreSQL comes from the Debian `postgresql` package (.ci/run installs it): a throw-away cluster in
a temp folder, listening on loopback only, run as a non-root user (postgres refuses root), started
with pg_ctl and stopped by its postmaster PID. Skipped, with the reason, only if the binaries are absent.
"""
from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Iterator

import pytest

from tests.conftest import TINY
from tests.sweep_helpers import check_sweep_complete, run_cli
from tests.test_mlflow_server import free_port, stop_process_group, tail

pytestmark = pytest.mark.server


def pg_bin(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return candidates[-1] if candidates else None


def as_user(user: str | None) -> list[str]:
    """Prefix that runs a command as `user` (root only: postgres will not run as root)."""
    return ["runuser", "-u", user, "--"] if user else []


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@pytest.fixture(scope="module")
def postgres_uri() -> Iterator[str]:
    initdb, pg_ctl = pg_bin("initdb"), pg_bin("pg_ctl")
    if not (initdb and pg_ctl):
        pytest.skip("PostgreSQL binaries (initdb, pg_ctl) not found: apt-get install -y postgresql")
    pytest.importorskip("psycopg2", reason="pip install 'cxrssl[server]' (psycopg2-binary)")
    user = None
    if os.geteuid() == 0:
        try:
            user = pwd.getpwnam("postgres").pw_name
        except KeyError:
            pytest.skip("running as root and there is no 'postgres' user to run PostgreSQL as")
    # Not under pytest's tmp dir: its parents are private to root, and the server user must enter.
    root = Path(tempfile.mkdtemp(prefix="cxrssl_pg_"))
    data, sockets = root / "data", root / "sockets"
    sockets.mkdir()
    if user:
        ids = pwd.getpwnam(user)
        for path in (root, sockets):
            os.chown(path, ids.pw_uid, ids.pw_gid)
    port = free_port()
    pid = None
    try:
        subprocess.run([*as_user(user), initdb, "-D", str(data), "-U", "cxrssl", "--auth=trust", "-E", "UTF8"],
                       check=True, capture_output=True, timeout=120)
        subprocess.run([*as_user(user), pg_ctl, "-D", str(data), "-l", str(root / "postgres.log"), "-w", "-t", "60",
                        "-o", f"-h 127.0.0.1 -p {port} -k {sockets}", "start"], check=True, capture_output=True,
                       timeout=120)
        pid = int((data / "postmaster.pid").read_text().split()[0])
        import psycopg2

        conn = psycopg2.connect(host="127.0.0.1", port=port, user="cxrssl", dbname="postgres")
        conn.autocommit = True  # CREATE DATABASE cannot run inside a transaction
        conn.cursor().execute("CREATE DATABASE mlflow")
        conn.close()
        # SQLAlchemy 2.1 maps plain postgresql:// to psycopg 3; name the driver we install.
        yield f"postgresql+psycopg2://cxrssl@127.0.0.1:{port}/mlflow"
    finally:
        if pid is not None:
            os.kill(pid, signal.SIGINT)  # "fast" shutdown of the postmaster and its children
            deadline = time.monotonic() + 30
            while pid_alive(pid) and time.monotonic() < deadline:
                time.sleep(0.2)
            if pid_alive(pid):
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(root, ignore_errors=True)
    assert pid is None or not pid_alive(pid), "PostgreSQL left running"


@pytest.fixture(scope="module")
def team_server(postgres_uri: str, tmp_path_factory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("team_server")
    port = free_port()
    log_path = root / "server.log"
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "2",
             "--backend-store-uri", postgres_uri, "--artifacts-destination", str(root / "artifacts")],
            stdout=log_file, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        uri = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 120
            while True:
                if process.poll() is not None:
                    pytest.fail(f"mlflow server exited with {process.returncode}:\n{tail(log_path)}")
                try:
                    with urllib.request.urlopen(f"{uri}/health", timeout=1) as response:
                        if response.status == 200:
                            break
                except OSError:
                    pass
                if time.monotonic() > deadline:
                    pytest.fail(f"mlflow server not ready after 120 s:\n{tail(log_path)}")
                time.sleep(0.5)
            yield uri
        finally:
            stop_process_group(process)


def test_parallel_multirun_logs_everything_to_the_team_server(team_server, postgres_uri, tmp_path):
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher", reason="pip install 'cxrssl[parallel]'")
    import psycopg2

    n_jobs = 4
    sweep_dir = tmp_path / "multirun" / "team"
    run_cli(["pretrain", "-m", *TINY, "trainer.limit_batches=2", "trainer.max_epochs=2",
             "optimizer.lr=" + ",".join(f"{(i + 1) * 1e-3:g}" for i in range(n_jobs)),
             "hydra/launcher=joblib", f"hydra.launcher.n_jobs={n_jobs}", f"hydra.sweep.dir={sweep_dir}",
             f"mlflow.tracking_uri={team_server}"], cwd=tmp_path)
    children = check_sweep_complete(team_server, sweep_dir, n_jobs)
    # ... and it really is PostgreSQL that holds them, with every param and metric row.
    with psycopg2.connect(postgres_uri.replace("+psycopg2", "")) as conn, conn.cursor() as cursor:
        ids = tuple(c.info.run_id for c in children)
        cursor.execute("SELECT count(*) FROM runs WHERE run_uuid IN %s", (ids,))
        assert cursor.fetchone()[0] == n_jobs
        cursor.execute("SELECT count(*) FROM params WHERE run_uuid IN %s", (ids,))
        assert cursor.fetchone()[0] == sum(len(c.data.params) for c in children)
        cursor.execute("SELECT count(DISTINCT (run_uuid, key)) FROM latest_metrics WHERE run_uuid IN %s", (ids,))
        assert cursor.fetchone()[0] == sum(len(c.data.metrics) for c in children)
    # Artifacts go through the server too (--artifacts-destination): the summary of every run.
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=team_server)
    for child in children:
        assert "summary.json" in {a.path for a in client.list_artifacts(child.info.run_id)}
