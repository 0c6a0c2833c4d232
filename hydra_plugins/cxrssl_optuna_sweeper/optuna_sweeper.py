"""Hydra sweeper that asks Optuna (>= 3) for trials and tells it what each job returned.

Why our own instead of `hydra-optuna-sweeper`: its last release (1.2.0 / 1.3.0.dev) pins optuna < 3,
which no longer works with current SQLAlchemy/alembic RDB storage (docs/design.md). This one is the
ask-and-tell loop on the current API and nothing more:

* the search space comes from Hydra's own override grammar (`interval`, `tag(log, ...)`,
  `tag(int, ...)`, `choice`, `range`), parsed with Hydra's parser, so `hparams_search/*.yaml` reads like Hydra's;
* each batch of `n_jobs` trials goes to whatever launcher is configured (basic, joblib, submitit),
  with `hydra.job.num` = the trial number, so a resumed study never reuses an output folder;
* a job's return value is the objective; an exception, None or NaN marks the trial FAIL
  (the sweep goes on, as Optuna's own `catch` does);
* the study is created with `load_if_exists=True`: an RDB `storage` makes it persistent and resumable.
"""
from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any, List, Optional

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, Override, RangeSweep
from hydra.core.plugins import Plugins
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)

SAMPLERS = ("tpe", "random", "cmaes", "qmc")


def distribution(override: Override):
    """An optuna distribution for one swept key (or None for a plain fixed value)."""
    import optuna.distributions as D

    value = override.value()
    key = override.get_key_element()
    if isinstance(value, ChoiceSweep):
        choices = [c for c in override.sweep_iterator(transformer=lambda x: x)]
        return D.CategoricalDistribution(choices)
    if isinstance(value, RangeSweep):
        choices = list(override.sweep_iterator(transformer=lambda x: x))
        return D.CategoricalDistribution(choices)
    if isinstance(value, IntervalSweep):
        log_scale = "log" in value.tags
        if "int" in value.tags:  # Hydra's interval() always yields floats
            return D.IntDistribution(int(value.start), int(value.end), log=log_scale)
        return D.FloatDistribution(float(value.start), float(value.end), log=log_scale)
    if override.is_sweep_override():
        raise ValueError(f"hydra.sweeper.params.{key}: unsupported sweep {override.input_line!r}; "
                         "use interval(a,b), tag(log,interval(a,b)), choice(x,y,...) or range(a,b)")
    return None


def make_sampler(name: str, seed: Optional[int]):
    import optuna

    samplers = {"tpe": optuna.samplers.TPESampler, "random": optuna.samplers.RandomSampler,
                "cmaes": optuna.samplers.CmaEsSampler, "qmc": optuna.samplers.QMCSampler}
    if name not in samplers:
        raise ValueError(f"hydra.sweeper.sampler={name!r}: expected one of {', '.join(SAMPLERS)}")
    return samplers[name](seed=seed)


def objective_value(job_return) -> float | None:
    """The job's return value as a float, or None when the job failed or returned nothing usable."""
    try:
        value = job_return.return_value
    except Exception as err:  # the job raised: Hydra re-raises it here
        log.warning("trial job %s failed: %s", getattr(job_return, "overrides", "?"), err)
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        log.warning("trial job returned %r, not a number: marked failed", value)
        return None
    return number if math.isfinite(number) else None


class OptunaSweeper(Sweeper):
    def __init__(self, direction: str = "minimize", study_name: str = "cxrssl", storage: Optional[str] = None,
                 n_trials: int = 10, n_jobs: int = 1, sampler: str = "tpe", seed: Optional[int] = None,
                 params: Optional[dict] = None) -> None:
        if direction not in ("minimize", "maximize"):
            raise ValueError(f"hydra.sweeper.direction={direction!r}: expected minimize or maximize")
        if n_trials < 1 or n_jobs < 1:
            raise ValueError(f"hydra.sweeper: n_trials ({n_trials}) and n_jobs ({n_jobs}) must be >= 1")
        self.direction, self.study_name, self.storage = direction, study_name, storage
        self.n_trials, self.n_jobs, self.sampler_name, self.seed = n_trials, n_jobs, sampler, seed
        self.params = dict(params or {})
        self.config: Optional[DictConfig] = None
        self.launcher = None
        self.hydra_context: Optional[HydraContext] = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.hydra_context, self.config = hydra_context, config
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config)

    def _space(self, arguments: List[str]) -> tuple[dict, list[str]]:
        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        lines = [f"{k}={v}" for k, v in self.params.items()] + list(arguments)
        space, fixed = {}, []
        for override in parser.parse_overrides(lines):
            dist = distribution(override)
            if dist is None:
                fixed.append(override.input_line)
            else:
                space[override.get_key_element()] = dist
        if not space:
            raise ValueError("hydra/sweeper=cxrssl_optuna has nothing to search: give hydra.sweeper.params "
                             "(e.g. hparams_search=pretrain_optuna) or sweep a key on the command line, "
                             "e.g. 'optimizer.lr=tag(log,interval(1e-5,1e-2))'")
        return space, fixed

    def sweep(self, arguments: List[str]) -> Any:
        import optuna

        assert self.config is not None and self.launcher is not None
        space, fixed = self._space(arguments)
        study = optuna.create_study(study_name=self.study_name, storage=self.storage, direction=self.direction,
                                    sampler=make_sampler(self.sampler_name, self.seed), load_if_exists=True)
        sweep_dir = Path(self.config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        log.info("Optuna study %r (%s, %s) with %d earlier trials; searching %s",
                 self.study_name, self.storage or "in memory", self.direction, len(study.trials), ", ".join(space))
        returns, done = [], 0
        while done < self.n_trials:
            trials = [study.ask(space) for _ in range(min(self.n_jobs, self.n_trials - done))]
            batch = [[*fixed, *(f"{k}={_override_value(v)}" for k, v in t.params.items())] for t in trials]
            self.validate_batch_is_legal(batch)
            # One launch per trial number keeps job.num == trial.number (unique across resumes) even
            # when a resumed study's numbers are not contiguous with this launch's.
            results = []
            for start, group in _contiguous(trials, batch):
                results.extend(self.launcher.launch(group, initial_job_idx=start))
            for trial, result in zip(trials, results):
                value = objective_value(result)
                if value is None:
                    study.tell(trial, state=optuna.trial.TrialState.FAIL)
                else:
                    study.tell(trial, value)
            returns.append(results)
            done += len(trials)
        self._write_best(study, sweep_dir)
        return returns

    def _write_best(self, study, sweep_dir: Path) -> None:
        import optuna

        complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
        if not complete:
            log.warning("Optuna study %r: no trial completed", self.study_name)
            return
        best = study.best_trial
        summary = {"study_name": self.study_name, "storage": self.storage, "direction": self.direction,
                   "n_trials": len(study.trials), "n_complete": len(complete),
                   "best_trial": best.number, "best_value": best.value, "best_params": best.params}
        OmegaConf.save(OmegaConf.create(summary), sweep_dir / "optimization_results.yaml")
        log.info("Best trial %d: value %s with %s", best.number, best.value, best.params)


def _override_value(value: Any) -> str:
    """A trial value written back as a Hydra override value (floats kept exact, strings as given)."""
    if isinstance(value, float):
        return repr(value)
    return str(value)


def _contiguous(trials, batch):
    """Group (trial, overrides) into runs of consecutive trial numbers: [(first_number, [overrides...])]."""
    groups: list[tuple[int, list]] = []
    for trial, overrides in zip(trials, batch):
        if groups and groups[-1][0] + len(groups[-1][1]) == trial.number:
            groups[-1][1].append(overrides)
        else:
            groups.append((trial.number, [overrides]))
    return groups
