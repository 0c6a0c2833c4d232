"""MLflow tracking against real sqlite stores in tmp_path (no server)."""

from __future__ import annotations

import http.server
import logging
import math
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from cxrssl.sweeps import get_or_create_sweep_parent
from cxrssl.tracking import (
    NullTracker,
    SweepInfo,
    Tracker,
    TrackingUnavailable,
    check_reachable,
    flatten_config,
    resolve_run_artifact,
    resolve_tracking_uri,
    start_tracking,
    sweep_info_from_hydra,
    update_sweep_parent,
)

CONF = Path(__file__).resolve().parents[1] / "conf" / "mlflow" / "default.yaml"


@pytest.fixture(scope="module")
def template_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An initialised empty store, copied per test: creating one costs ~3 s of migrations."""
    from mlflow import MlflowClient

    path = tmp_path_factory.mktemp("template") / "mlflow.db"
    MlflowClient(tracking_uri=f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture
def store(tmp_path: Path, template_db: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    shutil.copy(template_db, tmp_path / "mlflow.db")
    monkeypatch.chdir(tmp_path)  # not a git repo: git_commit must be skipped silently
    return tmp_path


def make_cfg(**overrides):
    cfg = OmegaConf.load(CONF)
    return OmegaConf.merge(cfg, overrides)


def client_for(base: Path):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=f"sqlite:///{base / 'mlflow.db'}")


def start(base: Path, **kwargs) -> Tracker:
    options = dict(command="pretrain", tags={"pretext": "age", "backbone": "resnet18"}, params={}, run_name=None)
    options.update(kwargs)
    cfg = options.pop("cfg", make_cfg())
    return start_tracking(cfg, base_dir=base, **options)


def test_import_does_not_load_mlflow():
    code = "import sys, cxrssl.tracking; sys.exit('mlflow' in sys.modules or 'omegaconf' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_relative_sqlite_uri_becomes_absolute_with_four_slashes(tmp_path: Path):
    resolved = resolve_tracking_uri("sqlite:///mlflow.db", tmp_path)
    assert resolved.startswith("sqlite:////")
    assert resolved == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    with_query = resolve_tracking_uri("sqlite:///sub/x.db?timeout=5", tmp_path)
    assert with_query == f"sqlite:///{tmp_path.resolve()}/sub/x.db?timeout=5"
    assert resolve_tracking_uri(resolved, Path("/elsewhere")) == resolved
    assert resolve_tracking_uri("http://host:5000", tmp_path) == "http://host:5000"


@pytest.mark.parametrize("uri", ["./mlruns", "mlruns", "/abs/mlruns", "file:///tmp/mlruns", ""])
def test_file_store_is_refused_with_sqlite_suggestion(uri: str, tmp_path: Path):
    with pytest.raises(ValueError, match=r"MLflow >= 3\.13 refuses file stores.*sqlite:///mlflow\.db"):
        resolve_tracking_uri(uri, tmp_path)


def test_in_memory_sqlite_is_refused(tmp_path: Path):
    with pytest.raises(ValueError, match="in memory"):
        resolve_tracking_uri("sqlite:///:memory:", tmp_path)


def test_flatten_config_dotted_keys_lists_and_truncation():
    cfg = OmegaConf.create(
        {
            "hydra": {"run": {"dir": "x"}},
            "data": {"batch_size": 32, "sizes": [224, 256], "cache": {}, "root": None},
            "trainer": {"amp": True, "lr": "${optimizer.lr}"},
            "optimizer": {"lr": 0.001},
            "note": "x" * 7000,
        }
    )
    flat = flatten_config(cfg)
    assert "hydra.run.dir" not in flat
    assert flat["data.batch_size"] == "32"
    assert flat["data.sizes"] == "[224, 256]"
    assert flat["data.cache"] == "{}"
    assert flat["data.root"] == "null"
    assert flat["trainer.amp"] == "true"
    assert flat["trainer.lr"] == "0.001"
    assert len(flat["note"]) == 6000
    assert all(isinstance(v, str) for v in flat.values())


def test_run_logs_params_metrics_artifacts_and_reads_back(store: Path):
    (store / "out").mkdir()
    (store / "out" / "curve.csv").write_text("epoch,loss\n0,1.0\n")
    (store / "report.txt").write_text("hello")
    with start(store, params={"optimizer.lr": "0.001", "data.batch_size": 8}) as tracker:
        assert isinstance(tracker, Tracker)
        for step in range(3):
            tracker.log_metrics({"train/loss": 1.0 / (step + 1), "val/auroc": 0.5 + step / 10}, step=step)
        tracker.log_artifact(store / "report.txt")
        tracker.log_artifacts(store / "out", artifact_path="curves")
        tracker.set_tags({"note": "smoke"})
        run_id = tracker.run_id

    client = client_for(store)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.info.run_name == "pretrain-age-resnet18"
    assert run.data.params == {"optimizer.lr": "0.001", "data.batch_size": "8"}
    assert run.data.tags["command"] == "pretrain"
    assert run.data.tags["pretext"] == "age" and run.data.tags["note"] == "smoke"
    assert "git_commit" not in run.data.tags
    history = client.get_metric_history(run_id, "train/loss")
    steps = sorted((m.step, round(m.value, 4)) for m in history)
    assert steps == [(0, 1.0), (1, 0.5), (2, 0.3333)]
    experiment = client.get_experiment(run.info.experiment_id)
    assert experiment.name == "cxrssl"
    assert experiment.artifact_location == (store / "mlartifacts").as_uri()
    on_disk = store / "mlartifacts" / run_id / "artifacts"
    assert (on_disk / "report.txt").read_text() == "hello"
    assert (on_disk / "curves" / "curve.csv").is_file()
    assert {f.path for f in client.list_artifacts(run_id)} == {"report.txt", "curves"}


def test_many_metrics_in_one_step_are_all_logged(store: Path):
    tracker = start(store)
    tracker.log_metrics({f"m{i}": float(i) for i in range(1200)}, step=0)
    tracker.end()
    metrics = client_for(store).get_run(tracker.run_id).data.metrics
    assert len(metrics) == 1200 and metrics["m1199"] == 1199.0


def test_git_commit_tag_when_cwd_is_a_repo(store: Path):
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "init", "-q"], cwd=store, check=True)
    subprocess.run([*git, "commit", "-q", "--allow-empty", "-m", "x"], cwd=store, check=True)
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=store, capture_output=True, text=True).stdout.strip()
    tracker = start(store)
    tracker.end()
    assert client_for(store).get_run(tracker.run_id).data.tags["git_commit"] == head


def test_non_finite_metrics_are_skipped_with_one_warning(store: Path, caplog: pytest.LogCaptureFixture):
    tracker = start(store)
    with caplog.at_level(logging.WARNING, logger="cxrssl.tracking"):
        tracker.log_metrics({"loss": math.nan, "acc": 0.5}, step=0)
        tracker.log_metrics({"loss": math.inf, "acc": 0.6}, step=1)
    tracker.end()
    client = client_for(store)
    assert client.get_metric_history(tracker.run_id, "loss") == []
    assert len(client.get_metric_history(tracker.run_id, "acc")) == 2
    assert sum("'loss'" in r.getMessage() for r in caplog.records) == 1


@pytest.mark.parametrize(("error", "status"), [(RuntimeError, "FAILED"), (KeyboardInterrupt, "KILLED")])
def test_context_manager_marks_failed_or_killed(store: Path, error: type[BaseException], status: str):
    with pytest.raises(error):
        with start(store) as tracker:
            raise error("boom")
    assert client_for(store).get_run(tracker.run_id).info.status == status


def test_fake_sweep_nests_children_under_one_parent_and_picks_best(store: Path):
    client = client_for(store)
    losses = {"0.1": 0.9, "0.01": 0.2, "0.001": 0.5}
    run_ids = {}
    for job_num, (lr, loss) in enumerate(losses.items()):
        sweep = SweepInfo("2024-01-01_12-00-00", job_num, [f"optimizer.lr={lr}"])
        with start(store, sweep=sweep) as tracker:
            tracker.log_metrics({"val/loss": loss + 1.0}, step=0)
            tracker.log_metrics({"val/loss": loss}, step=1)
            run_ids[lr] = tracker.run_id
        best = update_sweep_parent(tracker, "val/loss", "min")

    assert best == (run_ids["0.01"], 0.2)
    runs = client.search_runs([tracker.experiment_id], "tags.sweep_id = '2024-01-01_12-00-00'")
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1 and len(children) == 3
    parent = parents[0]
    assert parent.info.run_name == "sweep-2024-01-01_12-00-00"
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parent.info.run_id}
    expected_names = sorted(f"pretrain-age-resnet18 optimizer.lr={lr}" for lr in losses)
    assert sorted(c.info.run_name for c in children) == expected_names
    assert parent.data.metrics["best_val/loss"] == 0.2
    assert parent.data.tags["best_run_id"] == run_ids["0.01"]
    assert update_sweep_parent(tracker, "val/loss", "max") == (run_ids["0.1"], 0.9)
    assert client.get_run(parent.info.run_id).data.tags["best_run_id"] == run_ids["0.1"]


def test_racing_sweep_parent_creation_converges_on_the_oldest(store: Path):
    tracker = start(store)  # creates the experiment
    client = client_for(store)
    sweep = SweepInfo("race", 0, [])
    first = client.create_run(tracker.experiment_id, tags={"cxrssl.sweep_parent": "race"}).info.run_id
    time.sleep(0.01)

    class BlindFirstSearch:  # the other process's parent is not visible yet at the first search
        def __init__(self, inner):
            self.inner, self.calls = inner, 0

        def __getattr__(self, name):
            return getattr(self.inner, name)

        def search_runs(self, *args, **kwargs):
            self.calls += 1
            return [] if self.calls == 1 else self.inner.search_runs(*args, **kwargs)

    chosen = get_or_create_sweep_parent(BlindFirstSearch(client), tracker.experiment_id, sweep)
    assert chosen == first
    live = client.search_runs([tracker.experiment_id], "tags.`cxrssl.sweep_parent` = 'race'")
    assert [r.info.run_id for r in live] == [first]  # the duplicate was deleted


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_unreachable_server_fails_fast_naming_the_uri(tmp_path: Path):
    uri = f"http://127.0.0.1:{closed_port()}"
    began = time.monotonic()
    with pytest.raises(TrackingUnavailable) as info:
        start(tmp_path, cfg=make_cfg(tracking_uri=uri, connect_timeout_s=2))
    assert time.monotonic() - began < 2 + 2
    assert uri in str(info.value) and "mlflow.enabled=false" in str(info.value)


def test_http_server_that_is_not_mlflow_is_reported():
    class NotFound(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(404)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), NotFound)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        with pytest.raises(TrackingUnavailable, match="answered HTTP 404"):
            check_reachable(f"http://127.0.0.1:{server.server_address[1]}", 2)
    finally:
        server.shutdown()
        server.server_close()


def test_resume_continues_the_same_run(store: Path):
    first = start(store)
    first.log_metrics({"loss": 1.0}, step=0)
    first.end("KILLED")
    resumed = start(store, resume_run_id=first.run_id, params={"trainer.epochs": 2})
    assert resumed.run_id == first.run_id
    client = client_for(store)
    assert client.get_run(first.run_id).info.status == "RUNNING"
    resumed.log_metrics({"loss": 0.5}, step=1)
    resumed.end()
    run = client.get_run(first.run_id)
    assert run.info.status == "FINISHED" and run.data.params["trainer.epochs"] == "2"
    assert [m.step for m in client.get_metric_history(first.run_id, "loss")] == [0, 1]


def test_resume_of_unknown_run_starts_a_new_tagged_run(store: Path):
    tracker = start(store, resume_run_id="0" * 32)
    tracker.end()
    assert tracker.run_id != "0" * 32
    assert client_for(store).get_run(tracker.run_id).data.tags["resumed_from"] == "0" * 32


def test_rank_one_and_disabled_get_null_tracker(tmp_path: Path):
    assert isinstance(start(tmp_path, rank=1), NullTracker)
    assert isinstance(start(tmp_path, cfg=make_cfg(enabled=False)), NullTracker)
    assert not (tmp_path / "mlflow.db").exists()
    with NullTracker() as null:
        null.log_params({"a": 1})
        null.log_metrics({"a": 1.0}, step=0)
        null.log_artifact("missing.txt")
        null.set_tags({"a": "b"})
    assert null.run_id is None and update_sweep_parent(null, "val/loss", "min") is None


def test_resolve_run_artifact_by_id_and_runs_uri(store: Path):
    (store / "best.pt").write_bytes(b"weights")
    (store / "last.pt").write_bytes(b"last")
    with start(store) as tracker:
        tracker.log_artifact(store / "best.pt", "checkpoints")
        tracker.log_artifact(store / "last.pt", "checkpoints")
    uri = "sqlite:///mlflow.db"  # relative: resolved against the cwd (store)
    by_id = resolve_run_artifact(tracker.run_id, uri)
    assert by_id.read_bytes() == b"weights"
    assert resolve_run_artifact(f"runs:/{tracker.run_id}", uri) == by_id
    assert resolve_run_artifact(f"runs:/{tracker.run_id}/checkpoints/last.pt", uri).read_bytes() == b"last"
    with pytest.raises(FileNotFoundError, match=rf"{tracker.run_id}.*final\.pt.*checkpoints/best\.pt"):
        resolve_run_artifact(f"runs:/{tracker.run_id}/checkpoints/final.pt", uri)
    with pytest.raises(FileNotFoundError, match="f" * 32):
        resolve_run_artifact("f" * 32, uri)


def test_sweep_info_from_hydra(tmp_path: Path):
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import read_write

    assert sweep_info_from_hydra() is None  # outside Hydra
    (tmp_path / "cfg.yaml").write_text("optimizer:\n  lr: 0.1\n")
    with initialize_config_dir(str(tmp_path), version_base="1.3"):
        cfg = compose("cfg", overrides=["optimizer.lr=0.01"], return_hydra_config=True)
    try:
        HydraConfig.instance().set_config(cfg)
        assert sweep_info_from_hydra() is None  # RUN mode
        with read_write(cfg.hydra):
            cfg.hydra.mode = "MULTIRUN"
            cfg.hydra.sweep.dir = "multirun/2024-01-01/12-00-00"
            cfg.hydra.job.num = 2
        HydraConfig.instance().set_config(cfg)
        assert sweep_info_from_hydra() == SweepInfo("2024-01-01_12-00-00", 2, ["optimizer.lr=0.01"])
    finally:
        HydraConfig.instance().cfg = None
