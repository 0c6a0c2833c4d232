"""Two small helpers every layer needs, kept in one place (they had drifted apart as private copies
in five modules): reading a config value that may be missing or null, and making a nested result
JSON-safe for ``summary.json`` and artifact files. Imports nothing heavy: any layer may use it."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

__all__ = ["cfg_get", "jsonable"]


def cfg_get(cfg: Any, key: str, default: Any = None) -> Any:
    """``cfg[key]`` for a DictConfig, dict or object; ``default`` when ``cfg`` is None, the key is
    absent, or its value is null."""
    if cfg is None:
        return default
    value = cfg.get(key, default) if hasattr(cfg, "get") else getattr(cfg, key, default)
    return default if value is None else value


def jsonable(value: Any) -> Any:
    """``value`` with only JSON types: str keys, lists for tuples and arrays, str for paths, Python
    scalars for numpy/torch scalars, and None for NaN/inf (strict JSON has neither)."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):  # numpy/torch scalars and arrays
        return jsonable(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
