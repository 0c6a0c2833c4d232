"""``data=nih``: NIH ChestX-ray14 exactly as distributed.

Layout under ``data.root``: ``Data_Entry_2017*.csv`` (``Image Index, Finding Labels, Follow-up #,
Patient ID, Patient Age, Patient Gender, View Position, OriginalImage[Width, Height],
OriginalImagePixelSpacing[x, y]``; the bracketed headers hold two values each and some copies end
rows with a trailing comma), optional ``train_val_list.txt`` / ``test_list.txt`` (official split:
the test list becomes ``test``; validation is carved patient-wise from the rest), and the PNGs under
``images/`` or ``images_001/images/`` ... ``images_012/images/``.

``data.cohort``: ``no_finding_vs_cardiomegaly`` (the original work: "No Finding" = 0, any finding
list containing Cardiomegaly = 1, every other image left out) or ``all`` (Cardiomegaly vs
everything else).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cxrssl.data.schema import MetadataError
from cxrssl.data.sources.csv import RowIssues, normalise_frame

COHORTS = ("no_finding_vs_cardiomegaly", "all")
LAYOUT = ("data.root must be the NIH ChestX-ray14 folder holding Data_Entry_2017*.csv, optional "
          "train_val_list.txt/test_list.txt, and the PNGs in images/ or images_001/images/ ... "
          "images_012/images/")
_RENAME = {"OriginalImage[Width": "original_width", "Height]": "original_height",
           "OriginalImagePixelSpacing[x": "pixel_spacing_x", "y]": "pixel_spacing_y",
           "Follow-up #": "follow_up", "Finding Labels": "finding_labels"}
_NEEDED = ("Image Index", "Finding Labels", "Patient ID", "Patient Age", "Patient Gender",
           "View Position")


def find_entry_csv(root: Path) -> Path:
    candidates = sorted(root.glob("Data_Entry_2017*.csv"))
    if not candidates:
        raise MetadataError(f"no Data_Entry_2017*.csv in {root}; {LAYOUT}")
    return candidates[-1]  # Data_Entry_2017_v2020.csv sorts after Data_Entry_2017.csv


def index_images(root: Path) -> dict[str, str]:
    """file name → path relative to root, over ``images/`` and ``images_*/images/``."""
    found: dict[str, str] = {}
    folders = [root / "images", *sorted(root.glob("images_*/images"))]
    for folder in folders:
        if folder.is_dir():
            with os.scandir(folder) as entries:
                for entry in entries:
                    found.setdefault(entry.name, str(Path(entry.path).relative_to(root)))
    if not found:
        raise MetadataError(f"no images found under {root}/images or {root}/images_*/images; {LAYOUT}")
    return found


def read_entries(csv_path: Path) -> pd.DataFrame:
    """The entry CSV with bracketed headers split into named fields and trailing commas dropped."""
    raw = pd.read_csv(csv_path, dtype=str, keep_default_na=False, index_col=False)
    raw = raw.drop(columns=[c for c in raw.columns if c.startswith("Unnamed")])
    missing = [c for c in _NEEDED if c not in raw.columns]
    if missing:
        raise MetadataError(f"{csv_path}: missing column(s) {missing}; header is {list(raw.columns)}")
    return raw.rename(columns=_RENAME)


def _official_split(root: Path, names: pd.Series) -> pd.Series:
    split = pd.Series(np.nan, index=names.index, dtype=object)
    test_list = root / "test_list.txt"
    if test_list.is_file():
        test = set(test_list.read_text().split())
        split[names.isin(test)] = "test"
    return split


def load_nih_table(data_cfg: Any) -> pd.DataFrame:
    root = Path(str(data_cfg.get("root") or "")).expanduser()
    if not str(data_cfg.get("root") or "") or not root.is_dir():
        raise MetadataError(f"data.root {str(root)!r} is not a folder; {LAYOUT}")
    cohort = str(data_cfg.get("cohort") or "no_finding_vs_cardiomegaly")
    if cohort not in COHORTS:
        raise MetadataError(f"data.cohort must be one of {COHORTS}, got {cohort!r}")
    csv_path = find_entry_csv(root)
    raw = read_entries(csv_path)
    findings = raw["finding_labels"].str.split("|").map(lambda xs: {x.strip() for x in xs})
    has_cardio = findings.map(lambda xs: "Cardiomegaly" in xs)
    no_finding = findings.map(lambda xs: xs == {"No Finding"})
    keep = has_cardio | no_finding if cohort == COHORTS[0] else pd.Series(True, index=raw.index)
    images = index_images(root)
    frame = pd.DataFrame({
        "image_id": raw["Image Index"].str.strip(),
        "path": raw["Image Index"].str.strip().map(lambda n: images.get(n, f"images/{n}")),
        "patient_id": raw["Patient ID"].str.strip().replace("", np.nan),
        "age": raw["Patient Age"].replace("", np.nan),
        "sex": raw["Patient Gender"],
        "view": raw["View Position"],
        "cardiomegaly": has_cardio.astype(float).astype(str),
        "split": _official_split(root, raw["Image Index"].str.strip()),
        "mask_path": np.nan,
    })
    for column in ("finding_labels", "follow_up", "original_width", "original_height",
                   "pixel_spacing_x", "pixel_spacing_y"):
        if column in raw:
            frame[column] = raw[column]
    frame["source_row"] = raw.index + 2
    frame = frame[keep]
    counts = {"cohort_excluded": int((~keep).sum())}
    issues = RowIssues(csv_path, str(data_cfg.get("on_error") or "raise"))
    table = normalise_frame(frame, root, issues, str(csv_path), counts)
    for column in ("original_width", "original_height", "pixel_spacing_x", "pixel_spacing_y"):
        if column in table:
            table[column] = pd.to_numeric(table[column], errors="coerce")
    return table
