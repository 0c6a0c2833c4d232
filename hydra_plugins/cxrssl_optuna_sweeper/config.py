"""The sweeper's structured config, registered as `hydra/sweeper: cxrssl_optuna`.

No `from __future__ import annotations`: Hydra executes plugin modules outside sys.modules while
scanning, and dataclasses then cannot resolve string annotations."""

from dataclasses import dataclass, field
from typing import Any, Dict, Optional

from hydra.core.config_store import ConfigStore


@dataclass
class CxrsslOptunaSweeperConf:
    _target_: str = "hydra_plugins.cxrssl_optuna_sweeper.optuna_sweeper.OptunaSweeper"
    # What the task function returns (pretrain: best val loss → minimize; finetune: best val AUROC → maximize).
    direction: str = "minimize"
    # The study: with an RDB `storage` (e.g. sqlite:///optuna.db) it persists and a rerun with the
    # same study_name continues it (adds n_trials more).
    study_name: str = "cxrssl"
    storage: Optional[str] = None
    # Trials to run in this invocation, launched n_jobs at a time (hydra/launcher=joblib runs them in parallel).
    n_trials: int = 10
    n_jobs: int = 1
    # tpe | random | cmaes | grid-free samplers of optuna.samplers; seed makes the proposals repeatable.
    sampler: str = "tpe"
    seed: Optional[int] = None
    # Search space, Hydra sweep syntax per key: interval(a,b), tag(log,interval(a,b)), tag(int,interval(a,b)),
    # choice(x,y), range(a,b).
    # Plain values are fixed overrides. Command-line sweeps (key=choice(..)) are added to it.
    params: Dict[str, Any] = field(default_factory=dict)


ConfigStore.instance().store(group="hydra/sweeper", name="cxrssl_optuna", node=CxrsslOptunaSweeperConf,
                             provider="cxrssl")
