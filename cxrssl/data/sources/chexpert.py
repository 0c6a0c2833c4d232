"""``data=chexpert``: CheXpert (full or ``-small``) exactly as distributed.

``data.root`` is either the folder holding ``train.csv`` / ``valid.csv`` (e.g.
``CheXpert-v1.0-small/``) or its parent; CSV paths such as
``CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg`` are resolved either way.
Columns used: ``Path, Sex, Age, Frontal/Lateral, AP/PA, Cardiomegaly``.

Label policy (shared with MIMIC, whose labels come from the same labeller):
``data.uncertain`` maps -1: ``ones`` | ``zeros`` | ``ignore`` (NaN: excluded from loss and metrics);
``data.blank`` maps a blank cell ("not mentioned"): ``zeros`` (default, the usual reading) |
``ignore``. ``valid.csv`` (radiologist-labelled) is the official ``test`` split by default
(``data.valid_split=val`` to use it for validation instead). Frontal views only unless
``data.frontal_only=false``. Age 0 and Sex "Unknown" become missing.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cxrssl.data.schema import MetadataError
from cxrssl.data.sources.csv import RowIssues, normalise_frame

UNCERTAIN_POLICIES = ("ones", "zeros", "ignore")
BLANK_POLICIES = ("zeros", "ignore")
LAYOUT = ("data.root must be the CheXpert folder holding train.csv and valid.csv (with train/ and "
          "valid/ image folders), or its parent")


def label_policy(values: pd.Series, uncertain: str, blank: str, origin: str) -> pd.Series:
    """CheXpert-labeller values (1, 0, -1, blank) → '1.0' / '0.0' / '' strings for the CSV parser;
    any other value is passed through so the parser reports it as a bad row."""
    if uncertain not in UNCERTAIN_POLICIES:
        raise MetadataError(f"data.uncertain must be one of {UNCERTAIN_POLICIES}, got {uncertain!r}")
    if blank not in BLANK_POLICIES:
        raise MetadataError(f"data.blank must be one of {BLANK_POLICIES}, got {blank!r}")
    text = values.astype(object).where(values.notna(), "").astype(str).str.strip()
    number = pd.to_numeric(text, errors="coerce")
    mapped = text.copy()
    mapped[number == 1] = "1.0"
    mapped[number == 0] = "0.0"
    mapped[number == -1] = {"ones": "1.0", "zeros": "0.0", "ignore": ""}[uncertain]
    mapped[text == ""] = "0.0" if blank == "zeros" else ""
    return mapped


def find_csv_dir(root: Path) -> Path:
    if (root / "train.csv").is_file() or (root / "valid.csv").is_file():
        return root
    inner = sorted(p.parent for p in root.glob("*/train.csv"))
    if not inner:
        raise MetadataError(f"no train.csv/valid.csv in {root} or its subfolders; {LAYOUT}")
    return inner[-1]


def _read_split(csv_path: Path, split: float | str, data_cfg: Any) -> pd.DataFrame:
    raw = pd.read_csv(csv_path, dtype=str, keep_default_na=False)
    missing = [c for c in ("Path", "Sex", "Age", "Frontal/Lateral", "AP/PA", "Cardiomegaly")
               if c not in raw.columns]
    if missing:
        raise MetadataError(f"{csv_path}: missing column(s) {missing}; header {list(raw.columns)}")
    prefix = csv_path.parent.name + "/"
    relative = raw["Path"].str.strip().map(lambda p: p[len(prefix):] if p.startswith(prefix) else p)
    patient = relative.str.extract(r"(patient\d+)", expand=False)
    age = pd.to_numeric(raw["Age"], errors="coerce")
    frame = pd.DataFrame({
        "image_id": relative, "path": relative, "patient_id": patient,
        "age": raw["Age"].where(age != 0, ""),  # CheXpert writes 0 for unknown age
        "sex": raw["Sex"], "view": raw["AP/PA"],
        "cardiomegaly": label_policy(raw["Cardiomegaly"], str(data_cfg.get("uncertain") or "ignore"),
                                     str(data_cfg.get("blank") or "zeros"), str(csv_path)),
        "split": split, "mask_path": np.nan, "frontal_lateral": raw["Frontal/Lateral"],
        "cardiomegaly_raw": raw["Cardiomegaly"], "source_row": raw.index + 2,
        "source_file": str(csv_path)})
    return frame


def load_chexpert_table(data_cfg: Any) -> pd.DataFrame:
    root = Path(str(data_cfg.get("root") or "")).expanduser()
    if not str(data_cfg.get("root") or "") or not root.is_dir():
        raise MetadataError(f"data.root {str(root)!r} is not a folder; {LAYOUT}")
    csv_dir = find_csv_dir(root)
    valid_split = str(data_cfg.get("valid_split") or "test")
    frames = [_read_split(csv_dir / name, split, data_cfg)
              for name, split in (("train.csv", np.nan), ("valid.csv", valid_split))
              if (csv_dir / name).is_file()]
    frame = pd.concat(frames, ignore_index=True)
    frontal_only = bool(data_cfg.get("frontal_only", True))
    lateral = frame["frontal_lateral"].str.strip().str.lower() == "lateral"
    if frontal_only:
        frame = frame[~lateral]
    origin = " + ".join(str(csv_dir / n) for n in ("train.csv", "valid.csv") if (csv_dir / n).is_file())
    issues = RowIssues(origin, str(data_cfg.get("on_error") or "raise"))
    counts = {"lateral_excluded": int(lateral.sum()) if frontal_only else 0,
              "uncertain_labels": int((pd.to_numeric(frame["cardiomegaly_raw"], errors="coerce")
                                       == -1).sum())}
    return normalise_frame(frame, csv_dir, issues, origin, counts)
