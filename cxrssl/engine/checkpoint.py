"""Atomic checkpoints of plain types and tensors, loaded with `weights_only=True`.

A crash (or kill -9) mid-write leaves the previous file intact: we write `<name>.tmp-<pid>` in
the same folder, fsync it and `os.replace` it over the target. A failed write (disk full,
quota, permissions) raises `CheckpointWriteError` naming the file and the intact previous one.
`CXRSSL_TEST_CHECKPOINT_PAUSE_S` (tests only) sleeps between writing the temporary file and
replacing the target, so a test can kill the process in the middle of a checkpoint write.
"""
from __future__ import annotations

import errno
import os
import time
from pathlib import Path
from typing import Any

import torch

from cxrssl.errors import UserError

CHECKPOINT_VERSION = 1


class CheckpointError(UserError, RuntimeError):
    """A checkpoint is missing, corrupt or not a cxrssl checkpoint; the message names the file."""


class CheckpointWriteError(UserError, OSError):
    """A checkpoint could not be written; the previous file of that name is untouched."""


def save_checkpoint(state: dict[str, Any], path: str | Path) -> Path:
    path = Path(path)
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as fh:
            torch.save({"version": CHECKPOINT_VERSION, **state}, fh)
            fh.flush()
            os.fsync(fh.fileno())
        pause = float(os.environ.get("CXRSSL_TEST_CHECKPOINT_PAUSE_S") or 0)
        if pause > 0:
            print(f"checkpoint pause: {tmp} written, {path} not yet replaced", flush=True)
            time.sleep(pause)
        os.replace(tmp, path)
    except OSError as err:
        reason = "the disk is full" if err.errno == errno.ENOSPC else (err.strerror or str(err))
        previous = f"the previous {path.name} is intact" if path.is_file() else f"no earlier {path.name} exists"
        raise CheckpointWriteError(
            f"cannot write checkpoint {path}: {reason} ({type(err).__name__}); {previous}. Free space or fix the "
            "folder's permissions, then continue with resume=true") from err
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # truncated zip, pickle with code, not a torch file ...
        raise CheckpointError(
            f"cannot load checkpoint {path}: {type(err).__name__}: {str(err).splitlines()[0]} — the file is "
            "corrupt, truncated, or holds objects other than tensors and plain types") from err
    if not isinstance(state, dict) or "model" not in state:
        raise CheckpointError(f"{path} is not a cxrssl checkpoint (no 'model' entry); for plain weights "
                              "files use backbone.pretrained=<file>")
    return state


def find_resume_checkpoint(resume: Any, run_dir: Path) -> Path | None:
    """`resume=true`: the newest of recovery.pt/last.pt of this run dir, else of the newest sibling
    run that has one. `resume=<path>`: that file (or the newest in `<dir>/checkpoints/`). `null/false`: None."""
    if resume in (None, False, "false", "null", ""):
        return None
    if resume is True or str(resume).lower() == "true":
        own = newest_resumable(run_dir / "checkpoints")
        if own is not None:
            return own
        candidates = sorted((p for d in run_dir.parent.glob("*/checkpoints") if d.parent != run_dir
                             for p in [newest_resumable(d)] if p is not None), key=lambda p: p.stat().st_mtime)
        if not candidates:
            raise CheckpointError(f"resume=true but no checkpoints/last.pt or recovery.pt under {run_dir} or its siblings in "
                                  f"{run_dir.parent}; pass resume=/path/to/last.pt")
        return candidates[-1]
    path = Path(str(resume)).expanduser()
    if path.is_dir():
        path = newest_resumable(path / "checkpoints") or path / "checkpoints" / "last.pt"
    if not path.is_file():
        raise CheckpointError(f"resume={resume}: no checkpoint at {path}")
    return path


def newest_resumable(ckpt_dir: Path) -> Path | None:
    """The newer of `recovery.pt` (mid-epoch) and `last.pt` (epoch end) in `ckpt_dir`, if any.
    recovery.pt is deleted after each epoch's last.pt; if a kill came in between, last.pt is newer."""
    found = [p for p in (Path(ckpt_dir) / "recovery.pt", Path(ckpt_dir) / "last.pt") if p.is_file()]
    return max(found, key=lambda p: p.stat().st_mtime_ns) if found else None
