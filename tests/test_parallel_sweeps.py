"""`hydra/launcher=joblib`: parallel local jobs writing into one sqlite store lose no run or metric."""
from __future__ import annotations

import pytest

from tests.conftest import TINY
from tests.sweep_helpers import check_sweep_complete, run_cli

pytest.importorskip("hydra_plugins.hydra_joblib_launcher", reason="pip install 'cxrssl[parallel]' (hydra-joblib-launcher)")


def parallel_sweep(tmp_path, n_jobs: int) -> None:
    lrs = ",".join(f"{(i + 1) * 1e-3:g}" for i in range(n_jobs))
    sweep_dir = tmp_path / "multirun" / "joblib"
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    run_cli(["pretrain", "-m", *TINY, "trainer.limit_batches=2", "trainer.max_epochs=2", f"optimizer.lr={lrs}",
             "hydra/launcher=joblib", f"hydra.launcher.n_jobs={n_jobs}", f"hydra.sweep.dir={sweep_dir}",
             f"mlflow.tracking_uri={uri}"], cwd=tmp_path)
    children = check_sweep_complete(uri, sweep_dir, n_jobs)
    assert sorted(float(c.data.params["optimizer.lr"]) for c in children) == pytest.approx(
        [(i + 1) * 1e-3 for i in range(n_jobs)])


def test_two_parallel_jobs_into_one_sqlite_store(tmp_path):
    parallel_sweep(tmp_path, 2)


@pytest.mark.slow
def test_four_parallel_jobs_into_one_sqlite_store(tmp_path):
    parallel_sweep(tmp_path, 4)
