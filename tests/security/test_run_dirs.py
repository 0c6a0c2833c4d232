"""Run dirs are claimed exclusively; folder artifacts are explicit file lists; writes are atomic."""
from __future__ import annotations

import json
import os
import time

import pytest

from cxrssl.atomic import atomic_copy, atomic_write_text
from cxrssl.commands.run_dirs import RUN_MARKER, RunDirTaken, artifact_files, claim_run_dir, run_started
from tests.conftest import TINY


def test_a_run_dir_is_claimed_once(tmp_path):
    run = claim_run_dir(tmp_path / "run")
    assert (run / RUN_MARKER).is_file() and oct((run / RUN_MARKER).stat().st_mode & 0o777) == "0o600"
    (run / "summary.json").write_text("{}")
    with pytest.raises(RunDirTaken, match="already belongs to another cxrssl run"):
        claim_run_dir(run)
    assert claim_run_dir(run, resume="true") == run  # resume= continues it
    assert (run / "summary.json").read_text() == "{}"


def test_a_foreign_non_empty_folder_is_refused_but_hydra_files_are_fine(tmp_path):
    (tmp_path / "mine.txt").write_text("user data")
    with pytest.raises(RunDirTaken, match="not created by cxrssl"):
        claim_run_dir(tmp_path)
    assert not (tmp_path / RUN_MARKER).exists() and (tmp_path / "mine.txt").read_text() == "user data"
    fresh = tmp_path / "h"
    (fresh / ".hydra").mkdir(parents=True)
    (fresh / "pretrain.log").write_text("")
    assert claim_run_dir(fresh, job_name="pretrain") == fresh


def test_folder_artifacts_skip_the_store_links_and_older_files(tmp_path):
    (tmp_path / "old.csv").write_text("x")
    os.utime(tmp_path / "old.csv", (time.time() - 3600,) * 2)
    claim_run_dir(tmp_path / "x") and None
    since = run_started(tmp_path / "x")
    for name in ("mlartifacts/1/a/artifacts/best.pt", "mlflow.db", "metrics.csv", "plots/roc.png"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("y")
    (tmp_path / "link.csv").symlink_to(tmp_path / "metrics.csv")
    files = {p.relative_to(tmp_path).as_posix() for p in artifact_files(tmp_path, since)}
    assert files == {"metrics.csv", "plots/roc.png"}


def test_atomic_writes_leave_no_temporary_files(tmp_path):
    atomic_write_text(tmp_path / "a.json", "1")
    atomic_copy(tmp_path / "a.json", tmp_path / "b.json")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "b.json"]
    assert (tmp_path / "b.json").read_text() == "1"


def test_a_second_command_into_a_finished_run_dir_is_refused_and_changes_nothing(tmp_path):
    from cxrssl.commands.inprocess import run_command

    mlflow = [f"mlflow.tracking_uri=sqlite:///{tmp_path}/mlflow.db"]
    run_dir = tmp_path / "run"
    run_command("pretrain", [*TINY, *mlflow, "trainer.limit_batches=1"], run_dir=run_dir)
    before = {p: p.stat().st_mtime_ns for p in run_dir.rglob("*") if p.is_file()}
    with pytest.raises(RunDirTaken):
        run_command("pretrain", [*TINY, *mlflow, "trainer.limit_batches=1"], run_dir=run_dir)
    assert before == {p: p.stat().st_mtime_ns for p in run_dir.rglob("*") if p.is_file()}
    # the `hydra.run.dir=.` case: a folder holding the store itself is never a run dir
    with pytest.raises(RunDirTaken, match="not created by cxrssl"):
        run_command("pretrain", [*TINY, *mlflow, "trainer.limit_batches=1"], run_dir=tmp_path)
    assert json.loads((run_dir / "summary.json").read_text())["command"] == "pretrain"


def test_cli_refuses_another_runs_dir_before_hydra_writes_into_it(tmp_path, synthetic_cache):
    """Through the real CLI: Hydra's own `.hydra/*.yaml` of the earlier run stay untouched too."""
    import subprocess
    import sys

    env = {**os.environ, "CXRSSL_CACHE": str(synthetic_cache)}
    args = [sys.executable, "-m", "cxrssl", "pretrain", *TINY, "trainer.limit_batches=1", "mlflow.enabled=false",
            f"hydra.run.dir={tmp_path / 'run'}"]
    first = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr[-3000:]
    before = {p: p.read_bytes() for p in (tmp_path / "run").rglob("*") if p.is_file()}
    second = subprocess.run([*args, "optimizer.lr=0.5"], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=600)
    assert second.returncode == 2 and "already belongs to another cxrssl run" in second.stderr, second.stderr[-3000:]
    assert "Traceback" not in second.stderr
    assert before == {p: p.read_bytes() for p in (tmp_path / "run").rglob("*") if p.is_file()}


def test_default_run_dirs_have_microsecond_timestamps():
    import yaml

    from cxrssl.cli import config_dir

    hydra_cfg = yaml.safe_load((config_dir() / "hydra" / "default.yaml").read_text())
    assert hydra_cfg["run"]["dir"].endswith("%H-%M-%S-%f}") and hydra_cfg["sweep"]["dir"].endswith("%H-%M-%S-%f}")
    assert hydra_cfg["callbacks"]["claim_run_dir"]["_target_"] == "cxrssl.commands.run_dirs.ClaimRunDir"
