"""Fuzzed metadata rows (issue 8 item 9): random cell values in the NIH, CheXpert, MIMIC and generic
CSV files, written into otherwise valid on-disk layouts.

Each load ends in exactly one of: a table that keeps the contract (validate_table passes, ages
plausible or missing, sex/view/split/label in their allowed sets) with the mutated row either kept
with a correctly parsed value or reported as skipped, or a ``MetadataError`` (a UserError) naming
the file. Never another exception or a hang. Bounded examples: default suite.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cxrssl.data.schema import MetadataError, validate_table
from cxrssl.data.sources import load_table
from cxrssl.errors import UserError
from tests.data.conftest import make_csv_dataset
from tests.data.test_real_sources import chexpert_cfg, make_chexpert, make_mimic, make_nih, nih_cfg

FUZZ = settings(max_examples=12, deadline=20000, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                       HealthCheck.too_slow])
#: Text that looks like the real thing, and the nasty kinds: empty, huge, unicode, numbers, separators.
CELL = st.one_of(
    st.text(max_size=40),
    st.sampled_from(["", "nan", "NaN", "-1", "-1.0", "1.0", "0", "2", "1e308", "inf", "M", "F", "PA", "AP",
                     "Male", "Female", "057Y", "002M", "999Y", "-5", "45.5", "LL", "../../etc/passwd", "/abs.png",
                     "a,b", '"quoted"', "x\ny", "train", "test", "validate"]),
    st.integers(-10**6, 10**6).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(str),
)


def _check(load, csv_path: Path) -> pd.DataFrame | None:
    try:
        table = load()
    except MetadataError as error:
        assert isinstance(error, UserError)
        assert csv_path.name in str(error) or str(csv_path.parent) in str(error), str(error)[:500]
        return None
    validate_table(table, "fuzzed")
    ages = table["age"].dropna()
    assert ((ages >= 0) & (ages <= 130)).all(), ages.describe()
    assert table["path"].map(lambda p: Path(p).is_file()).all()
    return table


def _mutate(csv_path: Path, row: int, column: str, value: str, **read) -> None:
    frame = pd.read_csv(csv_path, dtype=str, keep_default_na=False, index_col=False, **read)
    frame.loc[row % len(frame), column] = value
    frame.to_csv(csv_path, index=False, **({"compression": "gzip"} if csv_path.suffix == ".gz" else {}))


@pytest.fixture(scope="module")
def layouts(tmp_path_factory):
    root = tmp_path_factory.mktemp("layouts")
    make_nih(root / "nih", n=16)
    make_chexpert(root / "chexpert")
    make_mimic(root / "mimic")
    make_csv_dataset(root / "csv", n_patients=6)
    return root


def _fresh(layouts: Path, name: str, tmp: Path) -> Path:
    target = tmp / name
    if target.exists():
        shutil.rmtree(target)
    # images are shared read-only through symlinks; only the CSVs are copied and mutated
    shutil.copytree(layouts / name, target, symlinks=True,
                    ignore=lambda d, names: [n for n in names if n.endswith((".png", ".jpg"))])
    for image in (layouts / name).rglob("*"):
        if image.suffix in (".png", ".jpg"):
            link = target / image.relative_to(layouts / name)
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(image)
    return target


NIH_COLUMNS = ["Image Index", "Finding Labels", "Follow-up #", "Patient ID", "Patient Age", "Patient Gender",
               "View Position"]


@FUZZ
@given(row=st.integers(0, 100), column=st.sampled_from(NIH_COLUMNS), value=CELL,
       on_error=st.sampled_from(["raise", "skip"]))
def test_nih_rows(layouts, tmp_path_factory, row, column, value, on_error):
    root = _fresh(layouts, "nih", tmp_path_factory.mktemp("nih"))
    csv = root / "Data_Entry_2017_v2020.csv"
    _mutate(csv, row, column, value)
    table = _check(lambda: load_table(nih_cfg(root, on_error=on_error)), csv)
    if table is not None and column == "Patient Age":
        parsed = table.set_index("source_row")["age"].get(row % 16 + 2)
        if parsed is not None and not np.isnan(parsed):  # kept with an age: it must come from the text
            assert any(ch.isdigit() for ch in value), (value, parsed)


CHEXPERT_COLUMNS = ["Path", "Sex", "Age", "Frontal/Lateral", "AP/PA", "Cardiomegaly"]


@FUZZ
@given(row=st.integers(0, 100), column=st.sampled_from(CHEXPERT_COLUMNS), value=CELL,
       on_error=st.sampled_from(["raise", "skip"]))
def test_chexpert_rows(layouts, tmp_path_factory, row, column, value, on_error):
    parent = _fresh(layouts, "chexpert", tmp_path_factory.mktemp("chexpert"))
    csv = parent / "CheXpert-v1.0-small" / "train.csv"
    _mutate(csv, row, column, value)
    table = _check(lambda: load_table(chexpert_cfg(parent, on_error=on_error)), csv)
    if table is not None and column == "Cardiomegaly":
        assert set(table["cardiomegaly"].dropna()) <= {0.0, 1.0}


MIMIC_FILES = {"mimic-cxr-2.0.0-metadata.csv.gz": ["dicom_id", "subject_id", "study_id", "ViewPosition"],
               "mimic-cxr-2.0.0-chexpert.csv": ["subject_id", "study_id", "Cardiomegaly"],
               "mimic-cxr-2.0.0-split.csv": ["dicom_id", "split"],
               "patients.csv": ["subject_id", "gender", "anchor_age"]}


@FUZZ
@given(row=st.integers(0, 100), target=st.sampled_from([(f, c) for f, cs in MIMIC_FILES.items() for c in cs]),
       value=CELL, on_error=st.sampled_from(["raise", "skip"]))
def test_mimic_rows(layouts, tmp_path_factory, row, target, value, on_error):
    root = _fresh(layouts, "mimic", tmp_path_factory.mktemp("mimic"))
    name, column = target
    csv = root / name
    _mutate(csv, row, column, value, **({"compression": "gzip"} if name.endswith(".gz") else {}))
    cfg = nih_cfg(root, source="mimic", on_error=on_error, patients_csv="patients.csv", uncertain="ignore",
                  blank="zeros", frontal_only=True)
    _check(lambda: load_table(cfg), csv)


CSV_COLUMNS = ["image_id", "path", "patient_id", "age", "sex", "view", "cardiomegaly", "split"]


@FUZZ
@given(row=st.integers(0, 100), column=st.sampled_from(CSV_COLUMNS), value=CELL,
       on_error=st.sampled_from(["raise", "skip"]))
def test_csv_rows(layouts, tmp_path_factory, row, column, value, on_error):
    root = _fresh(layouts, "csv", tmp_path_factory.mktemp("csv"))
    csv = root / "metadata.csv"
    _mutate(csv, row, column, value)
    cfg = nih_cfg(root, source="csv", csv="metadata.csv", on_error=on_error)
    table = _check(lambda: load_table(cfg), csv)
    if table is not None and column == "sex" and on_error == "raise":
        kept = table.set_index("source_row")["sex"].get(row % 12 + 2)
        if isinstance(kept, str):  # a recognised sex came from a recognisable text, never from noise
            assert value.strip().upper()[:1] in ("M", "F"), (value, kept)
