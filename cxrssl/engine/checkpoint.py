"""Atomic checkpoints of plain types and tensors, loaded with `weights_only=True`.

A crash (or kill -9) mid-write leaves the previous file intact: we write `<name>.tmp-<pid>` in
the same folder, fsync it and `os.replace` it over the target.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from cxrssl.errors import UserError

CHECKPOINT_VERSION = 1


class CheckpointError(UserError, RuntimeError):
    """A checkpoint is missing, corrupt or not a cxrssl checkpoint; the message names the file."""


def save_checkpoint(state: dict[str, Any], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as fh:
            torch.save({"version": CHECKPOINT_VERSION, **state}, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
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
    """`resume=true`: last.pt of this run dir, else of the newest sibling run that has one.
    `resume=<path>`: that file (or `<dir>/checkpoints/last.pt`). `null/false`: None."""
    if resume in (None, False, "false", "null", ""):
        return None
    if resume is True or str(resume).lower() == "true":
        own = run_dir / "checkpoints" / "last.pt"
        if own.is_file():
            return own
        candidates = sorted((p for p in run_dir.parent.glob("*/checkpoints/last.pt") if p.parent.parent != run_dir),
                            key=lambda p: p.stat().st_mtime)
        if not candidates:
            raise CheckpointError(f"resume=true but no checkpoints/last.pt under {run_dir} or its siblings in "
                                  f"{run_dir.parent}; pass resume=/path/to/last.pt")
        return candidates[-1]
    path = Path(str(resume)).expanduser()
    if path.is_dir():
        path = path / "checkpoints" / "last.pt"
    if not path.is_file():
        raise CheckpointError(f"resume={resume}: no checkpoint at {path}")
    return path
