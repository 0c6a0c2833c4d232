"""When the tracking store goes away mid-run: keep what was not sent, upload it later.

A tracking server that dies (or a network that drops) must never cost the training. After the
first failed call the :class:`~cxrssl.tracking.Tracker` stops talking to the store for the rest
of the run and appends every later call (metrics, params, tags, artifact paths, the end status)
as one JSON line to ``<run dir>/mlflow_offline.jsonl``. ``summary.json`` then says tracking
failed and how to re-upload::

    python -m cxrssl.tracking_offline <run dir> [--tracking-uri URI]

which replays the file into the same MLflow run (or a new one, if the store lost it) and renames
it to ``mlflow_offline.uploaded.jsonl``. Artifacts are read from disk at upload time.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import threading
import time
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

OFFLINE_FILE = "mlflow_offline.jsonl"
UPLOADED_FILE = "mlflow_offline.uploaded.jsonl"


def upload_command(run_dir: Path | str) -> str:
    return f"{sys.executable.rsplit('/', 1)[-1]} -m cxrssl.tracking_offline {run_dir}"


class OfflineLog:
    """Append-only JSON-lines record of tracking calls that could not be sent."""

    def __init__(self, path: Path, *, run_id: str | None, experiment_id: str | None, tracking_uri: str | None,
                 reason: str):
        self.path = Path(path)
        self.reason = reason
        self._lock = threading.Lock()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.append({"op": "header", "run_id": run_id, "experiment_id": experiment_id,
                     "tracking_uri": tracking_uri, "reason": reason, "time": time.time()})

    def append(self, record: dict[str, Any]) -> None:
        line = json.dumps(record, default=str)
        with self._lock, open(self.path, "a", encoding="utf-8") as handle:
            handle.write(line + "\n")
            handle.flush()

    def status(self) -> dict[str, Any]:
        """What ``summary.json`` records under ``tracking``."""
        return {"status": "failed", "reason": self.reason, "unsent": str(self.path),
                "reupload": upload_command(self.path.parent)}


def read_records(path: Path) -> list[dict[str, Any]]:
    """The records of ``path``; a torn last line (a kill mid-write) is skipped with a warning."""
    records = []
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            log.warning("%s line %d is not complete JSON; skipped", path, number)
    return records


def replay(run_dir: Path | str, tracking_uri: str | None = None) -> str:
    """Send ``<run_dir>/mlflow_offline.jsonl`` to the store; returns the run id it went to."""
    from mlflow import MlflowClient
    from mlflow.entities import Metric, Param, RunTag
    from mlflow.exceptions import MlflowException

    from cxrssl.errors import InputNotFound

    path = Path(run_dir) / OFFLINE_FILE
    if not path.is_file():
        raise InputNotFound(f"{path}: no unsent tracking data in this run dir")
    records = read_records(path)
    header = next((r for r in records if r.get("op") == "header"), {})
    uri = tracking_uri or header.get("tracking_uri")
    if not uri:
        raise InputNotFound(f"{path} names no tracking URI; pass --tracking-uri")
    client = MlflowClient(tracking_uri=uri)
    run_id = header.get("run_id")
    try:
        existing = client.get_run(run_id).data.params if run_id else None
    except MlflowException:
        existing = None
    if existing is None:
        experiment_id = header.get("experiment_id") or "0"
        run_id = client.create_run(experiment_id, tags={"cxrssl.replayed_from": str(header.get("run_id"))}).info.run_id
        existing = {}
    for record in records:
        op = record.get("op")
        if op == "metrics":
            entries = [Metric(k, float(v), int(record["timestamp"]), int(record["step"]))
                       for k, v in record["metrics"].items()]
            for i in range(0, len(entries), 1000):
                client.log_batch(run_id, metrics=entries[i : i + 1000])
        elif op == "params":
            entries = [Param(k, str(v)) for k, v in record["params"].items() if k not in existing]
            for i in range(0, len(entries), 100):
                client.log_batch(run_id, params=entries[i : i + 100])
        elif op == "tags":
            entries = [RunTag(k, str(v)) for k, v in record["tags"].items()]
            for i in range(0, len(entries), 100):
                client.log_batch(run_id, tags=entries[i : i + 100])
        elif op in ("artifact", "artifacts"):
            local = Path(record["path"])
            if local.is_file():
                client.log_artifact(run_id, str(local), record.get("artifact_path"))
            elif local.is_dir():
                client.log_artifacts(run_id, str(local), record.get("artifact_path"))
            else:
                log.warning("artifact %s no longer exists; not uploaded", local)
        elif op == "end":
            client.set_terminated(run_id, status=record["status"])
    client.set_tag(run_id, "cxrssl.tracking_replayed", "true")
    path.rename(path.with_name(UPLOADED_FILE))
    return run_id


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cxrssl.tracking_offline", description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path, help="the run dir holding mlflow_offline.jsonl")
    parser.add_argument("--tracking-uri", default=None, help="default: the URI the run was logging to")
    args = parser.parse_args(argv)
    from cxrssl.errors import UserError

    try:
        run_id = replay(args.run_dir, args.tracking_uri)
    except UserError as error:
        print(f"cxrssl tracking_offline: error: {error}", file=sys.stderr)
        return 2
    print(f"uploaded {args.run_dir / OFFLINE_FILE} to MLflow run {run_id}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
