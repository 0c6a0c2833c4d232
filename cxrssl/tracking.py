"""MLflow tracking behind a small interface (design §7).

Commands call :func:`start_tracking` once, at start, before any training: it resolves and
checks the store, so a wrong URI fails in seconds rather than after the first epoch. Only
rank 0 gets a real :class:`Tracker`; every other rank and ``mlflow.enabled=false`` get a
:class:`NullTracker` with the same methods.

Everything goes through an ``MlflowClient`` bound to an explicit URI (no fluent global
state), so several runs may be live in one process (multirun, tests). mlflow itself is only
imported inside functions: importing it costs ~2 s and ``cxrssl --help`` must stay fast.
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Callable, Mapping

from cxrssl.errors import one_line
from cxrssl.sweeps import (
    PARENT_RUN_TAG,
    SWEEP_ID_TAG,
    SWEEP_JOB_TAG,
    SweepInfo,
    artifact_location_for,
    child_run_name,
    get_or_create_experiment,
    get_or_create_sweep_parent,
    resolve_run_artifact,
    sweep_info_from_hydra,
    update_sweep_parent,
)
from cxrssl.tracking_offline import OFFLINE_FILE, OfflineLog, upload_command
from cxrssl.tracking_store import (
    TrackingUnavailable,
    check_reachable,
    original_cwd,
    resolve_tracking_uri,
    sqlite_db_path,
    git_commit,
    hydra_run_dir,
    limit_http_retries,
    store_lock,
)

if TYPE_CHECKING:  # pragma: no cover
    from mlflow import MlflowClient

__all__ = [
    "NullTracker", "SweepInfo", "Tracker", "TrackingUnavailable", "check_reachable", "flatten_config",
    "resolve_run_artifact", "resolve_tracking_uri", "start_tracking", "sweep_info_from_hydra",
    "update_sweep_parent",
]

log = logging.getLogger(__name__)

MAX_PARAM_VALUE_LENGTH = 6000  # mlflow.utils.validation.MAX_PARAM_VAL_LENGTH (not imported: slow)
MAX_TAG_VALUE_LENGTH = 8000  # mlflow.utils.validation.MAX_TAG_VAL_LENGTH
PARAMS_PER_BATCH = 100
METRICS_PER_BATCH = 1000
RUN_STATUSES = ("FINISHED", "FAILED", "KILLED")


def _scalar_to_str(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return json.dumps(list(value), default=str)
    if value is None or isinstance(value, bool):
        return json.dumps(value)  # YAML-style null / true / false, pasteable as a Hydra override
    return str(value)


def flatten_config(cfg: Any) -> dict[str, str]:
    """Flatten a (Dict)Config to ``{"data.batch_size": "32", ...}`` for MLflow params.

    Skips the ``hydra`` node, renders lists as JSON strings and truncates values to MLflow's
    param length limit. Interpolations are resolved when possible, left as written otherwise.
    """
    from omegaconf import DictConfig, OmegaConf

    if isinstance(cfg, DictConfig):
        try:
            container = OmegaConf.to_container(cfg, resolve=True)
        except Exception:  # e.g. ${hydra:...} outside a Hydra app
            container = OmegaConf.to_container(cfg, resolve=False)
    else:
        container = dict(cfg)
    flat: dict[str, str] = {}

    def visit(node: Mapping[Any, Any], prefix: str) -> None:
        for key, value in node.items():
            if not prefix and key == "hydra":
                continue
            name = f"{prefix}{key}"
            if isinstance(value, Mapping) and value:
                visit(value, f"{name}.")
            else:
                text = "{}" if isinstance(value, Mapping) else _scalar_to_str(value)
                flat[name] = text[:MAX_PARAM_VALUE_LENGTH]

    visit(container, "")  # type: ignore[arg-type]
    return flat


def _now_ms() -> int:
    return int(time.time() * 1000)


def _chunks(items: list[Any], size: int) -> list[list[Any]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


class NullTracker:
    """Does nothing, with :class:`Tracker`'s interface (non-zero ranks, ``mlflow.enabled=false``)."""

    run_id: str | None = None
    experiment_id: str | None = None
    parent_run_id: str | None = None
    tracking_uri: str | None = None
    sweep: SweepInfo | None = None
    client: Any = None

    def log_params(self, params: Mapping[str, Any]) -> None: ...

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None: ...

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None: ...

    def log_artifacts(self, directory: str | Path, artifact_path: str | None = None) -> None: ...

    def set_tags(self, tags: Mapping[str, Any]) -> None: ...

    def end(self, status: str = "FINISHED", error: BaseException | str | None = None) -> None: ...

    def tracking_status(self) -> dict[str, Any]:
        return {"status": "disabled"}

    def __enter__(self) -> NullTracker:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.end()


class Tracker:
    """One live MLflow run. Ends FAILED (with an ``error`` tag) on an exception and KILLED on Ctrl-C
    when used as a context manager.

    Tracking never costs the training: the first call the store refuses (server gone, network
    down, database locked) switches the tracker offline for the rest of the run, and that call
    and every later one go to ``<run dir>/mlflow_offline.jsonl`` (:mod:`cxrssl.tracking_offline`)
    for a later ``python -m cxrssl.tracking_offline <run dir>``.
    """

    def __init__(
        self,
        client: MlflowClient,
        run_id: str,
        experiment_id: str,
        tracking_uri: str,
        sweep: SweepInfo | None = None,
        parent_run_id: str | None = None,
        run_dir: Path | None = None,
    ) -> None:
        self.client = client
        self.run_id = run_id
        self.experiment_id = experiment_id
        self.tracking_uri = tracking_uri
        self.sweep = sweep
        self.parent_run_id = parent_run_id
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.offline: OfflineLog | None = None
        self._ended = False
        self._warned_non_finite: set[str] = set()

    def _send(self, record: dict[str, Any], call: Callable[[], None]) -> None:
        """Run ``call`` against the store; once any call failed, append ``record`` to the offline file."""
        if self.offline is None:
            try:
                call()
                return
            except Exception as error:  # whatever the store raised, training goes on
                self._go_offline(error)
        assert self.offline is not None
        self.offline.append(record)

    def _go_offline(self, error: BaseException) -> None:
        run_dir = self.run_dir or hydra_run_dir()
        reason = f"{type(error).__name__}: {one_line(error)}"
        self.offline = OfflineLog(run_dir / OFFLINE_FILE, run_id=self.run_id, experiment_id=self.experiment_id,
                                  tracking_uri=self.tracking_uri, reason=reason)
        log.warning("MLflow tracking at %s failed (%s); training goes on, unsent data is kept in %s "
                    "(re-upload later: %s)", self.tracking_uri, reason, self.offline.path, upload_command(run_dir))

    def tracking_status(self) -> dict[str, Any]:
        """For ``summary.json``: ``{"status": "ok"}`` or what failed and how to re-upload."""
        return self.offline.status() if self.offline is not None else {"status": "ok"}

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Log params; on a resumed run, keys already logged keep their first value (MLflow params are immutable)."""
        values = {k: str(v)[:MAX_PARAM_VALUE_LENGTH] for k, v in params.items()}

        def call() -> None:
            from mlflow.entities import Param

            existing = self.client.get_run(self.run_id).data.params
            changed = sorted(k for k, v in values.items() if k in existing and existing[k] != v)
            if changed:
                log.warning("MLflow run %s keeps the earlier values of params %s", self.run_id, ", ".join(changed))
            new = [Param(k, v) for k, v in values.items() if k not in existing]
            for chunk in _chunks(new, PARAMS_PER_BATCH):
                self.client.log_batch(self.run_id, params=chunk)

        self._send({"op": "params", "params": values}, call)

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        """Log one step of metrics in batched requests; NaN/inf values are skipped with one warning per key."""
        timestamp = _now_ms()
        values: dict[str, float] = {}
        for key, value in metrics.items():
            number = float(value)
            if not math.isfinite(number):
                if key not in self._warned_non_finite:
                    self._warned_non_finite.add(key)
                    log.warning("metric %r is %s at step %d; not logged (warned once per metric)", key, number, step)
                continue
            values[key] = number

        def call() -> None:
            from mlflow.entities import Metric

            entries = [Metric(k, v, timestamp, int(step)) for k, v in values.items()]
            for chunk in _chunks(entries, METRICS_PER_BATCH):
                self.client.log_batch(self.run_id, metrics=chunk)

        self._send({"op": "metrics", "metrics": values, "step": int(step), "timestamp": timestamp}, call)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        if not Path(path).is_file():
            raise FileNotFoundError(f"cannot log artifact {path}: no such file")
        self._send({"op": "artifact", "path": str(Path(path).resolve()), "artifact_path": artifact_path},
                   lambda: self.client.log_artifact(self.run_id, str(path), artifact_path))

    def log_artifacts(self, directory: str | Path, artifact_path: str | None = None) -> None:
        if not Path(directory).is_dir():
            raise FileNotFoundError(f"cannot log artifacts from {directory}: no such directory")
        self._send({"op": "artifacts", "path": str(Path(directory).resolve()), "artifact_path": artifact_path},
                   lambda: self.client.log_artifacts(self.run_id, str(directory), artifact_path))

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        values = {str(k): str(v)[:MAX_TAG_VALUE_LENGTH] for k, v in tags.items()}

        def call() -> None:
            from mlflow.entities import RunTag

            for chunk in _chunks([RunTag(k, v) for k, v in values.items()], PARAMS_PER_BATCH):
                self.client.log_batch(self.run_id, tags=chunk)

        self._send({"op": "tags", "tags": values}, call)

    def end(self, status: str = "FINISHED", error: BaseException | str | None = None) -> None:
        """Mark the run terminated (once; later calls are ignored); ``error`` becomes the ``error`` tag."""
        if status not in RUN_STATUSES:
            raise ValueError(f"run status must be one of {RUN_STATUSES}, got {status!r}")
        if self._ended:
            return
        self._ended = True
        if error is not None:
            message = error if isinstance(error, str) else f"{type(error).__name__}: {one_line(error)}"
            self.set_tags({"error": message})
        self._send({"op": "end", "status": status},
                   lambda: self.client.set_terminated(self.run_id, status=status))

    def __enter__(self) -> Tracker:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is None:
            self.end("FINISHED")
        elif issubclass(exc_type, KeyboardInterrupt):
            self.end("KILLED", error="interrupted (Ctrl-C)")
        else:
            self.end("FAILED", error=exc)


def start_tracking(
    mlflow_cfg: Any,
    *,
    command: str,
    tags: Mapping[str, Any],
    params: Mapping[str, Any],
    run_name: str | None,
    sweep: SweepInfo | None = None,
    resume_run_id: str | None = None,
    base_dir: Path | None = None,
    rank: int = 0,
) -> Tracker | NullTracker:
    """Open (or resume) the MLflow run of one command; see the module docstring.

    ``run_name`` None falls back to ``mlflow.run_name``, then to ``<command>-<pretext>-<backbone>``
    (from ``tags``); in a sweep the job's overrides are appended and the run is nested under
    the sweep's parent run. ``base_dir`` (default: the original working directory) anchors a
    relative sqlite path.
    """
    if rank != 0 or not mlflow_cfg.get("enabled", True):
        return NullTracker()
    base_dir = Path(base_dir) if base_dir is not None else original_cwd()
    uri = resolve_tracking_uri(mlflow_cfg.get("tracking_uri", "sqlite:///mlflow.db"), base_dir)
    check_reachable(uri, float(mlflow_cfg.get("connect_timeout_s", 10)))
    limit_http_retries(uri, mlflow_cfg)
    from mlflow.exceptions import MlflowException

    from cxrssl.tracking_security import open_store, redact_uri

    client = open_store(uri)  # sqlite: created 0600 and migrated under the store lock
    all_tags: dict[str, Any] = {"command": command, **dict(mlflow_cfg.get("tags") or {}), **dict(tags)}
    commit = git_commit(Path.cwd())
    if commit:
        all_tags.update({"git_commit": commit, "mlflow.source.git.commit": commit})
    base_name = run_name or mlflow_cfg.get("run_name") or "-".join(
        str(part) for part in (command, tags.get("pretext"), tags.get("backbone")) if part
    )
    with store_lock(sqlite_db_path(uri)):
        experiment_id = get_or_create_experiment(
            client, str(mlflow_cfg.get("experiment_name", "cxrssl")), artifact_location_for(mlflow_cfg.get("artifact_location"), uri, base_dir), uri
        )
        parent_id = get_or_create_sweep_parent(client, experiment_id, sweep) if sweep is not None else None
    if sweep is not None:
        all_tags.update({SWEEP_ID_TAG: sweep.sweep_id, SWEEP_JOB_TAG: sweep.job_num, PARENT_RUN_TAG: parent_id})

    run_id = None
    if resume_run_id:
        try:
            previous = client.get_run(resume_run_id)
        except MlflowException:
            previous = None
        if previous is not None and previous.info.lifecycle_stage == "active":
            run_id, experiment_id = previous.info.run_id, previous.info.experiment_id
            client.update_run(run_id, status="RUNNING")
        else:
            log.warning("MLflow run %s not found in %s; starting a new run", resume_run_id, redact_uri(uri))
            all_tags["resumed_from"] = resume_run_id
    if run_id is None:
        run_id = client.create_run(experiment_id, run_name=child_run_name(base_name, sweep)).info.run_id
    tracker = Tracker(client, run_id, experiment_id, uri, sweep=sweep, parent_run_id=parent_id)
    try:
        tracker.set_tags(all_tags)
        tracker.log_params(params)
    except BaseException:
        tracker.end("FAILED")
        raise
    log.info("MLflow run %s in experiment %s at %s", run_id, experiment_id, redact_uri(uri))
    return tracker
