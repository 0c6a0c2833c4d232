from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from omegaconf import OmegaConf

from cxrssl.data.schema import REQUIRED_COLUMNS, MetadataError
from cxrssl.data.sources import load_table
from cxrssl.data.sources.csv import load_csv_table, parse_age


def _rewrite(csv_path: Path, **changes) -> None:
    """changes: column -> {row_index: new value}."""
    frame = pd.read_csv(csv_path, dtype=str, keep_default_na=False)
    for column, values in changes.items():
        if column not in frame:
            frame[column] = ""
        for index, value in values.items():
            frame.loc[index, column] = value
    frame.to_csv(csv_path, index=False)


def test_reads_generic_layout(csv_dataset: Path):
    table = load_csv_table(csv_dataset, csv_dataset.parent)
    assert list(table.columns[: len(REQUIRED_COLUMNS)]) == list(REQUIRED_COLUMNS)
    assert len(table) == 24 and table["patient_id"].nunique() == 12
    assert all(Path(p).is_absolute() and Path(p).is_file() for p in table["path"])
    assert set(table["sex"]) == {"M", "F"} and set(table["view"]) == {"PA", "AP"}
    assert table["age"].dtype == np.float64 and table.loc[0, "age"] == 20.0
    assert "ctr" in table.columns and table["split"].isna().all()
    assert table["source_row"].tolist() == list(range(2, 26))
    assert table.attrs["skipped"] == [] and table.attrs["counts"]["rows_read"] == 24


def test_column_mapping_and_extra_path_columns(tmp_path: Path, make_dataset):
    csv_path = make_dataset(tmp_path, n_patients=3, with_masks=True)
    frame = pd.read_csv(csv_path, dtype=str, keep_default_na=False)
    frame = frame.rename(columns={"path": "Image", "patient_id": "PID", "cardiomegaly": "label"})
    frame["lung_mask_path"] = frame["mask_path"]
    frame.to_csv(csv_path, index=False)
    with pytest.raises(MetadataError, match="path"):
        load_csv_table(csv_path, tmp_path)
    table = load_csv_table(csv_path, tmp_path,
                           columns={"path": "Image", "patient_id": "PID", "cardiomegaly": "label"})
    assert table["cardiomegaly"].tolist() == [1.0, 1.0, 0.0, 0.0, 0.0, 0.0]
    for column in ("mask_path", "lung_mask_path"):
        assert all(Path(p).is_absolute() and Path(p).is_file() for p in table[column])
    with pytest.raises(MetadataError, match="'Nope'"):
        load_csv_table(csv_path, tmp_path, columns={"path": "Image", "patient_id": "PID",
                                                     "age": "Nope"})


def test_sex_view_and_age_normalised(csv_dataset: Path):
    _rewrite(csv_dataset, sex={0: "Male", 1: "female", 2: "Unknown", 3: ""},
             view={0: "AP Supine", 1: "LL", 2: "posteroanterior"},
             age={0: "057Y", 1: "003M", 2: "010D", 3: "130", 4: "-2", 5: "", 6: "30M"})
    table = load_csv_table(csv_dataset, csv_dataset.parent)
    assert table["sex"].iloc[:4].tolist()[:2] == ["M", "F"] and table["sex"].iloc[2:4].isna().all()
    assert table["view"].iloc[0] == "AP" and pd.isna(table["view"].iloc[1])
    assert table["view"].iloc[2] == "PA"
    assert table["age"].iloc[:3].tolist() == [57.0, 0.0, 0.0]
    assert table["age"].iloc[3:6].isna().all() and table["age"].iloc[6] == 2.0
    assert table.attrs["counts"]["age_implausible"] == 2


@pytest.mark.parametrize("value,expected", [(57, 57.0), ("057Y", 57.0), ("003M", 0.0),
                                            ("010D", 0.0), ("24M", 2.0), (" 45 ", 45.0)])
def test_parse_age(value, expected):
    assert parse_age(value) == expected


def test_parse_age_rejects_text():
    with pytest.raises(ValueError, match="abc"):
        parse_age("abc")


@pytest.mark.parametrize("bad_path,reason", [("../outside.png", "escapes"),
                                             ("/etc/passwd", "escapes"),
                                             ("images/missing.png", "not found")])
def test_bad_paths_raise_naming_row_or_are_skipped(csv_dataset: Path, bad_path, reason):
    (csv_dataset.parent.parent / "outside.png").write_bytes(b"x")
    _rewrite(csv_dataset, path={3: bad_path})
    with pytest.raises(MetadataError, match=rf"row 5 .*{reason}") as info:
        load_csv_table(csv_dataset, csv_dataset.parent)
    assert str(csv_dataset) in str(info.value) and "on_error=skip" in str(info.value)
    table = load_csv_table(csv_dataset, csv_dataset.parent, on_error="skip")
    assert len(table) == 23 and "p001_1" not in set(table["image_id"])
    [skipped] = table.attrs["skipped"]
    assert skipped["row"] == 5 and skipped["path"] == bad_path and reason in skipped["reason"]
    assert table.attrs["counts"]["rows_skipped"] == 1


def test_bad_values_are_errors_not_nan(csv_dataset: Path):
    _rewrite(csv_dataset, cardiomegaly={0: "-1"}, sex={1: "Q"}, age={2: "old"}, split={3: "dev"})
    with pytest.raises(MetadataError) as info:
        load_csv_table(csv_dataset, csv_dataset.parent)
    message = str(info.value)
    for row, word in ((2, "cardiomegaly"), (3, "sex"), (4, "age"), (5, "split")):
        assert f"row {row} " in message and word in message
    table = load_csv_table(csv_dataset, csv_dataset.parent, on_error="skip")
    assert len(table) == 20 and len(table.attrs["skipped"]) == 4


def test_missing_csv_or_root_names_expected_layout(tmp_path: Path):
    with pytest.raises(MetadataError, match="not a folder"):
        load_csv_table(tmp_path / "x.csv", tmp_path / "nowhere")
    with pytest.raises(MetadataError, match="one row per image"):
        load_csv_table(tmp_path / "x.csv", tmp_path)


def test_official_split_values_normalised(csv_dataset: Path):
    _rewrite(csv_dataset, split={0: "validate", 1: "valid", 2: "TEST", 3: "train"})
    table = load_csv_table(csv_dataset, csv_dataset.parent)
    assert table["split"].iloc[:4].tolist() == ["val", "val", "test", "train"]


def test_load_table_dispatches_on_source(csv_dataset: Path):
    cfg = OmegaConf.create({"source": "csv", "root": str(csv_dataset.parent), "csv": "metadata.csv",
                            "on_error": "raise", "columns": None})
    table = load_table(cfg)
    assert len(table) == 24 and table.attrs["source"] == "csv"
    with pytest.raises(MetadataError, match="unknown data.source 'nope'"):
        load_table(OmegaConf.create({"source": "nope"}))
