"""Where runs live in the MLflow store: experiments, sweep parents, references to earlier runs.

Split from :mod:`cxrssl.tracking` (which re-exports the public names) to keep both small; both
import the store basics from :mod:`cxrssl.tracking_store`, never each other.

Every job of a ``--multirun`` sweep becomes a child run nested under a parent run named
``sweep-<sweep_id>``; all of them carry the tag ``sweep_id``. After each child ends,
:func:`update_sweep_parent` writes the best child so far onto the parent (metric
``best_<monitor>``, tags ``best_run_id`` / ``best_run_name``).

Comparing a sweep in ``mlflow ui --backend-store-uri sqlite:///mlflow.db``:

1. select the experiment (``cxrssl`` by default) in the left panel;
2. either type ``tags.sweep_id = '<sweep_id>'`` in the search box, or expand the
   ``sweep-<sweep_id>`` parent row (the "+" next to it) to list its children;
3. tick the child runs and press **Compare**: the parallel-coordinates / scatter views plot
   the swept parameters against the monitored metric. The parent's ``best_run_id`` tag names
   the winner.

mlflow is imported inside functions only: this module sits on the CLI start-up path.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from cxrssl.errors import ConfigError, InputNotFound
from cxrssl.tracking_store import TrackingUnavailable, original_cwd, resolve_tracking_uri, sqlite_db_path, store_lock

if TYPE_CHECKING:  # pragma: no cover
    from mlflow import MlflowClient

SWEEP_ID_TAG = "sweep_id"
SWEEP_PARENT_TAG = "cxrssl.sweep_parent"
SWEEP_JOB_TAG = "cxrssl.sweep_job"
PARENT_RUN_TAG = "mlflow.parentRunId"
MAX_RUN_NAME_LENGTH = 250


@dataclass(frozen=True)
class SweepInfo:
    """Identity of one job inside a sweep; ``sweep_id`` is shared by all of its jobs."""

    sweep_id: str
    job_num: int
    overrides: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[A-Za-z0-9._-]+", self.sweep_id):
            raise ValueError(
                f"sweep_id {self.sweep_id!r} may only contain letters, digits, '.', '_' and '-' "
                "(it is embedded in MLflow search filters); use sanitize_sweep_id() to build one"
            )


def sanitize_sweep_id(text: str) -> str:
    """Map arbitrary text (e.g. a directory path) to a filter-safe sweep id."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-")
    return cleaned or "sweep"


def sweep_info_from_hydra() -> SweepInfo | None:
    """Return the current Hydra multirun job's :class:`SweepInfo`, or None in RUN mode / outside Hydra.

    The id comes from the last two components of ``hydra.sweep.dir`` (by default
    ``multirun/<date>/<time>`` -> ``<date>_<time>``), so every job of one sweep agrees on it
    without any coordination, including jobs run by parallel launchers in separate processes.
    """
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        hydra_cfg = HydraConfig.get()
    except (ImportError, ValueError):
        return None
    if hydra_cfg.mode != RunMode.MULTIRUN:
        return None
    parts = Path(str(hydra_cfg.sweep.dir)).parts[-2:]
    job_num = hydra_cfg.job.get("num")
    return SweepInfo(
        sweep_id=sanitize_sweep_id("_".join(parts)),
        job_num=int(job_num) if job_num is not None else 0,
        overrides=[str(o) for o in hydra_cfg.overrides.task],
    )


def child_run_name(base_name: str, sweep: SweepInfo | None) -> str:
    """Append the job's overrides to its run name so that children are told apart in the UI."""
    name = base_name
    if sweep is not None and sweep.overrides:
        suffix = " ".join(sweep.overrides)
        if suffix not in name:
            name = f"{name} {suffix}"
    return name[:MAX_RUN_NAME_LENGTH]


def artifact_location_for(configured: str | None, tracking_uri: str, base_dir: Path) -> str | None:
    """Artifact root for a new experiment: ``configured`` if set, else ``mlartifacts/`` beside a sqlite db.

    An absolute ``file://`` URI keeps ``mlflow ui`` (started anywhere) able to show artifacts.
    """
    if configured:
        configured = str(configured)
        if ":" in configured and len(configured.split(":", 1)[0]) > 1:  # has a URI scheme
            return configured
        return (base_dir / Path(configured).expanduser()).resolve().as_uri()
    db_path = sqlite_db_path(tracking_uri)
    return (db_path.parent / "mlartifacts").as_uri() if db_path is not None else None


def get_or_create_experiment(client: MlflowClient, name: str, artifact_location: str | None, uri: str) -> str:
    """Id of experiment ``name``, created with ``artifact_location`` if new (tolerates a concurrent creator)."""
    from mlflow.exceptions import MlflowException

    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        try:
            return client.create_experiment(name, artifact_location=artifact_location)
        except MlflowException:  # another process created it first
            experiment = client.get_experiment_by_name(name)
            if experiment is None:
                raise
    if experiment.lifecycle_stage == "deleted":
        raise TrackingUnavailable(
            f"MLflow experiment {name!r} in {uri} is deleted; restore it (`mlflow experiments restore "
            f"--experiment-id {experiment.experiment_id}`) or set another mlflow.experiment_name"
        )
    return experiment.experiment_id


def _find_parents(client: MlflowClient, experiment_id: str, sweep_id: str) -> list[Any]:
    runs = client.search_runs(
        [experiment_id],
        filter_string=f"tags.`{SWEEP_PARENT_TAG}` = '{sweep_id}'",
        max_results=100,
    )
    return sorted(runs, key=lambda r: (r.info.start_time or 0, r.info.run_id))


def get_or_create_sweep_parent(client: MlflowClient, experiment_id: str, sweep: SweepInfo) -> str:
    """Return the run id of the sweep's parent run, creating it on first use.

    Two processes may both find no parent and both create one. Each then searches again
    and every process picks the oldest (ties broken by run id), so all children end up
    under the same parent; a process whose own parent lost deletes it.
    """
    existing = _find_parents(client, experiment_id, sweep.sweep_id)
    if existing:
        return existing[0].info.run_id
    created = client.create_run(
        experiment_id,
        run_name=f"sweep-{sweep.sweep_id}",
        tags={SWEEP_PARENT_TAG: sweep.sweep_id, SWEEP_ID_TAG: sweep.sweep_id},
    )
    own_id = created.info.run_id
    # The parent only groups children; it holds no training of its own.
    client.set_terminated(own_id, status="FINISHED")
    winners = _find_parents(client, experiment_id, sweep.sweep_id)
    winner_id = winners[0].info.run_id if winners else own_id
    if winner_id != own_id:
        client.delete_run(own_id)
    return winner_id


def _is_better(value: float, best: float | None, mode: str) -> bool:
    return best is None or (value < best if mode == "min" else value > best)


def update_sweep_parent(tracker: Any, monitor: str, mode: Literal["min", "max"]) -> tuple[str, float] | None:
    """Write the best child (by its final ``monitor`` value) onto the sweep's parent run.

    Children considered: every child that is not FAILED/KILLED and has logged ``monitor`` (a child
    logs its ``best/...`` metric when its training is done, before its run ends), plus
    ``tracker``'s own run. "Final" is MLflow's latest value of the metric.

    Concurrent jobs (parallel launchers) each log their own metric first and then read-and-write
    the parent under the store lock, so whichever job comes second sees the first one's value:
    no lost update. (A remote store has no lock across machines; there the last writer wins.)
    Returns ``(best_run_id, best_value)``, or None for a NullTracker, a run outside a sweep, an
    offline tracker, or when no child has a finite ``monitor`` value yet.
    """
    if mode not in ("min", "max"):
        raise ValueError(f"mode must be 'min' or 'max', got {mode!r}")
    parent_id = getattr(tracker, "parent_run_id", None)
    client = getattr(tracker, "client", None)
    if parent_id is None or client is None or getattr(tracker, "offline", None) is not None:
        return None
    try:
        with store_lock(sqlite_db_path(str(tracker.tracking_uri or ""))):
            return _write_best(client, tracker, parent_id, monitor, mode)
    except Exception as error:  # the parent's "best" is a convenience: never fail a finished run over it
        import logging

        logging.getLogger(__name__).warning("could not update sweep parent %s: %s", parent_id, error)
        return None


def _write_best(client: Any, tracker: Any, parent_id: str, monitor: str, mode: str) -> tuple[str, float] | None:
    from mlflow.entities import Metric, RunTag

    children = client.search_runs(
        [tracker.experiment_id],
        filter_string=f"tags.`{PARENT_RUN_TAG}` = '{parent_id}'",
        max_results=10000,
    )
    best_value: float | None = None
    best_run = None
    for run in children:
        if run.info.status in ("FAILED", "KILLED") and run.info.run_id != tracker.run_id:
            continue
        value = run.data.metrics.get(monitor)
        if value is None or not math.isfinite(value):
            continue
        if _is_better(value, best_value, mode):
            best_value, best_run = value, run
    if best_run is None or best_value is None:
        return None
    import time

    client.log_batch(
        parent_id,
        metrics=[Metric(monitor if monitor.startswith("best/") else f"best_{monitor}", best_value, int(time.time() * 1000), len(children))],
        tags=[
            RunTag("best_run_id", best_run.info.run_id),
            RunTag("best_run_name", best_run.info.run_name or ""),
            RunTag("best_monitor", f"{monitor} ({mode})"),
        ],
    )
    return best_run.info.run_id, best_value


def _parse_run_ref(ref: str, artifact_path: str) -> tuple[str, str]:
    ref = str(ref).strip()
    if ref.startswith("runs:/"):
        run_id, _, path = ref[len("runs:/") :].strip("/").partition("/")
        if ".." in Path(path).parts or "\\" in path:
            raise ConfigError(f"{ref[:200]}: an artifact path may not contain '..'; name a file inside the run")
        return run_id, path or artifact_path
    return ref, artifact_path


def resolve_run_artifact(
    ref: str, tracking_uri: str, artifact_path: str = "checkpoints/best.pt", dst: Path | None = None
) -> Path:
    """Local path of a run's artifact, for ``finetune pretrained=<run id | runs:/<run_id>/path>``.

    Local (``file://``) artifact stores are read in place; remote ones are downloaded to
    ``dst`` (default: a temporary directory).
    """
    from urllib.parse import unquote, urlparse

    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    run_id, path = _parse_run_ref(ref, artifact_path)
    uri = resolve_tracking_uri(tracking_uri, original_cwd())
    client = MlflowClient(tracking_uri=uri)
    try:
        run = client.get_run(run_id)
    except MlflowException as err:
        raise InputNotFound(f"MLflow run {run_id!r} (from {ref!r}) not found in {uri}: {err.message}") from err

    def missing() -> InputNotFound:
        available: list[str] = []
        pending = [None]
        while pending and len(available) < 200:
            for info in client.list_artifacts(run_id, pending.pop()):
                (pending if info.is_dir else available).append(info.path)
        return InputNotFound(
            f"MLflow run {run_id} has no artifact {path!r}; available: {sorted(available) or 'none'}"
        )

    artifact_uri = run.info.artifact_uri or ""
    if artifact_uri.startswith("file:"):
        root = Path(unquote(urlparse(artifact_uri).path))
        local = root / path
        if not os.path.realpath(local).startswith(os.path.realpath(root) + os.sep):  # links out of the store
            raise ConfigError(f"runs:/{run_id}/{path[:200]} resolves outside the run's artifacts ({root})")
        if not local.is_file():
            raise missing()
        return local
    try:
        downloaded = client.download_artifacts(run_id, path, dst_path=str(dst) if dst is not None else None)
    except (MlflowException, OSError) as err:
        raise missing() from err
    if not Path(downloaded).exists():
        raise missing()
    return Path(downloaded)
