"""Our Hydra sweeper on current Optuna: search space parsing, and a real persistent, resumable sweep.

The sweep runs the real CLI in a subprocess (a fresh interpreter discovers the plugin in the
`hydra_plugins` namespace exactly as a user's would), tiny data, two batches per epoch.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser

from hydra_plugins.cxrssl_optuna_sweeper.optuna_sweeper import OptunaSweeper, distribution, objective_value
from tests.conftest import TINY

ROOT = Path(__file__).resolve().parents[1]


def parse(line: str):
    return distribution(OverridesParser.create().parse_overrides([line])[0])


def test_search_space_from_hydra_sweep_syntax():
    lr = parse("optimizer.lr=tag(log, interval(1e-5, 1e-2))")
    assert isinstance(lr, optuna.distributions.FloatDistribution) and lr.log and (lr.low, lr.high) == (1e-5, 1e-2)
    wd = parse("optimizer.weight_decay=interval(0.0, 0.1)")
    assert isinstance(wd, optuna.distributions.FloatDistribution) and not wd.log
    steps = parse("trainer.accumulate_grad_batches=tag(int, interval(1, 4))")
    assert isinstance(steps, optuna.distributions.IntDistribution) and (steps.low, steps.high) == (1, 4)
    strategy = parse("finetune.strategy=choice(linear, partial, full)")
    assert strategy.choices == ("linear", "partial", "full")
    assert parse("data.batch_size=range(16, 64, 16)").choices == (16, 32, 48)
    assert parse("trainer.max_epochs=3") is None  # a fixed override, not searched


def test_bad_settings_are_named():
    with pytest.raises(ValueError, match="direction"):
        OptunaSweeper(direction="up")
    with pytest.raises(ValueError, match="n_trials"):
        OptunaSweeper(n_trials=0)


def test_failed_or_non_numeric_jobs_do_not_count_as_values():
    class Failed:
        @property
        def return_value(self):
            raise RuntimeError("job crashed")

    class Returned:
        def __init__(self, value):
            self.return_value = value

    assert objective_value(Failed()) is None
    assert objective_value(Returned(None)) is None
    assert objective_value(Returned(float("nan"))) is None
    assert objective_value(Returned(0.25)) == 0.25


def sweep(tmp_path: Path, n_trials: int) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "cxrssl", "pretrain", *TINY, "trainer.limit_batches=2",
               "hparams_search=pretrain_optuna", f"hydra.sweeper.n_trials={n_trials}", "hydra.sweeper.study_name=t",
               f"hydra.sweeper.storage=sqlite:///{tmp_path}/optuna.db", f"hydra.sweep.dir={tmp_path}/multirun/optuna_t",
               f"mlflow.tracking_uri=sqlite:///{tmp_path}/mlflow.db"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def test_sweep_persists_in_sqlite_and_resumes(tmp_path):
    from mlflow import MlflowClient

    sweep(tmp_path, 3)
    study = optuna.load_study(study_name="t", storage=f"sqlite:///{tmp_path}/optuna.db")
    trials = study.get_trials(states=[optuna.trial.TrialState.COMPLETE])
    assert len(trials) == 3
    for trial in trials:
        # The objective is what the job returned: its summary's best value, trial-numbered folders.
        summary = json.loads((tmp_path / "multirun" / "optuna_t" / f"trial_{trial.number}" / "summary.json").read_text())
        assert trial.value == pytest.approx(summary["best_value"])
        assert set(trial.params) == {"optimizer.lr", "optimizer.weight_decay"}
        assert 1e-5 <= trial.params["optimizer.lr"] <= 1e-2
    assert len({t.params["optimizer.lr"] for t in trials}) == 3
    results = (tmp_path / "multirun" / "optuna_t" / "optimization_results.yaml").read_text()
    assert f"best_trial: {study.best_trial.number}" in results

    sweep(tmp_path, 1)  # the same command again continues the study
    study = optuna.load_study(study_name="t", storage=f"sqlite:///{tmp_path}/optuna.db")
    numbers = sorted(t.number for t in study.get_trials(states=[optuna.trial.TrialState.COMPLETE]))
    assert numbers == [0, 1, 2, 3]

    # Every trial is a child MLflow run of one sweep parent, across both invocations.
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    experiment = client.get_experiment_by_name("cxrssl")
    parents = client.search_runs([experiment.experiment_id], "tags.`cxrssl.sweep_parent` != ''")
    assert len(parents) == 1
    children = client.search_runs([experiment.experiment_id],
                                  f"tags.`mlflow.parentRunId` = '{parents[0].info.run_id}'")
    assert len(children) == 4 and all(c.info.status == "FINISHED" for c in children)
    logged = sorted(float(c.data.params["optimizer.lr"]) for c in children)
    assert logged == pytest.approx(sorted(t.params["optimizer.lr"] for t in study.trials))
