"""Run a command in this process from the real configs (Hydra compose), as `cxrssl <command>` would.

For tests (lightning-hydra-template style) and for scripts that chain many runs (the comparison
experiment) without paying Python start-up each time. `sweep_dir` makes the runs one MLflow sweep.
"""
from __future__ import annotations

from importlib import import_module
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict


def compose_config(command: str, overrides: list[str] | tuple[str, ...] = (), run_dir: str | Path | None = None,
                   sweep_dir: str | Path | None = None, job_num: int = 0) -> DictConfig:
    """The composed config with `hydra.*` filled in enough for commands (output dir, sweep)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.types import RunMode

    from cxrssl.cli import config_dir

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose(config_name=command, overrides=list(overrides), return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(Path(run_dir).resolve()) if run_dir else str(Path.cwd())
        cfg.hydra.runtime.cwd = str(Path.cwd())
        cfg.hydra.job.num = job_num
        cfg.hydra.overrides.task = list(overrides)
        if sweep_dir is not None:
            cfg.hydra.mode = RunMode.MULTIRUN
            cfg.hydra.sweep.dir = str(sweep_dir)
        else:
            cfg.hydra.mode = RunMode.RUN
    return cfg


def run_command(command: str, overrides: list[str] | tuple[str, ...] = (), run_dir: str | Path | None = None,
                sweep_dir: str | Path | None = None, job_num: int = 0) -> tuple[Any, dict]:
    """Compose, run, and return (the command's return value, its summary.json as a dict)."""
    import json

    from hydra.core.hydra_config import HydraConfig

    cfg = compose_config(command, overrides, run_dir, sweep_dir, job_num)
    HydraConfig.instance().set_config(cfg)
    job_cfg = OmegaConf.masked_copy(cfg, [k for k in cfg.keys() if k != "hydra"])
    try:
        result = import_module(f"cxrssl.commands.{command}").run(job_cfg)
    finally:
        HydraConfig.instance().cfg = None  # leave no Hydra state behind for later callers
    out = Path(cfg.hydra.runtime.output_dir)
    summary_path = out / "summary.json"
    return result, json.loads(summary_path.read_text()) if summary_path.exists() else {}
