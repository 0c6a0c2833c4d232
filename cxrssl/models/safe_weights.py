"""Read weights files without ever running code from them.

A `.pth`/`.pt` file is a pickle: `torch.load(weights_only=False)` (the default of timm's loaders
up to 1.0.25, and of torch before 2.6) executes whatever `__reduce__` the file names. Every weights
file cxrssl touches — `backbone.pretrained=`, a plain weights file given as `pretrained=`, and the
external formats in `cxrssl.models.external` — is read here, by cxrssl, with
`torch.load(weights_only=True)` (tensors and plain containers only) or as safetensors, and the
resulting state dict is handed to timm. timm's own file loaders are never called.
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

#: Keys under which common training scripts nest the model's state dict (timm train, DINO, MAE,
#: torchxrayvision, Lightning). The first one holding tensors is used.
WRAPPER_KEYS = ("state_dict", "model", "model_state_dict", "module", "teacher", "student", "net")
SAFETENSORS_SUFFIXES = (".safetensors",)


class UnsafeWeightsError(ValueError):
    """A weights file holds something other than tensors and plain containers (possibly code)."""


def safe_torch_load(path: str | os.PathLike) -> Any:
    """The object stored in ``path``, read without executing code: safetensors files as a dict of
    tensors, torch files with ``weights_only=True``. Raises UnsafeWeightsError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    if path.suffix.lower() in SAFETENSORS_SUFFIXES:
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except Exception as err:  # header too large, truncated ...
            raise UnsafeWeightsError(f"{path}: not a valid safetensors file ({type(err).__name__}: "
                                     f"{str(err)[:200]})") from err
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # UnpicklingError (code or foreign classes), truncated zip, not torch
        first = (str(err).splitlines() or [""])[0][:300]
        raise UnsafeWeightsError(
            f"{path}: refused — cxrssl reads weights with torch.load(weights_only=True), and this file "
            f"holds Python objects other than tensors, or is not a torch file ({type(err).__name__}: "
            f"{first}). If you trust its origin, re-save just the tensors once: "
            "`torch.save(model.state_dict(), 'weights.pth')` (or convert it to .safetensors).") from err


def _tensors_only(node: Mapping) -> dict[str, torch.Tensor]:
    return {str(k): v for k, v in node.items() if isinstance(v, torch.Tensor)}


def unwrap_state_dict(obj: Any, source: str = "weights", keys: tuple[str, ...] = WRAPPER_KEYS) -> dict[str, torch.Tensor]:
    """The tensor mapping inside ``obj``: itself if it holds tensors, else the first of ``keys``
    (searched up to two levels deep) that does. A DistributedDataParallel ``module.`` prefix on
    every key is removed. Non-tensor entries (epoch counters, args) are dropped."""
    def find(node: Any, depth: int) -> dict[str, torch.Tensor] | None:
        if not isinstance(node, Mapping):
            return None
        own = _tensors_only(node)
        if own and len(own) >= len(node) / 2:
            return own
        if depth < 2:
            for key in keys:
                found = find(node.get(key), depth + 1)
                if found:
                    return found
        return own or None

    state = find(obj, 0)
    if not state:
        top = list(obj)[:8] if isinstance(obj, Mapping) else type(obj).__name__
        raise UnsafeWeightsError(f"{source}: no tensors found (top-level entries: {top}); expected a "
                                 f"state dict, or one under one of {list(keys)}")
    if all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def load_weights_file(path: str | os.PathLike, keys: tuple[str, ...] = WRAPPER_KEYS) -> dict[str, torch.Tensor]:
    """``path`` (.pth/.pt/.bin/.safetensors) → a state dict of CPU tensors, never running code.

    The one entry point for weights files outside cxrssl's own checkpoints (those go through
    `cxrssl.engine.checkpoint.load_checkpoint`, also weights_only)."""
    return unwrap_state_dict(safe_torch_load(path), str(path), keys)
