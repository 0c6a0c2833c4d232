"""Generic CSV source, plus the parsing helpers every real source shares.

One row per image: a path (relative to ``root``), a patient id, and optional age, sex, view,
cardiomegaly, split and mask_path. Bad rows are either fatal (``on_error="raise"``: the message
names the CSV, its line numbers and what is wrong) or left out (``on_error="skip"``) and listed in
``table.attrs["skipped"]`` (a list of ``{"file", "row", "path", "reason"}`` dicts, ``row`` = the
CSV line number) with counts in ``table.attrs["counts"]``. Nothing is silently mislabeled: values
that cannot be read are errors, never NaN.
"""
from __future__ import annotations

import logging
import math
import os
import re
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from cxrssl.data.io import quick_check
from cxrssl.data.schema import REQUIRED_COLUMNS, MetadataError, validate_table

log = logging.getLogger(__name__)

ON_ERROR_MODES = ("raise", "skip")
MAX_AGE = 120.0
_AGE_RE = re.compile(r"^\s*(-?\d+(?:\.\d+)?)\s*([YMWD]?)\s*$", re.IGNORECASE)
_AGE_UNIT_YEARS = {"": 1.0, "Y": 1.0, "M": 1 / 12, "W": 7 / 365.25, "D": 1 / 365.25}
_SEX = {"M": "M", "MALE": "M", "F": "F", "FEMALE": "F"}
_SEX_UNKNOWN = {"", "U", "UNKNOWN", "O", "OTHER", "NAN", "NONE", "X", "UNK"}
_VIEW = {"PA": "PA", "POSTEROANTERIOR": "PA", "AP": "AP", "ANTEROPOSTERIOR": "AP",
         "AP SUPINE": "AP", "AP_SUPINE": "AP", "APSUPINE": "AP"}
_LABEL = {"1": 1.0, "1.0": 1.0, "TRUE": 1.0, "0": 0.0, "0.0": 0.0, "FALSE": 0.0}
_SPLIT = {"TRAIN": "train", "VAL": "val", "VALID": "val", "VALIDATE": "val",
          "VALIDATION": "val", "TEST": "test"}
CSV_LAYOUT = ("a CSV with one row per image and columns path (relative to data.root), patient_id "
              "and optionally image_id, age, sex, view, cardiomegaly, split, mask_path "
              "(rename them with data.columns: {schema_name: csv_column})")


class RowIssues:
    """Collects per-row problems of one source file and applies the on_error policy once."""

    def __init__(self, origin: str | os.PathLike, on_error: str):
        if on_error not in ON_ERROR_MODES:
            raise MetadataError(f"data.on_error must be one of {ON_ERROR_MODES}, got {on_error!r}")
        self.origin, self.on_error = str(origin), on_error
        self.issues: list[dict] = []

    def add(self, frame: pd.DataFrame, bad: pd.Series, reason: str | pd.Series) -> None:
        """Record rows where ``bad`` is true; ``frame`` needs ``source_row`` and ``path`` columns.
        Column-wise (a 300k-row CSV of duplicates reports in about a second), values clipped."""
        bad = bad.fillna(False).astype(bool)
        index = frame.index[bad.reindex(frame.index, fill_value=False).to_numpy()]
        if not len(index):
            return
        path_column = "_raw_source_value" if "_raw_source_value" in frame.columns else "path"
        rows = frame.loc[index, "source_row"].astype(int).tolist()
        paths = [clip(v) for v in frame.loc[index, path_column].astype(str).tolist()]
        files = (frame.loc[index, "source_file"].astype(str).tolist() if "source_file" in frame.columns
                 else [self.origin] * len(index))
        whys = [clip(reason, 300)] * len(index) if isinstance(reason, str) else \
            [clip(v, 300) for v in reason.loc[index].astype(str).tolist()]
        self.issues.extend({"file": f, "row": r, "path": p, "reason": w, "_index": i}
                           for f, r, p, w, i in zip(files, rows, paths, whys, index))

    def apply(self, frame: pd.DataFrame) -> tuple[pd.DataFrame, list[dict]]:
        """Raise listing the bad rows, or drop them and return one record per skipped row."""
        if not self.issues:
            return frame, []
        by_row: dict = {}
        for issue in self.issues:  # one record per row, its reasons joined
            record = by_row.setdefault(issue["_index"], {k: issue[k] for k in ("file", "row", "path")})
            record["reason"] = "; ".join(filter(None, [record.get("reason"), issue["reason"]]))
        records = [by_row[index] for index in sorted(by_row)]
        if self.on_error == "raise":
            lines = [f"  {'' if r['file'] == self.origin else r['file'] + ' '}row {r['row']} "
                     f"({r['path']}): {r['reason']}" for r in records[:10]]
            more = f"\n  ... and {len(records) - 10} more" if len(records) > 10 else ""
            raise MetadataError(f"{self.origin}: {len(records)} bad row(s):\n" + "\n".join(lines)
                                + more + "\nFix them, or set data.on_error=skip to leave them out "
                                "(they are then listed in the skipped-rows report).")
        log.warning("%s: skipped %d row(s) (data.on_error=skip)", self.origin, len(records))
        return frame.drop(index=sorted(by_row)), records


def clip(value: object, limit: int = 200) -> str:
    """``value`` as text of at most ``limit`` characters (a 50 MB CSV cell must not become a 100 MB
    error message)."""
    text = str(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text):,} characters)"


def _text(values: pd.Series) -> pd.Series:
    """Upper-cased stripped strings, '' for missing (whatever dtype the column arrived in)."""
    return values.astype(object).where(values.notna(), "").astype(str).str.strip().str.upper()


def parse_age(value: object) -> float:
    """Years from ``57``, ``57.0``, ``"057Y"``, ``"003M"``, ``"010D"`` (whole years, floored);
    NaN when missing. Raises ValueError for text that is not an age."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return float("nan")
    if isinstance(value, (int, float, np.integer, np.floating)):
        return float(value)
    text = str(value).strip()
    if text.lower() in ("", "nan", "none", "unknown"):
        return float("nan")
    match = _AGE_RE.match(text)
    if match is None:
        raise ValueError(f"age {clip(text, 40)!r} is not a number or NNN[Y|M|W|D]")
    amount, unit = float(match.group(1)), match.group(2).upper()
    return amount if unit in ("", "Y") else float(math.floor(amount * _AGE_UNIT_YEARS[unit]))


def parse_ages(values: pd.Series) -> tuple[pd.Series, pd.Series, pd.Series]:
    """(ages, unparseable-row reasons or NaN, implausible mask); implausible ages become NaN."""
    ages, reasons = [], []
    for value in values:
        try:
            ages.append(parse_age(value)), reasons.append(None)
        except ValueError as error:
            ages.append(float("nan")), reasons.append(str(error))
    ages_s = pd.Series(ages, index=values.index, dtype="float64")
    implausible = (ages_s < 0) | (ages_s > MAX_AGE)
    return ages_s.mask(implausible), pd.Series(reasons, index=values.index), implausible


def normalise_sex(values: pd.Series) -> tuple[pd.Series, pd.Series]:
    """('M' | 'F' | NaN, mask of values that are neither a sex nor an 'unknown' token)."""
    text = _text(values)
    sex = text.map(_SEX)
    return sex.where(sex.notna(), np.nan).astype(object), sex.isna() & ~text.isin(_SEX_UNKNOWN)


def normalise_view(values: pd.Series) -> pd.Series:
    """'PA' | 'AP' | NaN: laterals and unusual projections are not a PA/AP subgroup."""
    text = _text(values)
    return text.map(_VIEW).where(lambda s: s.notna(), np.nan).astype(object)


def normalise_labels(values: pd.Series) -> tuple[pd.Series, pd.Series]:
    """(1.0 | 0.0 | NaN, mask of values that are not a binary label)."""
    text = _text(values)
    labels = text.map(_LABEL)
    return labels.astype("float64"), labels.isna() & (text != "") & (text != "NAN")


def normalise_split(values: pd.Series) -> tuple[pd.Series, pd.Series]:
    text = _text(values)
    split = text.map(_SPLIT)
    return split.where(split.notna(), np.nan).astype(object), split.isna() & (text != "")


def resolve_paths(values: pd.Series, root: str | os.PathLike,
                  must_exist: bool = True) -> tuple[pd.Series, pd.Series]:
    """Absolute paths (relative ones resolved against ``root``) and a reason per bad row (or None).
    Paths that escape ``root`` are refused: lexically (``..`` or absolute elsewhere) and after
    resolving symlinks (a link inside data.root pointing outside it). Each distinct value is
    checked once."""
    base = os.path.normpath(os.path.abspath(os.fspath(root)))
    real_base = os.path.realpath(base)
    seen: dict[str, tuple[object, object]] = {}

    def check(text: str) -> tuple[object, object]:
        full = os.path.normpath(text if os.path.isabs(text) else os.path.join(base, text))
        if os.path.commonpath([base, full]) != base:
            return np.nan, f"path {clip(text)!r} escapes data.root {base}"
        real = os.path.realpath(full)
        if os.path.commonpath([real_base, real]) != real_base:
            return np.nan, f"path {clip(text)!r} is a symlink to {clip(real)}, outside data.root {base}"
        if must_exist and not os.path.isfile(full):
            return full, f"file not found: {clip(full)}"
        if must_exist and (problem := quick_check(full)):
            return full, f"{problem}: {clip(full)}"
        return full, None

    resolved, reasons = [], []
    for value in values:
        if value is None or (isinstance(value, float) and math.isnan(value)) or not str(value).strip():
            resolved.append(np.nan), reasons.append("empty path")
            continue
        text = str(value).strip()
        if text not in seen:
            seen[text] = check(text)
        full, why = seen[text]
        resolved.append(full), reasons.append(why)
    return (pd.Series(resolved, index=values.index, dtype=object),
            pd.Series(reasons, index=values.index, dtype=object))


def finish_table(frame: pd.DataFrame, issues: RowIssues, origin: str,
                 counts: Mapping[str, int] | None = None) -> pd.DataFrame:
    """Apply the on_error policy, validate, and attach the report (attrs 'skipped' and 'counts')."""
    rows_read = len(frame)
    frame, skipped = issues.apply(frame)
    table = validate_table(frame.reset_index(drop=True), origin)
    table.attrs["skipped"] = skipped
    table.attrs["counts"] = {"rows_read": rows_read, "rows_skipped": rows_read - len(table),
                             **dict(counts or {})}
    return table


def load_csv_table(csv_path: str | os.PathLike, root: str | os.PathLike,
                   columns: Mapping[str, str] | None = None, on_error: str = "raise") -> pd.DataFrame:
    """Read a generic per-image CSV into the metadata table (see module docstring)."""
    csv_path, root = Path(csv_path), Path(root)
    if not root.is_dir():
        raise MetadataError(f"data.root {root} is not a folder; expected the folder holding the "
                            f"images that the CSV's paths are relative to")
    if not csv_path.is_file():
        raise MetadataError(f"CSV {csv_path} not found; expected {CSV_LAYOUT}")
    raw = pd.read_csv(csv_path, dtype=str, keep_default_na=False, skipinitialspace=True)
    mapping = {name: name for name in REQUIRED_COLUMNS}
    explicit = dict(columns or {})
    mapping.update(explicit)
    absent = [f"{k}→{v!r}" for k, v in explicit.items() if v not in raw.columns]
    for name in ("path", "patient_id"):
        if mapping[name] not in raw.columns:
            absent.append(f"{name}→{mapping[name]!r}")
    if absent:
        raise MetadataError(f"{csv_path}: column(s) {absent} not in the CSV header "
                            f"{list(raw.columns)}; expected {CSV_LAYOUT}")
    used = {mapping[name] for name in REQUIRED_COLUMNS if mapping[name] in raw.columns}
    frame = pd.DataFrame(index=raw.index)
    for name in REQUIRED_COLUMNS:
        source = mapping[name]
        frame[name] = raw[source].replace("", np.nan) if source in raw.columns else np.nan
    for extra in raw.columns:
        if extra not in used and extra not in frame.columns:
            frame[extra] = raw[extra].replace("", np.nan)
    frame["source_row"] = raw.index + 2  # line number in the file: header is line 1
    return normalise_frame(frame, root, RowIssues(csv_path, on_error), str(csv_path))


def normalise_frame(frame: pd.DataFrame, root: str | os.PathLike, issues: RowIssues,
                    origin: str, counts: Mapping[str, int] | None = None) -> pd.DataFrame:
    """Shared second half of every source: paths, ids, age, sex, view, labels, split, report."""
    relative = frame["_raw_source_value"] = frame["path"].copy()
    frame["path"], reasons = resolve_paths(frame["path"], root)
    issues.add(frame, reasons.notna(), reasons)
    for column in [c for c in frame.columns if c.endswith("_path") and c != "path"]:
        present = frame[column].notna()
        resolved, why = resolve_paths(frame.loc[present, column], root)
        frame[column] = frame[column].astype(object)
        frame.loc[present, column] = resolved
        why = why.reindex(frame.index).map(lambda r, c=column: f"{c}: {r}" if isinstance(r, str) else None)
        issues.add(frame, why.notna(), why)
    if frame["image_id"].isna().all():
        frame["image_id"] = relative.astype(str)
    issues.add(frame, frame["image_id"].isna(), "image_id missing")
    issues.add(frame, frame["patient_id"].isna(), "patient_id missing")
    frame["age"], age_errors, implausible = parse_ages(frame["age"])
    issues.add(frame, age_errors.notna(), age_errors)
    frame["sex"], bad_sex = normalise_sex(frame["sex"])
    issues.add(frame, bad_sex, "sex is not M/F/Male/Female or an unknown marker")
    frame["view"] = normalise_view(frame["view"])
    raw_labels = frame["cardiomegaly"]
    frame["cardiomegaly"], bad_label = normalise_labels(raw_labels)
    issues.add(frame, bad_label, "cardiomegaly " + raw_labels.astype(str) + " is not 0, 1 or blank")
    frame["split"], bad_split = normalise_split(frame["split"])
    issues.add(frame, bad_split, "split is not train/val/test/validate or blank")
    duplicated = frame["image_id"].duplicated(keep="first") & frame["image_id"].notna()
    issues.add(frame, duplicated, "duplicate image_id")
    all_counts = {"age_implausible": int(implausible.sum()), **dict(counts or {})}
    return finish_table(frame.drop(columns="_raw_source_value"), issues, origin, all_counts)


def load_csv_source(data_cfg) -> pd.DataFrame:
    """``data=csv``: ``data.csv`` (default ``metadata.csv``, relative to ``data.root``) read with
    ``data.columns`` (schema name → CSV column) and ``data.on_error``."""
    root = data_cfg.get("root")
    if not root:
        raise MetadataError("data.root is not set; point it at the folder holding the images")
    csv_path = Path(str(data_cfg.get("csv") or "metadata.csv"))
    csv_path = csv_path if csv_path.is_absolute() else Path(root) / csv_path
    columns = data_cfg.get("columns") or None
    return load_csv_table(csv_path, root, dict(columns) if columns else None,
                          on_error=str(data_cfg.get("on_error") or "raise"))
