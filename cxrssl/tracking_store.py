"""Where the MLflow store is and whether it can be used: URIs, reachability, the store lock.

The bottom of the tracking modules (:mod:`cxrssl.sweeps` and :mod:`cxrssl.tracking` both import
it, it imports neither), so there is no import circle between them. mlflow is not imported
here: this module sits on the CLI start-up path.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Iterator

from cxrssl.errors import ConfigError, UserError

__all__ = ["TrackingUnavailable", "check_reachable", "original_cwd", "resolve_tracking_uri", "sqlite_db_path",
           "store_lock"]


@contextlib.contextmanager
def store_lock(db_path: Path | None) -> Iterator[None]:
    """Serialise store set-up between processes sharing one sqlite file (parallel launchers).

    ``db_path`` None (remote store) takes no lock; :func:`get_or_create_sweep_parent`
    copes with races there.
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        fcntl = None  # type: ignore[assignment]
    if db_path is None or fcntl is None:
        yield
        return
    lock_path = db_path.with_name(db_path.name + ".lock")
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


class TrackingUnavailable(UserError, RuntimeError):
    """The configured tracking store cannot be used; raised before any training starts."""


def sqlite_db_path(tracking_uri: str) -> Path | None:
    """Database file of a resolved ``sqlite:////abs/path.db`` URI, else None."""
    if not tracking_uri.startswith("sqlite:///"):
        return None
    return Path(tracking_uri[len("sqlite:///") :].partition("?")[0])


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
            raise ConfigError(
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
        raise ConfigError(
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


def original_cwd() -> Path:
    """The directory the command was started in, even if Hydra changed into its run dir."""
    try:
        from hydra.core.hydra_config import HydraConfig

        return Path(HydraConfig.get().runtime.cwd)
    except (ImportError, ValueError):
        return Path.cwd()


def hydra_run_dir() -> Path:
    """The Hydra job's output dir (where the offline file belongs), else the working directory."""
    try:
        from hydra.core.hydra_config import HydraConfig

        return Path(HydraConfig.get().runtime.output_dir)
    except (ImportError, ValueError):
        return Path.cwd()


def git_commit(cwd: Path) -> str | None:
    try:
        result = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=5, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip() or None


def limit_http_retries(uri: str, mlflow_cfg: Any) -> None:
    """Bound MLflow's HTTP retries (default 7 with exponential back-off: minutes per call) so a
    server that dies mid-run costs seconds before the tracker goes offline. Explicit
    ``MLFLOW_HTTP_REQUEST_*`` environment variables win over ``mlflow.request_retries`` /
    ``mlflow.request_timeout_s``."""
    if not uri.startswith(("http://", "https://")):
        return
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", str(int(mlflow_cfg.get("request_retries", 2))))
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(int(mlflow_cfg.get("request_timeout_s", 30))))
