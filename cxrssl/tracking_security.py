"""What the tracking store may hold and who may read it.

- The sqlite store is created (0600 file, 0700 `mlartifacts/`) and its schema migrated under the
  store lock, so two first runs against a fresh `mlflow.db` cannot both migrate it (the second
  used to fail with `duplicate column name: step`).
- Credentials in URIs (`http://user:password@host`) never reach messages, `summary.json`,
  `config.yaml`, `.hydra/*.yaml` or MLflow params.
- `mlflow.redact=true` keeps identifiers and local paths out of the store: params lose absolute
  paths, and CSVs are logged with patient/image ids replaced by salted hashes (the salt lives
  beside the store, 0600, so ids stay linkable within one store and nowhere else) and path
  columns reduced to file names.

mlflow is imported inside functions only (CLI start-up path).
"""
from __future__ import annotations

import hashlib
import os
import re
import secrets
from pathlib import Path
from typing import Any, Mapping

from cxrssl.common import cfg_get as _get

_USERINFO = re.compile(r"(?P<scheme>\b[a-zA-Z][a-zA-Z0-9+.-]*://)[^/@\s'\"]+@")
#: Columns holding identifiers (hashed) and local paths (reduced to the file name) when redacting.
ID_COLUMNS = ("patient_id", "image_id", "study_id", "subject_id", "dicom_id", "accession")
PATH_COLUMNS = ("path", "mask_path", "file", "image_path")


def redact_uri(uri: str | None) -> str | None:
    """``uri`` without its user:password@ part (None stays None)."""
    return None if uri is None else _USERINFO.sub(r"\g<scheme>", str(uri))


def scrub_text(text: str) -> str:
    """Every URI in ``text`` without credentials."""
    return _USERINFO.sub(r"\g<scheme>", text)


def scrub_hydra_files(run_dir: str | os.PathLike) -> None:
    """Remove URI credentials from the config files Hydra wrote before the command started."""
    from cxrssl.atomic import atomic_write_text

    for path in sorted((Path(run_dir) / ".hydra").glob("*.yaml")):
        text = path.read_text()
        clean = scrub_text(text)
        if clean != text:
            atomic_write_text(path, clean)


def _strip_abs_paths(value: str) -> str:
    """Absolute paths → their last component (`/data/nih/images` → `<abs>/images`)."""
    value = re.sub(r"\b(sqlite|file):///+(?:[^/\s,'\"\]]+/)*([^/\s,'\"\]]+)", r"\1:///<abs>/\2", value)
    return re.sub(r"(?<![\w:/.~>-])/(?:[^/\s,'\"\]]+/)*([^/\s,'\"\]]+)", r"<abs>/\1", value)


def scrub_params(params: Mapping[str, str], cfg: Any = None) -> dict[str, str]:
    """MLflow params without URI credentials; without absolute paths when ``mlflow.redact``."""
    redact = bool(_get(_get(cfg, "mlflow"), "redact", False))
    out = {}
    for key, value in params.items():
        text = scrub_text(str(value))
        out[key] = _strip_abs_paths(text) if redact else text
    return out


def _private_file(path: Path) -> None:
    """Create ``path`` empty with mode 0600 if absent (sqlite then keeps that mode)."""
    try:
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    except FileExistsError:
        pass


def open_store(uri: str):
    """An MlflowClient for ``uri`` whose store exists with its schema current. For sqlite this
    happens under the store lock: the file is created 0600, `mlartifacts/` 0700, and MLflow's
    table creation/migration runs in one process at a time."""
    from mlflow import MlflowClient

    from cxrssl.sweeps import sqlite_db_path, store_lock

    db_path = sqlite_db_path(uri)
    if db_path is None:
        return MlflowClient(tracking_uri=uri)
    db_path.parent.mkdir(parents=True, exist_ok=True)
    _private_file(db_path.with_name(db_path.name + ".lock"))
    with store_lock(db_path):  # MlflowClient() itself may build the store: inside the lock too
        _private_file(db_path)
        (db_path.parent / "mlartifacts").mkdir(mode=0o700, exist_ok=True)
        client = MlflowClient(tracking_uri=uri)
        client._tracking_client.store  # noqa: B018 - builds the SqlAlchemyStore: creates/migrates tables
    return client


def store_salt(uri: str | None, base_dir: str | os.PathLike | None = None) -> bytes:
    """The per-store salt for hashing ids: `<db>.salt` beside a sqlite store (created 0600 on first
    use), else `<base_dir>/.cxrssl-redact-salt`."""
    from cxrssl.sweeps import sqlite_db_path

    db_path = sqlite_db_path(uri or "")
    path = db_path.with_name(db_path.name + ".salt") if db_path else Path(base_dir or ".") / ".cxrssl-redact-salt"
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_hex(32))
    except FileExistsError:
        pass
    return Path(path).read_text().strip().encode()


def hash_id(value: Any, salt: bytes) -> str:
    """A stable pseudonym of ``value`` within one store (HMAC-SHA256, 16 hex digits)."""
    import hmac

    return hmac.new(salt, str(value).encode(), hashlib.sha256).hexdigest()[:16]


def redact_csv(source: str | os.PathLike, target: str | os.PathLike, salt: bytes) -> Path:
    """Copy a CSV with id columns hashed and path columns reduced to file names (see module doc);
    any other cell holding an absolute path is reduced the same way."""
    import pandas as pd

    frame = pd.read_csv(source, dtype=str, keep_default_na=False)
    for column in frame.columns:
        if column in ID_COLUMNS:
            frame[column] = [hash_id(v, salt) if v != "" else "" for v in frame[column]]
        elif column in PATH_COLUMNS:
            frame[column] = [os.path.basename(v) for v in frame[column]]
        else:
            frame[column] = frame[column].map(_strip_abs_paths)
    frame.to_csv(target, index=False)
    return Path(target)
