"""Start and finish of every command: output dir, MLflow run, summary.json, the closing lines."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf


def run_dir_from_hydra() -> Path:
    """The Hydra output dir of this job (respects hydra.run.dir / sweep dirs)."""
    from hydra.core.hydra_config import HydraConfig

    path = Path(HydraConfig.get().runtime.output_dir)
    path.mkdir(parents=True, exist_ok=True)
    return path


def start_run_tracking(cfg: DictConfig, tags: dict[str, Any], resume_run_id: str | None = None):
    """Open the MLflow run before any work, so an unreachable server fails at once."""
    from cxrssl.sweeps import sweep_info_from_hydra
    from cxrssl.tracking import flatten_config, start_tracking

    return start_tracking(cfg.mlflow, command=str(cfg.command), tags=tags, params=flatten_config(cfg),
                          run_name=None, sweep=sweep_info_from_hydra(), resume_run_id=resume_run_id)


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if hasattr(value, "item") and callable(value.item):
        return _jsonable(value.item())
    return value


def write_summary(run_dir: Path, summary: dict[str, Any]) -> Path:
    path = Path(run_dir) / "summary.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(_jsonable(summary), indent=2, sort_keys=False) + "\n")
    tmp.replace(path)
    return path


def finish_run(cfg: DictConfig, tracker, run_dir: Path, summary: dict[str, Any], headline: list[str],
               artifacts: list[tuple[str, Path]] | None = None, monitor: str | None = None,
               monitor_mode: str | None = None) -> dict[str, Any]:
    """Write config + summary.json, log them (and `artifacts`: (MLflow folder, file or dir) pairs),
    print the closing lines."""
    config_path = Path(run_dir) / "config.yaml"
    config_path.write_text(OmegaConf.to_yaml(cfg, resolve=True))
    summary = {**summary, "command": str(cfg.command), "run_dir": str(run_dir),
               "config": str(config_path), "mlflow_run_id": tracker.run_id,
               "tracking_uri": getattr(tracker, "tracking_uri", None)}
    summary_path = write_summary(run_dir, summary)
    tracker.log_artifact(config_path)
    for artifact_dir, path in artifacts or []:
        if Path(path).is_file():
            tracker.log_artifact(path, artifact_dir or None)
        elif Path(path).is_dir():
            tracker.log_artifacts(path, artifact_dir or None)
    tracker.log_artifact(summary_path)
    if monitor and summary.get("best_value") is not None:
        # The run's best epoch, not its last: what a sweep's parent ranks its children by.
        tracker.log_metrics({f"best/{monitor}": float(summary["best_value"])}, step=int(summary.get("best_epoch") or 0))
        if getattr(tracker, "sweep", None) is not None:
            from cxrssl.sweeps import update_sweep_parent

            update_sweep_parent(tracker, f"best/{monitor}", monitor_mode or "min")
    print("\n".join(["", *headline, f"outputs:     {run_dir}", f"summary:     {summary_path}",
                     f"mlflow run:  {tracker.run_id or 'disabled'}"
                     + (f"  ({summary['tracking_uri']})" if summary.get("tracking_uri") else "")]), flush=True)
    return summary
