"""Errors caused by the user's data, configuration or files, as opposed to bugs in cxrssl.

The CLI (:mod:`cxrssl.cli`) prints a :class:`UserError` as one line,
``cxrssl <command>: error: <message>``, and exits with status 2; anything else keeps its
traceback, because it is a bug worth reporting. ``HYDRA_FULL_ERROR=1`` shows the traceback of
user errors too.

Each layer's own error type (``MetadataError``, ``ImageReadError``, ``CheckpointError``,
``WeightsMismatchError``, ``TrackingUnavailable`` ...) subclasses :class:`UserError` *and* the
builtin it always was (``ValueError``, ``OSError`` ...), so existing ``except ValueError``
callers keep working. This module imports nothing from cxrssl: every layer may use it.
"""
from __future__ import annotations

__all__ = ["ConfigError", "DeviceUnavailable", "InputNotFound", "PatientOverlapError", "UserError",
           "one_line"]


class UserError(Exception):
    """Base of every error the user can fix by changing data, config or files; the message says how."""


class ConfigError(UserError, ValueError):
    """A configuration value is missing or impossible; the message names the key and what is allowed."""


class DeviceUnavailable(UserError, RuntimeError):
    """The requested device (e.g. ``trainer.device=cuda``) does not exist on this machine."""


class InputNotFound(UserError, FileNotFoundError):
    """A file, folder, checkpoint or MLflow run the user named does not exist."""


class PatientOverlapError(UserError, ValueError):
    """Evaluation patients were seen while pretraining the encoder (or training the model)."""


def one_line(error: BaseException, limit: int = 1000) -> str:
    """``error``'s message on one line (its lines joined by " | "), for MLflow's ``error`` tag."""
    text = " | ".join(line.strip() for line in str(error).strip().splitlines() if line.strip())
    text = text or type(error).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."
