"""Source registry: ``data.source`` → a function ``loader(data_cfg) -> metadata table``.

Loaders are named as ``"module:function"`` strings and imported on first use, so ``cxrssl --help``
does not pay for pandas parsing code of sources nobody asked for.
"""
from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any

import pandas as pd

from cxrssl.data.schema import MetadataError
from cxrssl.common import cfg_get as _get

#: name → "module:function"; each function takes the data config and returns a validated table.
SOURCES: dict[str, str] = {
    "synthetic": "cxrssl.data.sources.synthetic:load_synthetic_table",
    "csv": "cxrssl.data.sources.csv:load_csv_source",
    "nih": "cxrssl.data.sources.nih:load_nih_table",
    "chexpert": "cxrssl.data.sources.chexpert:load_chexpert_table",
    "mimic": "cxrssl.data.sources.mimic:load_mimic_table",
}


def get_loader(name: str) -> Callable[[Any], pd.DataFrame]:
    if name not in SOURCES:
        raise MetadataError(f"unknown data.source {name!r}; available: {sorted(SOURCES)}")
    module_name, function = SOURCES[name].split(":")
    return getattr(importlib.import_module(module_name), function)


def load_table(data_cfg: Mapping[str, Any] | Any) -> pd.DataFrame:
    """The metadata table of ``data_cfg.source`` (validated; report in ``table.attrs``)."""
    from cxrssl.data.io import configure_limits

    configure_limits(data_cfg)  # data.max_pixels, for every decoder that reads this table's images
    source = _get(data_cfg, "source")
    if not source:
        raise MetadataError("data.source is not set; pick one of " + ", ".join(sorted(SOURCES)))
    table = get_loader(str(source))(data_cfg)
    table.attrs.setdefault("skipped", [])
    table.attrs.setdefault("counts", {})
    table.attrs["source"] = str(source)
    return table
