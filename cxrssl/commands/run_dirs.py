"""Run directories are claimed exclusively, and written atomically.

`hydra.run.dir=<another run>` used to overwrite that run's summary.json/config.yaml and upload its
checkpoints; `hydra.run.dir=.` copied the MLflow artifact store into itself; two runs started in
the same second shared a folder. Now a command claims its run dir by creating `.cxrssl-run` with
O_EXCL before writing anything: a folder already claimed by another run, or one holding anything
but Hydra's own `.hydra/` and log, is refused unless `resume=` continues a run there. Artifacts
taken from a folder are an explicit list of the files this run wrote (never the tracking store).
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

from cxrssl.errors import ConfigError

RUN_MARKER = ".cxrssl-run"
#: What Hydra itself puts in a run dir before the command starts.
HYDRA_ENTRIES = (".hydra",)
#: Never uploaded from a folder: the tracking store and its lock, cache/temporary files.
STORE_NAMES = ("mlartifacts", "mlruns", "mlflow.db", "mlflow.db.lock", "mlflow.db-journal", "mlflow.db-wal")


#: Run dirs claimed by ClaimRunDir in this process and not yet taken over by the command itself.
_CLAIMED_BY_CALLBACK: set[Path] = set()


class RunDirTaken(ConfigError):
    """The run dir belongs to another run, or holds files cxrssl did not write."""


def _resuming(resume) -> bool:
    return resume not in (None, False, "", "null", "none", "false", "False")


def claim_run_dir(path: str | os.PathLike, resume=None, job_name: str | None = None) -> Path:
    """Create ``path`` if needed and claim it for this run (see module doc); returns it."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    marker = path / RUN_MARKER
    record = json.dumps({"pid": os.getpid(), "started": time.time(), "host": os.uname().nodename}).encode()
    try:
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    except FileExistsError:
        if path.resolve() in _CLAIMED_BY_CALLBACK:  # ClaimRunDir claimed it before Hydra wrote .hydra/
            _CLAIMED_BY_CALLBACK.discard(path.resolve())
            return path
        if _resuming(resume):
            marker.write_bytes(record)  # the resumed run owns it now; its start time bounds artifacts
            return path
        raise RunDirTaken(
            f"run dir {path} already belongs to another cxrssl run ({_describe(marker)}); two commands "
            "writing there would overwrite each other's summary.json, config.yaml and checkpoints. Use "
            "a new hydra.run.dir, or resume=<that run> to continue it.") from None
    with os.fdopen(fd, "wb") as handle:
        handle.write(record)
    allowed = {RUN_MARKER, *HYDRA_ENTRIES, *([f"{job_name}.log"] if job_name else [])}
    foreign = sorted(p.name for p in path.iterdir() if p.name not in allowed)
    if foreign and not _resuming(resume):
        marker.unlink()
        raise RunDirTaken(
            f"run dir {path} is not empty and was not created by cxrssl ({len(foreign)} entries, e.g. "
            f"{foreign[:3]}); cxrssl never writes into a folder it did not create. Use a new "
            "hydra.run.dir (the default outputs/<command>/<time> is always fresh).")
    return path


def _describe(marker: Path) -> str:
    try:
        info = json.loads(marker.read_text())
        return f"pid {info.get('pid')}, started {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(info['started']))}"
    except (OSError, ValueError, KeyError, TypeError):
        return "marker unreadable"


def run_started(path: str | os.PathLike) -> float:
    """When this run claimed ``path`` (0 if unclaimed: every file counts)."""
    try:
        return json.loads((Path(path) / RUN_MARKER).read_text())["started"]
    except (OSError, ValueError, KeyError, TypeError):
        return 0.0


def artifact_files(folder: str | os.PathLike, since: float = 0.0) -> list[Path]:
    """Regular files under ``folder`` written at or after ``since``, never following symlinks and
    never inside the tracking store; what a folder artifact uploads."""
    folder = Path(folder)
    files = []
    for root, dirs, names in os.walk(folder, followlinks=False):
        dirs[:] = sorted(d for d in dirs if d not in STORE_NAMES and not (Path(root) / d).is_symlink())
        for name in sorted(names):
            path = Path(root) / name
            if name in STORE_NAMES or name == RUN_MARKER or path.is_symlink() or not path.is_file():
                continue
            if path.stat().st_mtime >= since - 1.0:  # 1 s: filesystems with coarse timestamps
                files.append(path)
    return files


try:  # the Hydra callback below; Hydra is always installed with cxrssl, but keep this module light
    from hydra.experimental.callback import Callback as _Callback
except ImportError:  # pragma: no cover
    _Callback = object  # type: ignore[assignment,misc]


class ClaimRunDir(_Callback):
    """Claims `hydra.run.dir` in `on_run_start`, i.e. before Hydra writes `.hydra/` into it, so
    `hydra.run.dir=<another run>` is refused before that run's `.hydra/*.yaml` are overwritten
    (conf/hydra/default.yaml registers it). Refusal: one line on stderr, exit status 2."""

    def on_run_start(self, config, **kwargs) -> None:
        import sys

        if os.environ.get("RANK", "0") != "0":  # torchrun: rank 0 claims the folder for all ranks
            return
        try:
            path = claim_run_dir(Path(str(config.hydra.run.dir)).absolute(), config.get("resume"),
                                 job_name=config.hydra.job.get("name"))
            _CLAIMED_BY_CALLBACK.add(path.resolve())
        except RunDirTaken as error:
            print(f"cxrssl {config.get('command', '')}: error: {error}", file=sys.stderr, flush=True)
            raise SystemExit(2) from None
