"""The metadata table every source produces, and the sample dict every dataset yields.

Sources differ wildly (NIH strings like ``057Y``, CheXpert's -1 labels, DICOM vs PNG); after a
source has run, nothing downstream may know which one it was. This module is that contract.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from cxrssl.errors import UserError

#: Columns every metadata table has, in this order. Missing values are NaN (never "", -1 or 0).
#:   image_id     str   unique per image
#:   path         str   absolute path of the image file (PNG/JPEG/DICOM)
#:   patient_id   str   splits are made on this: no patient in two splits
#:   age          float years (NaN = unknown)
#:   sex          str   "M" | "F" | NaN
#:   view         str   "PA" | "AP" | NaN (other frontal views are mapped or left NaN)
#:   cardiomegaly float 1.0 | 0.0 | NaN (NaN = unknown or ignored: excluded from loss and metrics)
#:   split        str   "train" | "val" | "test" | NaN (NaN = not fixed by the source)
#:   mask_path    str   absolute path of a heart mask PNG (nonzero = heart) | NaN
REQUIRED_COLUMNS: tuple[str, ...] = (
    "image_id", "path", "patient_id", "age", "sex", "view", "cardiomegaly", "split", "mask_path",
)
#: Optional columns a source may add (kept, never required): ctr, lung_mask_path, source_row, ...
SEXES = ("M", "F")
VIEWS = ("PA", "AP")
SPLITS = ("train", "val", "test")


class MetadataError(UserError, ValueError):
    """A metadata table or file breaks the contract; the message names the file/row/column."""


def empty_table() -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype=_dtype(c)) for c in REQUIRED_COLUMNS})


def _dtype(column: str) -> str:
    return "float64" if column in ("age", "cardiomegaly") else "object"


def validate_table(table: pd.DataFrame, origin: str = "metadata table") -> pd.DataFrame:
    """Check the contract and return the table with canonical dtypes; raise MetadataError naming
    the offending column/rows otherwise."""
    missing = [c for c in REQUIRED_COLUMNS if c not in table.columns]
    if missing:
        raise MetadataError(f"{origin}: missing column(s) {missing}; expected {list(REQUIRED_COLUMNS)}")
    out = table.copy()
    out["age"] = pd.to_numeric(out["age"], errors="raise").astype("float64")
    out["cardiomegaly"] = pd.to_numeric(out["cardiomegaly"], errors="raise").astype("float64")
    dup = out["image_id"][out["image_id"].duplicated()]
    if len(dup):
        raise MetadataError(f"{origin}: duplicate image_id(s) {dup.head(5).tolist()}")
    for column, allowed in (("sex", SEXES), ("view", VIEWS), ("split", SPLITS)):
        bad = out[column].notna() & ~out[column].isin(allowed)
        if bad.any():
            rows = out.index[bad][:5].tolist()
            raise MetadataError(
                f"{origin}: column {column!r} has values {sorted(set(out.loc[bad, column]))[:5]} "
                f"at rows {rows}; allowed: {list(allowed)} or missing")
    bad_label = out["cardiomegaly"].notna() & ~out["cardiomegaly"].isin([0.0, 1.0])
    if bad_label.any():
        raise MetadataError(f"{origin}: cardiomegaly must be 0, 1 or missing; bad rows "
                            f"{out.index[bad_label][:5].tolist()}")
    if out["patient_id"].isna().any():
        raise MetadataError(f"{origin}: patient_id missing at rows "
                            f"{out.index[out['patient_id'].isna()][:5].tolist()}")
    out["patient_id"] = out["patient_id"].astype(str)
    out["image_id"] = out["image_id"].astype(str)
    return out


def sex_to_float(sex: object) -> float:
    """'M' → 1.0, 'F' → 0.0, unknown → NaN (the float the sex task trains on)."""
    return 1.0 if sex == "M" else 0.0 if sex == "F" else float(np.nan)
