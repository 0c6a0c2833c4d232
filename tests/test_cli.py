"""The real console script, in a subprocess, as a user runs it."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import TINY


def cxrssl(*args, cwd, env_extra=None, timeout=400):
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env_extra or {})}
    exe = Path(sys.executable).with_name("cxrssl")
    return subprocess.run([str(exe), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def _options(group: str) -> list[str]:
    """The shipped options of a config group, as Hydra lists them (sorted)."""
    conf = Path(__file__).resolve().parents[1] / "conf" / group
    return sorted(p.stem for p in conf.glob("*.yaml"))


def test_help_is_fast_and_lists_commands(tmp_path):
    start = time.perf_counter()
    out = cxrssl("--help", cwd=tmp_path)
    assert out.returncode == 0
    assert time.perf_counter() - start < 10
    for command in ("pretrain", "finetune", "evaluate", "explain", "predict"):
        assert command in out.stdout


def test_pretrain_help_lists_groups_and_cfg_job_composes(tmp_path):
    out = cxrssl("pretrain", "--help", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert f"pretext: {', '.join(_options('pretext'))}" in out.stdout  # e.g. age, byol, ..., sex, simclr
    assert f"backbone: {', '.join(_options('backbone'))}" in out.stdout
    assert {"age", "recon", "sex"} <= set(_options("pretext")) and "resnet18" in _options("backbone")
    job = cxrssl("pretrain", "--cfg", "job", "pretext=recon", "optimizer=sgd", "optimizer.lr=0.01", cwd=tmp_path)
    assert job.returncode == 0, job.stderr
    for line in ("name: recon", "name: sgd", "lr: 0.01", "tracking_uri: sqlite:///mlflow.db", "limit_batches: null"):
        assert line in job.stdout


def test_wrong_option_gives_hydras_error_with_valid_options(tmp_path):
    out = cxrssl("pretrain", "backbone=resnet9000", cwd=tmp_path)
    assert out.returncode != 0
    assert "resnet9000" in out.stderr and "densenet121" in out.stderr


def test_unknown_command(tmp_path):
    out = cxrssl("train", cwd=tmp_path)
    assert out.returncode == 2 and "unknown command 'train'" in out.stderr


@pytest.mark.parametrize("pretext", ["age", "sex", "recon"])
def test_pretrain_each_pretext_end_to_end(tmp_path, pretext, synthetic_cache):
    run_dir = tmp_path / "run"
    out = cxrssl("pretrain", f"pretext={pretext}", *TINY, f"hydra.run.dir={run_dir}", cwd=tmp_path,
                 env_extra={"CXRSSL_CACHE": str(synthetic_cache)})
    assert out.returncode == 0, out.stderr[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["pretext"] == pretext and summary["epochs_completed"] == 1
    assert Path(summary["checkpoints"]["best"]).is_file() and (run_dir / "checkpoints" / "last.pt").is_file()
    assert (run_dir / "config.yaml").is_file() and (tmp_path / "mlflow.db").is_file()
    assert summary["mlflow_run_id"] in out.stdout  # the closing lines name the run
    if pretext == "recon":
        assert (run_dir / "artifacts" / "recon_epoch001.png").is_file()
    if pretext == "age":  # an age error is read in years, not as a fraction
        assert "mae=" in out.stdout and " years" in out.stdout.split("best:")[1].splitlines()[0]


def test_multirun_is_one_grouped_sweep(tmp_path, synthetic_cache):
    out = cxrssl("pretrain", "-m", "optimizer.lr=1e-3,3e-3", *TINY, "trainer.limit_batches=2",
                 f"hydra.sweep.dir={tmp_path}/sweep", cwd=tmp_path, env_extra={"CXRSSL_CACHE": str(synthetic_cache)})
    assert out.returncode == 0, out.stderr[-3000:]
    summaries = [json.loads(p.read_text()) for p in sorted((tmp_path / "sweep").glob("*/summary.json"))]
    assert len(summaries) == 2
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    exp = client.get_experiment_by_name("cxrssl")
    children = [client.get_run(s["mlflow_run_id"]) for s in summaries]
    sweep_ids = {r.data.tags["sweep_id"] for r in children}
    parents = {r.data.tags["mlflow.parentRunId"] for r in children}
    assert len(sweep_ids) == 1 and len(parents) == 1
    assert {r.data.params["optimizer.lr"] for r in children} == {"0.001", "0.003"}
    parent = client.get_run(parents.pop())
    assert parent.info.experiment_id == exp.experiment_id and "best_run_id" in parent.data.tags
    # the multirun's own closing lines: the sweep id to filter on and the winning run
    sweep_id = sweep_ids.pop()
    assert f"tags.sweep_id = '{sweep_id}'" in out.stdout
    ranked = sorted(summaries, key=lambda s: s["best_value"])  # age pretext: MAE, lower is better
    assert f"mlflow run {ranked[0]['mlflow_run_id']}" in out.stdout.split("best run:")[1].splitlines()[0]


def test_interrupted_run_resumes_same_dir_and_mlflow_run(tmp_path, synthetic_cache):
    run_dir = tmp_path / "run"
    env = {"CXRSSL_CACHE": str(synthetic_cache)}
    first = cxrssl("pretrain", *TINY, "trainer.limit_batches=2", f"hydra.run.dir={run_dir}", cwd=tmp_path, env_extra=env)
    assert first.returncode == 0, first.stderr[-3000:]
    run_id = json.loads((run_dir / "summary.json").read_text())["mlflow_run_id"]
    second = cxrssl("pretrain", *TINY, "trainer.limit_batches=2", "trainer.max_epochs=2", "resume=true",
                    f"hydra.run.dir={run_dir}", cwd=tmp_path, env_extra=env)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "resumed from" in second.stdout
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["epochs_completed"] == 2 and summary["global_step"] == 4
    assert summary["mlflow_run_id"] == run_id


def test_unreachable_tracking_server_fails_before_training(tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    start = time.perf_counter()
    out = cxrssl("pretrain", *TINY, f"mlflow.tracking_uri=http://127.0.0.1:{port}", "mlflow.connect_timeout_s=2",
                 f"hydra.run.dir={tmp_path}/run", cwd=tmp_path)
    assert out.returncode != 0
    assert f"127.0.0.1:{port}" in out.stderr and "training" not in out.stdout
    assert time.perf_counter() - start < 60


def test_shell_completion_completes_commands_groups_and_keys(tmp_path):
    def query(line):
        out = cxrssl("-sc", "query=bash", cwd=tmp_path, env_extra={"COMP_LINE": line, "COMP_POINT": str(len(line))})
        assert out.returncode == 0, out.stderr
        return out.stdout.split()

    assert "finetune" in query("cxrssl fi")
    assert query("cxrssl pretrain pretext=") == [f"pretext={name}" for name in _options("pretext")]
    assert "optimizer.lr=" in query("cxrssl pretrain optimizer.l")
    install = cxrssl("pretrain", "-sc", "install=bash", cwd=tmp_path)
    assert install.returncode == 0 and "complete" in install.stdout
