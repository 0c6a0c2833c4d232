"""NIH, CheXpert and MIMIC-CXR-JPG layouts built on disk with their real headers and quirks."""
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
from omegaconf import OmegaConf

from cxrssl.data.io import read_image
from cxrssl.data.loaders import prepare_table
from cxrssl.data.schema import MetadataError
from cxrssl.data.sources import load_table

NIH_HEADER = ("Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,"
              "View Position,OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y],")
FINDINGS = ["No Finding", "Cardiomegaly", "Effusion|Cardiomegaly", "Atelectasis", "No Finding",
            "Cardiomegaly|Edema", "Infiltration", "No Finding"]


def _img(rng, kind: int) -> np.ndarray:
    base = (rng.random((20, 16)) * 200).astype(np.uint8)
    if kind == 1:
        return cv2.cvtColor(base, cv2.COLOR_GRAY2BGRA)  # an RGBA copy
    if kind == 2:
        return base.astype(np.uint16) * 257  # a 16-bit copy
    return base


def make_nih(root: Path, n: int = 32) -> Path:
    rng = np.random.default_rng(0)
    lines, test = [NIH_HEADER], []
    for i in range(n):
        patient = i // 2 + 1
        name = f"{patient:08d}_{i % 2:03d}.png"
        folder = root / ("images_001" if i < n // 2 else "images_002") / "images"
        folder.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(folder / name), _img(rng, i % 3))
        age = f"{40 + i:03d}Y" if i % 5 else "002M"
        lines.append(f"{name},{FINDINGS[i % len(FINDINGS)]},{i % 2},{patient},{age},"
                     f"{'M' if patient % 2 else 'F'},{'PA' if i % 3 else 'AP'},2500,2048,0.143,0.143,")
        if patient > 12:
            test.append(name)
    (root / "Data_Entry_2017_v2020.csv").write_text("\n".join(lines) + "\n")
    (root / "test_list.txt").write_text("\n".join(test) + "\n")
    (root / "train_val_list.txt").write_text("\n".join(
        l.split(",")[0] for l in lines[1:] if l.split(",")[0] not in test) + "\n")
    return root


def nih_cfg(root: Path, **over):
    return OmegaConf.create({"source": "nih", "root": str(root), "on_error": "raise",
                             "cohort": "no_finding_vs_cardiomegaly", "val_fraction": 0.2,
                             "test_fraction": 0.2, "split_seed": 0, **over})


def test_nih_layout_labels_ages_and_official_split(tmp_path: Path):
    root = make_nih(tmp_path / "nih")
    table = load_table(nih_cfg(root))
    kept = [f for f in FINDINGS if f == "No Finding" or "Cardiomegaly" in f]
    assert len(table) == 32 * len(kept) // len(FINDINGS)
    assert table.attrs["counts"]["cohort_excluded"] == 32 - len(table)
    positive = table["finding_labels"].str.contains("Cardiomegaly")
    assert (table.loc[positive, "cardiomegaly"] == 1).all()
    assert (table.loc[~positive, "cardiomegaly"] == 0).all()
    assert {"original_width", "pixel_spacing_y"} <= set(table.columns)
    assert table["original_width"].eq(2500).all() and "Unnamed: 11" not in table.columns
    first = table.set_index("image_id").loc["00000001_000.png"]
    assert first["age"] == 0.0 and first["sex"] == "M" and first["view"] == "AP"
    assert Path(first["path"]).parent == root / "images_001" / "images"
    assert table.set_index("image_id").loc["00000001_001.png", "age"] == 41.0
    assert set(table.loc[table["patient_id"].astype(int) > 12, "split"]) == {"test"}
    assert table.loc[table["patient_id"].astype(int) <= 12, "split"].isna().all()
    everything = load_table(nih_cfg(root, cohort="all"))
    assert len(everything) == 32 and everything["cardiomegaly"].sum() == positive.sum()
    for path in table["path"]:  # 8-bit, RGBA and 16-bit copies all read as 2-D [0, 1]
        image = read_image(path)
        assert image.ndim == 2 and 0 <= image.min() and image.max() <= 1


def test_nih_splits_keep_official_test(tmp_path: Path):
    table = prepare_table(nih_cfg(make_nih(tmp_path / "nih", n=64)))
    test_patients = set(table.loc[table["split"] == "test", "patient_id"].astype(int))
    assert test_patients and min(test_patients) > 12
    assert set(table["split"]) == {"train", "val", "test"}


def test_nih_bad_files_and_missing_layout(tmp_path: Path):
    root = make_nih(tmp_path / "nih")
    (root / "images_001/images/00000001_000.png").unlink()
    truncated = root / "images_002/images/00000016_001.png"
    truncated.write_bytes(truncated.read_bytes()[:60])
    with pytest.raises(MetadataError) as info:
        load_table(nih_cfg(root, cohort="all"))
    assert "row 2 " in str(info.value) and "not found" in str(info.value)
    assert "row 33 " in str(info.value) and "truncated" in str(info.value)
    table = load_table(nih_cfg(root, cohort="all", on_error="skip"))
    assert len(table) == 30 and {r["row"] for r in table.attrs["skipped"]} == {2, 33}
    with pytest.raises(MetadataError, match="Data_Entry_2017"):
        load_table(nih_cfg(tmp_path))
    with pytest.raises(MetadataError, match="not a folder"):
        load_table(nih_cfg(tmp_path / "nowhere"))


CHEXPERT_HEADER = ["Path", "Sex", "Age", "Frontal/Lateral", "AP/PA", "No Finding",
                   "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Opacity", "Support Devices"]


def make_chexpert(parent: Path) -> Path:
    rng = np.random.default_rng(1)
    root = parent / "CheXpert-v1.0-small"
    rows = {"train": [], "valid": []}
    labels = ["1.0", "0.0", "-1.0", "", "1.0", "0.0"]
    sexes = ["Male", "Female", "Unknown", "Female", "Male", "Male"]
    for split, n_patients in (("train", 10), ("valid", 3)):
        for p in range(n_patients):
            pid = p + 1 if split == "train" else 64541 + p
            for view, lateral in (("view1_frontal.jpg", False), ("view2_lateral.jpg", True)):
                rel = f"{split}/patient{pid:05d}/study1/{view}"
                (root / rel).parent.mkdir(parents=True, exist_ok=True)
                cv2.imwrite(str(root / rel), _img(rng, 0))
                k = p % len(labels)
                label = labels[k] if split == "train" else ("1.0" if p == 0 else "0.0")
                rows[split].append([f"CheXpert-v1.0-small/{rel}", sexes[k], str(0 if k == 3 else 50 + p),
                                    "Lateral" if lateral else "Frontal", "" if lateral else ("AP" if p % 2 else "PA"),
                                    "", "", label, "", "1.0"])
    for split, data in rows.items():
        pd.DataFrame(data, columns=CHEXPERT_HEADER).to_csv(root / f"{split}.csv", index=False)
    return root


def chexpert_cfg(root: Path, **over):
    return OmegaConf.create({"source": "chexpert", "root": str(root), "on_error": "raise",
                             "uncertain": "ignore", "blank": "zeros", "frontal_only": True, **over})


@pytest.mark.parametrize("use_parent", [False, True])
def test_chexpert_policies_and_root_either_level(tmp_path: Path, use_parent: bool):
    root = make_chexpert(tmp_path)
    table = load_table(chexpert_cfg(tmp_path if use_parent else root))
    assert len(table) == 13 and table.attrs["counts"]["lateral_excluded"] == 13
    assert all(Path(p).is_file() and Path(p).is_relative_to(root) for p in table["path"])
    train = table[table["split"].isna()].set_index("patient_id")
    assert train.loc["patient00001", "cardiomegaly"] == 1.0
    assert train.loc["patient00002", "cardiomegaly"] == 0.0
    assert np.isnan(train.loc["patient00003", "cardiomegaly"])  # -1 ignored
    assert train.loc["patient00004", "cardiomegaly"] == 0.0  # blank → 0
    assert np.isnan(train.loc["patient00004", "age"]) and np.isnan(train.loc["patient00003", "sex"])
    assert train.loc["patient00001", "sex"] == "M" and train.loc["patient00002", "view"] == "AP"
    assert set(table.loc[table["split"].notna(), "patient_id"]) == {"patient64541", "patient64542",
                                                                     "patient64543"}
    assert set(table["split"].dropna()) == {"test"}
    ones = load_table(chexpert_cfg(root, uncertain="ones", blank="ignore")).set_index("patient_id")
    assert ones.loc["patient00003", "cardiomegaly"] == 1.0
    assert np.isnan(ones.loc["patient00004", "cardiomegaly"])
    zeros = load_table(chexpert_cfg(root, uncertain="zeros")).set_index("patient_id")
    assert zeros.loc["patient00003", "cardiomegaly"] == 0.0
    both = load_table(chexpert_cfg(root, frontal_only=False))
    assert len(both) == 26


def test_chexpert_bad_label_and_escaping_path(tmp_path: Path):
    root = make_chexpert(tmp_path)
    train = pd.read_csv(root / "train.csv", dtype=str, keep_default_na=False)
    train.loc[0, "Cardiomegaly"] = "2.0"
    train.loc[2, "Path"] = "CheXpert-v1.0-small/../secret.jpg"
    train.to_csv(root / "train.csv", index=False)
    with pytest.raises(MetadataError) as info:
        load_table(chexpert_cfg(root))
    message = str(info.value)
    assert "row 2 " in message and "cardiomegaly 2.0" in message
    assert "row 4 " in message and "escapes" in message
    with pytest.raises(MetadataError, match="uncertain"):
        load_table(chexpert_cfg(root, uncertain="maybe"))


def make_mimic(root: Path, with_patients: bool = True) -> Path:
    rng = np.random.default_rng(2)
    meta, labels, split, patients = [], [], [], []
    for s in range(6):
        subject = str(10000032 + s * 1111111)
        patients.append([subject, "F" if s % 2 else "M", str(50 + s), "2180", "2017 - 2019", ""])
        for t in range(2):
            study = str(50000000 + s * 10 + t)
            labels.append([subject, study, ["1.0", "0.0", "-1.0", ""][(s + t) % 4], ""])
            for view in ("PA", "LATERAL"):
                dicom = f"{s}{t}{view[:2]}-aaaa"
                path = root / f"files/p{subject[:2]}/p{subject}/s{study}/{dicom}.jpg"
                path.parent.mkdir(parents=True, exist_ok=True)
                cv2.imwrite(str(path), _img(rng, 0))
                meta.append([dicom, subject, study, "CHEST (PA AND LAT)", view, "20", "16",
                             f"{2181 + t}0513", "142345.0"])
                split.append([dicom, study, subject, ["train", "validate", "test"][s % 3]])
    columns = ["dicom_id", "subject_id", "study_id", "PerformedProcedureStepDescription",
               "ViewPosition", "Rows", "Columns", "StudyDate", "StudyTime"]
    pd.DataFrame(meta, columns=columns).to_csv(root / "mimic-cxr-2.0.0-metadata.csv.gz",
                                               index=False, compression="gzip")
    pd.DataFrame(labels, columns=["subject_id", "study_id", "Cardiomegaly", "No Finding"]).to_csv(
        root / "mimic-cxr-2.0.0-chexpert.csv", index=False)
    pd.DataFrame(split, columns=["dicom_id", "study_id", "subject_id", "split"]).to_csv(
        root / "mimic-cxr-2.0.0-split.csv", index=False)
    if with_patients:
        pd.DataFrame(patients, columns=["subject_id", "gender", "anchor_age", "anchor_year",
                                        "anchor_year_group", "dod"]).to_csv(root / "patients.csv",
                                                                           index=False)
    return root


def test_mimic_layout_join_and_split(tmp_path: Path):
    root = make_mimic(tmp_path / "mimic")
    cfg = OmegaConf.create({"source": "mimic", "root": str(root), "patients_csv": "patients.csv",
                            "uncertain": "ignore", "blank": "zeros", "on_error": "raise"})
    table = load_table(cfg)
    assert len(table) == 12 and table.attrs["counts"]["non_frontal_excluded"] == 12
    row = table.set_index("image_id").loc["01PA-aaaa"]
    assert row["age"] == 50 + 2182 - 2180 and row["sex"] == "M" and row["view"] == "PA"
    assert row["split"] == "train" and Path(row["path"]).is_file()
    assert set(table["split"]) == {"train", "val", "test"}
    by_study = table.set_index("study_id")["cardiomegaly"]
    assert by_study["50000000"] == 1.0 and by_study["50000001"] == 0.0
    assert np.isnan(by_study["50000011"]) and by_study["50000021"] == 0.0  # -1 ignored, blank → 0
    no_age = load_table(OmegaConf.merge(cfg, {"patients_csv": None}))
    assert no_age["age"].isna().all() and no_age["sex"].isna().all()
    with pytest.raises(MetadataError, match="patients"):
        load_table(OmegaConf.merge(cfg, {"patients_csv": "nope.csv"}))
    (root / "mimic-cxr-2.0.0-split.csv").unlink()
    with pytest.raises(MetadataError, match="split.csv"):
        load_table(cfg)


CONF = Path(__file__).resolve().parents[2] / "conf" / "data"


def test_shipped_configs_load_each_layout(tmp_path: Path, make_dataset):
    roots = {"nih": make_nih(tmp_path / "nih"), "chexpert": make_chexpert(tmp_path / "cx"),
             "mimic": make_mimic(tmp_path / "mimic"), "csv": make_dataset(tmp_path / "csv").parent}
    for name, root in roots.items():
        cfg = OmegaConf.merge(OmegaConf.load(CONF / f"{name}.yaml"), {"root": str(root)})
        table = prepare_table(cfg)
        assert len(table) > 0 and table["split"].notna().all(), name
        assert table.attrs["source"] == name
