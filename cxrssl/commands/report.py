"""Start and finish of every command: output dir, MLflow run, summary.json, the closing lines."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from cxrssl.common import jsonable as _jsonable


def run_dir_from_hydra(cfg: DictConfig | None = None) -> Path:
    """The Hydra output dir of this job (respects hydra.run.dir / sweep dirs), claimed for this run:
    a folder of another run, or one with files cxrssl did not write, is refused unless `resume=`
    (see cxrssl.commands.run_dirs). Credentials in `.hydra/*.yaml` tracking URIs are removed."""
    from hydra.core.hydra_config import HydraConfig

    from cxrssl.commands.run_dirs import claim_run_dir
    from cxrssl.tracking_security import scrub_hydra_files

    from cxrssl.engine.distributed import broadcast_object, env_from_torchrun

    if not env_from_torchrun().is_main:  # torchrun: rank 0 claims the folder, the others get its path
        return broadcast_object(None)
    hydra_cfg = HydraConfig.get()
    resume = cfg.get("resume") if cfg is not None else next(
        (o.split("=", 1)[1] for o in hydra_cfg.overrides.task if o.lstrip("+~").startswith("resume=")), None)
    path = claim_run_dir(Path(hydra_cfg.runtime.output_dir), resume, job_name=hydra_cfg.job.get("name"))
    scrub_hydra_files(path)
    return broadcast_object(path)  # torchrun: rank 0's dir (each rank's own ${now:} would differ)


def start_run_tracking(cfg: DictConfig, tags: dict[str, Any], resume_run_id: str | None = None):
    """Open the MLflow run before any work, so an unreachable server fails at once."""
    from cxrssl.sweeps import sweep_info_from_hydra
    from cxrssl.tracking import flatten_config, start_tracking
    from cxrssl.engine.distributed import env_from_torchrun

    from cxrssl.tracking_security import scrub_params

    tags = scrub_params({k: str(v) for k, v in tags.items()}, cfg)  # credentials; paths if mlflow.redact
    return start_tracking(cfg.mlflow, command=str(cfg.command), tags=tags, params=scrub_params(flatten_config(cfg), cfg),
                          run_name=None, sweep=sweep_info_from_hydra(), resume_run_id=resume_run_id,
                          rank=env_from_torchrun().rank)  # torchrun: only rank 0 logs


def write_summary(run_dir: Path, summary: dict[str, Any]) -> Path:
    from cxrssl.atomic import atomic_write_text

    return atomic_write_text(Path(run_dir) / "summary.json", json.dumps(_jsonable(summary), indent=2) + "\n")


def _tracking_status(tracker) -> dict[str, Any]:
    """`{"status": "ok" | "disabled" | "failed", ...}` (see cxrssl.tracking_offline)."""
    return dict(getattr(tracker, "tracking_status", lambda: {"status": "disabled"})())


def _artifact_logger(cfg: DictConfig, tracker):
    """`log(path, folder)`: as is, or with `mlflow.redact=true` CSVs with hashed ids and file names
    only, and text files without absolute paths (see cxrssl.tracking_security)."""
    if not bool(cfg.get("mlflow", {}).get("redact", False)) or tracker.run_id is None:
        return tracker.log_artifact
    import tempfile

    from cxrssl.tracking_security import _strip_abs_paths, redact_csv, store_salt

    salt = store_salt(getattr(tracker, "tracking_uri", None))

    def log(path, folder=None):
        path = Path(path)
        with tempfile.TemporaryDirectory() as tmp:
            target = Path(tmp) / path.name
            if path.suffix.lower() == ".csv":
                redact_csv(path, target, salt)
            elif path.suffix.lower() in (".yaml", ".json", ".md", ".txt", ".html"):
                target.write_text(_strip_abs_paths(path.read_text(errors="replace")))
            else:
                target = path
            tracker.log_artifact(target, folder)
    return log


def finish_run(cfg: DictConfig, tracker, run_dir: Path, summary: dict[str, Any], headline: list[str],
               artifacts: list[tuple[str, Path]] | None = None, monitor: str | None = None,
               monitor_mode: str | None = None) -> dict[str, Any]:
    """Write config + summary.json, log them (and `artifacts`: (MLflow folder, file or dir) pairs),
    print the closing lines."""
    from cxrssl.atomic import atomic_write_text
    from cxrssl.commands.run_dirs import artifact_files, run_started
    from cxrssl.tracking_security import redact_uri, scrub_text

    config_path = atomic_write_text(Path(run_dir) / "config.yaml", scrub_text(OmegaConf.to_yaml(cfg, resolve=True)))
    summary = {**summary, "command": str(cfg.command), "run_dir": str(run_dir),
               "config": str(config_path), "mlflow_run_id": tracker.run_id,
               "tracking_uri": redact_uri(getattr(tracker, "tracking_uri", None)), "tracking": _tracking_status(tracker)}
    summary_path = write_summary(run_dir, summary)
    log = _artifact_logger(cfg, tracker)
    log(config_path)
    for artifact_dir, path in artifacts or []:
        if Path(path).is_file():
            log(path, artifact_dir or None)
        elif Path(path).is_dir():  # the files this run wrote there, one by one: never a store, a link
            for file in artifact_files(path, since=run_started(run_dir)):
                if file not in (config_path, Path(run_dir) / "summary.json"):
                    sub = file.parent.relative_to(path).as_posix()
                    log(file, "/".join(p for p in (artifact_dir, sub) if p and p != ".") or None)
    log(summary_path)
    if monitor and summary.get("best_value") is not None:
        # The run's best epoch, not its last: what a sweep's parent ranks its children by.
        tracker.log_metrics({f"best/{monitor}": float(summary["best_value"])}, step=int(summary.get("best_epoch") or 0))
        if getattr(tracker, "sweep", None) is not None:
            from cxrssl.sweeps import update_sweep_parent

            update_sweep_parent(tracker, f"best/{monitor}", monitor_mode or "min")
    if _tracking_status(tracker) != summary["tracking"]:  # the store failed while we logged
        summary["tracking"] = _tracking_status(tracker)
        write_summary(run_dir, summary)
    if summary["tracking"].get("status") == "failed":
        status = summary["tracking"]
        headline = [*headline, f"tracking:    FAILED ({status['reason']}); training is complete. Unsent data: "
                               f"{status['unsent']}; re-upload with: {status['reupload']}"]
    print("\n".join(["", *headline, f"outputs:     {run_dir}", f"summary:     {summary_path}",
                     f"mlflow run:  {tracker.run_id or 'disabled'}"
                     + (f"  ({summary['tracking_uri']})" if summary.get("tracking_uri") else "")]), flush=True)
    return summary
