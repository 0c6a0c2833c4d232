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
import os
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Mapping

from cxrssl.sweeps import (
    PARENT_RUN_TAG,
    SWEEP_ID_TAG,
    SWEEP_JOB_TAG,
    SweepInfo,
    TrackingUnavailable,
    artifact_location_for,
    child_run_name,
    get_or_create_experiment,
    get_or_create_sweep_parent,
    original_cwd,
    resolve_run_artifact,
    sqlite_db_path,
    store_lock,
    sweep_info_from_hydra,
    update_sweep_parent,
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


def resolve_tracking_uri(uri: str, base_dir: Path) -> str:
    """Make a tracking URI independent of later ``cd``/Hydra run dirs.

    ``sqlite:///mlflow.db`` (relative) -> ``sqlite:////<base_dir>/mlflow.db`` (absolute, four
    slashes); http(s) and database URIs are returned unchanged; file stores are refused.
    """
    uri = str(uri).strip()
    if uri.startswith(("http://", "https://")):
        return uri
    if uri.startswith("sqlite:"):
        if not uri.startswith("sqlite:///") or uri.split("?")[0] in ("sqlite:///", "sqlite:///:memory:"):
            raise ValueError(
                f"mlflow.tracking_uri={uri!r} is not a sqlite file URI; runs in memory would be lost. "
                "Use e.g. mlflow.tracking_uri=sqlite:///mlflow.db"
            )
        path_part, sep, query = uri[len("sqlite:///") :].partition("?")
        db_path = Path(path_part).expanduser()
        if not db_path.is_absolute():
            db_path = Path(base_dir) / db_path
        return f"sqlite:///{db_path.resolve().as_posix()}{sep}{query}"
    scheme = uri.split(":", 1)[0] if ":" in uri else ""
    if not uri or scheme in ("", "file") or len(scheme) == 1:  # len 1: a Windows drive letter
        raise ValueError(
            f"mlflow.tracking_uri={uri!r} is a file store (a plain directory such as ./mlruns). "
            "MLflow >= 3.13 refuses file stores; use a sqlite database instead, e.g. "
            "mlflow.tracking_uri=sqlite:///mlflow.db (artifacts then go to mlartifacts/ beside it), "
            "or an http(s):// tracking server."
        )
    return uri


def check_reachable(uri: str, timeout_s: float = 10.0) -> None:
    """Fail fast with :class:`TrackingUnavailable` if the store at ``uri`` cannot be used."""
    advice = (
        "Start a server (`mlflow server --host 127.0.0.1 --port 5000 --backend-store-uri "
        "sqlite:///mlflow.db`), or log locally with mlflow.tracking_uri=sqlite:///mlflow.db, "
        "or turn tracking off with mlflow.enabled=false."
    )
    from cxrssl.tracking_security import redact_uri

    db_path, shown = sqlite_db_path(uri), redact_uri(uri)  # never print user:password@
    if db_path is not None:
        try:
            db_path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise TrackingUnavailable(f"cannot create the folder of tracking database {shown}: {err}. {advice}") from err
        if not os.access(db_path.parent, os.W_OK):
            raise TrackingUnavailable(f"folder of tracking database {shown} is not writable. {advice}")
        return
    if not uri.startswith(("http://", "https://")):
        return
    base = uri.rstrip("/")
    status: int | None = None
    for endpoint in ("/health", "/api/2.0/mlflow/experiments/search?max_results=1"):
        try:
            with urllib.request.urlopen(base + endpoint, timeout=timeout_s) as response:
                if response.status == 200:
                    return
                status = response.status
        except urllib.error.HTTPError as err:  # the server answered, but not with 200
            status = err.code
        except (urllib.error.URLError, OSError) as err:
            reason = getattr(err, "reason", err)
            raise TrackingUnavailable(
                f"MLflow tracking server {shown} is not reachable ({reason}; timeout {timeout_s:g} s). {advice}"
            ) from err
    if status in (401, 403):
        raise TrackingUnavailable(
            f"MLflow tracking server {shown} refused access (HTTP {status}); set MLFLOW_TRACKING_USERNAME/"
            "MLFLOW_TRACKING_PASSWORD or MLFLOW_TRACKING_TOKEN."
        )
    raise TrackingUnavailable(
        f"{shown} answered HTTP {status} on /health and the experiments API; is it an MLflow tracking server? {advice}"
    )


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

    def end(self, status: str = "FINISHED") -> None: ...

    def __enter__(self) -> NullTracker:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.end()


class Tracker:
    """One live MLflow run. Ends FAILED on an exception and KILLED on Ctrl-C when used as a context manager."""

    def __init__(
        self,
        client: MlflowClient,
        run_id: str,
        experiment_id: str,
        tracking_uri: str,
        sweep: SweepInfo | None = None,
        parent_run_id: str | None = None,
    ) -> None:
        self.client = client
        self.run_id = run_id
        self.experiment_id = experiment_id
        self.tracking_uri = tracking_uri
        self.sweep = sweep
        self.parent_run_id = parent_run_id
        self._ended = False
        self._warned_non_finite: set[str] = set()

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Log params; on a resumed run, keys already logged keep their first value (MLflow params are immutable)."""
        from mlflow.entities import Param

        existing = self.client.get_run(self.run_id).data.params
        values = {k: str(v)[:MAX_PARAM_VALUE_LENGTH] for k, v in params.items()}
        changed = sorted(k for k, v in values.items() if k in existing and existing[k] != v)
        if changed:
            log.warning("MLflow run %s keeps the earlier values of params %s", self.run_id, ", ".join(changed))
        new = [Param(k, v) for k, v in values.items() if k not in existing]
        for chunk in _chunks(new, PARAMS_PER_BATCH):
            self.client.log_batch(self.run_id, params=chunk)

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        """Log one step of metrics in batched requests; NaN/inf values are skipped with one warning per key."""
        from mlflow.entities import Metric

        timestamp = _now_ms()
        entries = []
        for key, value in metrics.items():
            number = float(value)
            if not math.isfinite(number):
                if key not in self._warned_non_finite:
                    self._warned_non_finite.add(key)
                    log.warning("metric %r is %s at step %d; not logged (warned once per metric)", key, number, step)
                continue
            entries.append(Metric(key, number, timestamp, int(step)))
        for chunk in _chunks(entries, METRICS_PER_BATCH):
            self.client.log_batch(self.run_id, metrics=chunk)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        if not Path(path).is_file():
            raise FileNotFoundError(f"cannot log artifact {path}: no such file")
        self.client.log_artifact(self.run_id, str(path), artifact_path)

    def log_artifacts(self, directory: str | Path, artifact_path: str | None = None) -> None:
        if not Path(directory).is_dir():
            raise FileNotFoundError(f"cannot log artifacts from {directory}: no such directory")
        self.client.log_artifacts(self.run_id, str(directory), artifact_path)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        from mlflow.entities import RunTag

        entries = [RunTag(str(k), str(v)[:MAX_TAG_VALUE_LENGTH]) for k, v in tags.items()]
        for chunk in _chunks(entries, PARAMS_PER_BATCH):
            self.client.log_batch(self.run_id, tags=chunk)

    def end(self, status: str = "FINISHED") -> None:
        """Mark the run terminated (once; later calls are ignored)."""
        if status not in RUN_STATUSES:
            raise ValueError(f"run status must be one of {RUN_STATUSES}, got {status!r}")
        if self._ended:
            return
        self._ended = True
        self.client.set_terminated(self.run_id, status=status)

    def __enter__(self) -> Tracker:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is None:
            self.end("FINISHED")
        elif issubclass(exc_type, KeyboardInterrupt):
            self.end("KILLED")
        else:
            self.end("FAILED")


def _git_commit(cwd: Path) -> str | None:
    try:
        result = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=5, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip() or None


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
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from cxrssl.tracking_security import open_store, redact_uri

    client = open_store(uri)  # sqlite: created 0600 and migrated under the store lock
    all_tags: dict[str, Any] = {"command": command, **dict(mlflow_cfg.get("tags") or {}), **dict(tags)}
    commit = _git_commit(Path.cwd())
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
