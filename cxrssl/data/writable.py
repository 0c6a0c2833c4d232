"""Fail at start, not after the first epoch, when an output or cache folder cannot be written."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

from cxrssl.errors import UserError


class OutputNotWritable(UserError, OSError):
    """An output, checkpoint or cache folder cannot be created or written; the message names it."""


def check_writable(folder: str | Path, what: str, fix: str) -> Path:
    """Create `folder` if needed and write + delete a probe file in it (permissions, read-only
    mounts and full disks all show up here). `what` names the setting, `fix` says what to do."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".cxrssl-write-probe-", dir=folder)
        try:
            os.write(fd, b"ok")
            os.fsync(fd)
        finally:
            os.close(fd)
            os.unlink(probe)
    except OSError as err:
        raise OutputNotWritable(f"{what} {folder} is not writable ({err.strerror or err}); {fix}") from err
    return folder
