"""``data=mimic``: MIMIC-CXR-JPG 2.0.0 exactly as distributed by PhysioNet.

``data.root`` holds ``mimic-cxr-2.0.0-metadata.csv``, ``-chexpert.csv`` (labels per study),
``-split.csv`` (official train/validate/test) — each also accepted gzipped — and the JPEGs at
``files/p{first 2 digits of subject_id}/p{subject_id}/s{study_id}/{dicom_id}.jpg``.
Age and sex are optional: ``data.patients_csv`` names MIMIC-IV's ``patients.csv(.gz)`` (absolute, or
relative to ``data.root``); age = ``anchor_age + StudyDate year - anchor_year``. Labels follow the
CheXpert policies (``data.uncertain``, ``data.blank``); frontal (PA/AP) views only unless
``data.frontal_only=false``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cxrssl.data.schema import MetadataError
from cxrssl.data.sources.chexpert import label_policy
from cxrssl.data.sources.csv import RowIssues, normalise_frame

PREFIX = "mimic-cxr-2.0.0-"
LAYOUT = ("data.root must be the MIMIC-CXR-JPG folder holding mimic-cxr-2.0.0-metadata.csv, "
          "-chexpert.csv and -split.csv (or .csv.gz) and files/pXX/pSUBJECT/sSTUDY/DICOM_ID.jpg")
FRONTAL = ("PA", "AP")


def _find(root: Path, name: str) -> Path:
    for candidate in (root / f"{PREFIX}{name}.csv", root / f"{PREFIX}{name}.csv.gz"):
        if candidate.is_file():
            return candidate
    raise MetadataError(f"{root / (PREFIX + name)}.csv(.gz) not found; {LAYOUT}")


def _read(path: Path, needed: tuple[str, ...]) -> pd.DataFrame:
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    missing = [c for c in needed if c not in frame.columns]
    if missing:
        raise MetadataError(f"{path}: missing column(s) {missing}; header {list(frame.columns)}")
    return frame


def _ages(meta: pd.DataFrame, patients_csv: Path | None) -> tuple[pd.Series, pd.Series]:
    """(age text, sex) per metadata row; empty when no patients.csv is configured."""
    empty = pd.Series("", index=meta.index)
    if patients_csv is None:
        return empty, empty
    if not patients_csv.is_file():
        raise MetadataError(f"data.patients_csv {patients_csv} not found (MIMIC-IV hosp/"
                            f"patients.csv[.gz]); remove the key to load without age and sex")
    patients = _read(patients_csv, ("subject_id", "gender", "anchor_age", "anchor_year"))
    patients = patients.drop_duplicates("subject_id").set_index("subject_id")
    joined = patients.reindex(meta["subject_id"])
    year = pd.to_numeric(meta["StudyDate"].str[:4], errors="coerce").to_numpy()
    age = (pd.to_numeric(joined["anchor_age"], errors="coerce").to_numpy() + year
           - pd.to_numeric(joined["anchor_year"], errors="coerce").to_numpy())
    age_text = pd.Series(age, index=meta.index).map(lambda a: "" if np.isnan(a) else f"{a:g}")
    return age_text, pd.Series(joined["gender"].fillna("").to_numpy(), index=meta.index)


def load_mimic_table(data_cfg: Any) -> pd.DataFrame:
    root = Path(str(data_cfg.get("root") or "")).expanduser()
    if not str(data_cfg.get("root") or "") or not root.is_dir():
        raise MetadataError(f"data.root {str(root)!r} is not a folder; {LAYOUT}")
    meta_path = _find(root, "metadata")
    meta = _read(meta_path, ("dicom_id", "subject_id", "study_id", "ViewPosition", "StudyDate"))
    labels = _read(_find(root, "chexpert"), ("subject_id", "study_id", "Cardiomegaly"))
    splits = _read(_find(root, "split"), ("dicom_id", "split"))
    label_of = labels.drop_duplicates("study_id").set_index("study_id")["Cardiomegaly"]
    split_of = splits.drop_duplicates("dicom_id").set_index("dicom_id")["split"]
    patients_csv = data_cfg.get("patients_csv")
    patients_path = None
    if patients_csv:
        patients_path = Path(str(patients_csv)).expanduser()
        patients_path = patients_path if patients_path.is_absolute() else root / patients_path
    age, sex = _ages(meta, patients_path)
    subject = meta["subject_id"].str.strip()
    path = ("files/p" + subject.str[:2] + "/p" + subject + "/s" + meta["study_id"].str.strip()
            + "/" + meta["dicom_id"].str.strip() + ".jpg")
    study_label = meta["study_id"].map(label_of)
    frame = pd.DataFrame({
        "image_id": meta["dicom_id"].str.strip(), "path": path, "patient_id": subject.replace("", np.nan),
        "age": age, "sex": sex, "view": meta["ViewPosition"],
        "cardiomegaly": label_policy(study_label, str(data_cfg.get("uncertain") or "ignore"),
                                     str(data_cfg.get("blank") or "zeros"), str(meta_path)),
        "split": meta["dicom_id"].map(split_of).fillna(""), "mask_path": np.nan,
        "study_id": meta["study_id"], "source_row": meta.index + 2})
    # a study the labeller never saw is unknown, not negative: the blank policy is for blank cells
    frame.loc[study_label.isna(), "cardiomegaly"] = ""
    frontal = meta["ViewPosition"].str.strip().str.upper().isin(FRONTAL)
    frontal_only = bool(data_cfg.get("frontal_only", True))
    if frontal_only:
        frame = frame[frontal]
    counts = {"non_frontal_excluded": int((~frontal).sum()) if frontal_only else 0,
              "studies_without_labels": int(study_label.isna().sum())}
    issues = RowIssues(meta_path, str(data_cfg.get("on_error") or "raise"))
    return normalise_frame(frame, root, issues, str(meta_path), counts)
