"""The synthetic phantom dataset: determinism, pixel-true labels, encoded physiology, caching."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
from scipy import stats

from cxrssl.data.schema import MetadataError, validate_table
from cxrssl.data.sources.phantom import render_phantom
from cxrssl.data.sources.synthetic import (MARKER, OWNER_MARKER, SyntheticSettings, default_root,
                                           generate_synthetic, load_synthetic_table, plan_dataset)

#: The easy preset: these tests pin the original generator (v2 has its own tests in test_synthetic_v2.py).
TINY = {"n_patients": 6, "native_size": 64, "workers": 1, "seed": 0, "preset": "easy"}


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _widest(mask: np.ndarray) -> int:
    """Independent re-implementation: widest run between first and last nonzero pixel of a row."""
    widths = [np.flatnonzero(row)[-1] - np.flatnonzero(row)[0] + 1 for row in mask if row.any()]
    return int(max(widths))


def _read(root: Path, rel: str) -> np.ndarray:
    image = cv2.imread(str(root / rel), cv2.IMREAD_UNCHANGED)
    assert image is not None, rel
    return image


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> tuple[Path, pd.DataFrame]:
    """~400 images at 64 px, generated with two worker processes."""
    root = tmp_path_factory.mktemp("cohort") / "set"
    cfg = {"n_patients": 160, "native_size": 64, "prevalence": 0.3, "label_noise": 0.1,
           "seed": 3, "workers": 2, "preset": "easy"}
    csv = generate_synthetic(root, cfg, progress=False)
    return root, pd.read_csv(csv)


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    a = generate_synthetic(tmp_path / "a", TINY, progress=False).parent
    b = generate_synthetic(tmp_path / "b", {**TINY, "workers": 2, "n_patients": 6}, progress=False).parent
    c = generate_synthetic(tmp_path / "c", {**TINY, "seed": 1}, progress=False).parent
    files_a = _files(a)
    assert len([f for f in files_a if f.startswith("images/")]) >= 6
    assert files_a == _files(b)
    files_c = _files(c)
    shared = set(files_a) & set(files_c) - {"generator.json", MARKER}
    assert any(files_a[f] != files_c[f] for f in shared) or set(files_a) != set(files_c)


def test_worker_processes_do_not_change_bytes(tmp_path):
    cfg = {**TINY, "n_patients": 24}
    one = generate_synthetic(tmp_path / "one", cfg, progress=False).parent
    two = generate_synthetic(tmp_path / "two", {**cfg, "workers": 2}, progress=False).parent
    assert _files(one) == _files(two)


def test_recorded_ctr_is_measured_from_saved_masks(cohort):
    root, table = cohort
    for row in table.head(60).itertuples():
        heart, lungs = _read(root, row.mask_path), _read(root, row.lung_mask_path)
        assert set(np.unique(heart)) <= {0, 255} and set(np.unique(lungs)) <= {0, 255}
        assert not (heart.astype(bool) & lungs.astype(bool)).any()
        assert row.ctr == pytest.approx(_widest(heart) / _widest(lungs), abs=1e-6)
    assert (table["cardiomegaly_true"] == (table["ctr"] > 0.5).astype(int)).all()


def test_label_noise_and_prevalence(cohort):
    _, table = cohort
    assert len(table) > 300
    flip_rate = (table["cardiomegaly"] != table["cardiomegaly_true"]).mean()
    assert flip_rate == pytest.approx(0.1, abs=0.01)
    assert table["cardiomegaly_true"].mean() == pytest.approx(0.3, abs=0.05)
    negatives = table.loc[table["cardiomegaly_true"] == 0, "ctr"]
    assert 0.40 < negatives.mean() < 0.49  # healthy hearts ~0.44, below the cut-off


def test_prevalence_setting_is_followed(tmp_path):
    low = pd.read_csv(generate_synthetic(tmp_path / "low", {**TINY, "n_patients": 80, "prevalence": 0.05},
                                         progress=False))
    assert low["cardiomegaly_true"].mean() < 0.12


def test_ctr_rises_with_age(cohort):
    _, table = cohort
    rho, p = stats.spearmanr(table["age"], table["ctr"])
    assert rho > 0.15 and p < 0.01
    healthy = table[table["cardiomegaly_true"] == 0]
    rho_h, p_h = stats.spearmanr(healthy["age"], healthy["ctr"])
    assert rho_h > 0.2 and p_h < 0.01  # not only through who is sick


def test_women_have_smaller_thorax(cohort):
    root, table = cohort
    width = table["lung_mask_path"].map(lambda rel: _widest(_read(root, rel)))
    women, men = width[table["sex"] == "F"], width[table["sex"] == "M"]
    assert len(women) > 30 and len(men) > 30
    assert women.mean() < men.mean() - 2  # pixels at 64 px
    assert stats.mannwhitneyu(women, men, alternative="less").pvalue < 1e-4


def test_ap_view_magnifies_the_heart():
    plan = plan_dataset(SyntheticSettings(n_patients=4, seed=5, preset="easy"))[0]
    pa = dataclasses.replace(plan.acquisition, view="PA", heart_magnification=1.0)
    ctr_pa = render_phantom(plan.anatomy, pa, 128).ctr
    for magnification in (1.10, 1.15):
        ap = dataclasses.replace(pa, view="AP", heart_magnification=magnification)
        ratio = render_phantom(plan.anatomy, ap, 128).ctr / ctr_pa
        assert ratio == pytest.approx(magnification, abs=0.03)


def test_ap_films_have_larger_ctr_in_the_cohort(cohort):
    _, table = cohort
    assert 0.2 < (table["view"] == "AP").mean() < 0.4
    assert table.loc[table["view"] == "AP", "ctr"].mean() > table.loc[table["view"] == "PA", "ctr"].mean()


def test_images_of_a_patient_share_identity(cohort):
    _, table = cohort
    per_patient = table.groupby("patient_id")
    assert (per_patient[["age", "sex"]].nunique() == 1).all().all()
    sizes = per_patient.size()
    assert sizes.min() >= 1 and sizes.max() <= 4 and (sizes > 1).mean() > 0.5
    assert table["image_id"].is_unique and table["age"].between(18, 90).all()


def test_interrupted_generation_is_redone(tmp_path):
    root = tmp_path / "set"
    csv = generate_synthetic(root, TINY, progress=False)
    original = _files(root)
    (root / MARKER).unlink()  # as if killed before finishing
    first_image = sorted((root / "images").iterdir())[0]
    first_image.write_bytes(b"half written")
    assert generate_synthetic(root, TINY, progress=False) == csv
    assert _files(root) == original
    stamp = (root / "metadata.csv").stat().st_mtime_ns
    generate_synthetic(root, TINY, progress=False)  # complete: left alone
    assert (root / "metadata.csv").stat().st_mtime_ns == stamp


def test_foreign_or_mismatched_folder_is_refused(tmp_path):
    root = tmp_path / "set"
    generate_synthetic(root, TINY, progress=False)
    with pytest.raises(MetadataError, match="other settings"):
        generate_synthetic(root, {**TINY, "seed": 9}, progress=False)
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(MetadataError, match="not created by cxrssl"):
        generate_synthetic(foreign, TINY, progress=False)
    assert (foreign / "notes.txt").exists()


def test_user_folder_in_synthetic_layout_is_never_deleted(tmp_path):
    """A user's data=csv folder has the synthetic layout (images/, masks/, metadata.csv): forgetting
    data=csv must refuse, name data=csv, and leave every byte of it in place."""
    user = tmp_path / "mydata"
    (user / "images").mkdir(parents=True)
    (user / "masks").mkdir()
    (user / "images" / "REAL_PATIENT_0001.png").write_bytes(b"\x89PNG real pixels")
    (user / "metadata.csv").write_text("image_id,path,patient_id\nA,images/REAL_PATIENT_0001.png,P1\n")
    before = _files(user)
    with pytest.raises(MetadataError, match="data=csv"):
        generate_synthetic(user, TINY, progress=False)
    assert _files(user) == before and sorted(p.name for p in user.iterdir()) == ["images", "masks", "metadata.csv"]


def test_empty_folder_is_filled_and_owned(tmp_path):
    root = tmp_path / "empty"
    root.mkdir()
    generate_synthetic(root, TINY, progress=False)
    assert (root / OWNER_MARKER).is_file() and (root / MARKER).is_file()


def test_cache_key_follows_output_settings(tmp_path, monkeypatch):
    base = SyntheticSettings.from_mapping(TINY)
    assert base.key() == SyntheticSettings.from_mapping({**TINY, "workers": 2}).key()
    for change in ({"seed": 1}, {"prevalence": 0.3}, {"native_size": 96}, {"markers": False},
                   {"images_per_patient": [1, 2]}, {"label_noise": 0.0}, {"ap_fraction": 0.5}):
        assert SyntheticSettings.from_mapping({**TINY, **change}).key() != base.key(), change
    monkeypatch.setenv("CXRSSL_CACHE", str(tmp_path))
    assert default_root(base) == tmp_path / "synthetic" / base.key()


@pytest.mark.parametrize("cfg, words", [({"n_patient": 3}, "n_patient"),
                                        ({"prevalence": 1.5}, "prevalence"),
                                        ({"images_per_patient": [3, 1]}, "images_per_patient"),
                                        ({"native_size": "big"}, "bad value")])
def test_bad_settings_name_the_key(cfg, words):
    with pytest.raises(MetadataError, match=words):
        SyntheticSettings.from_mapping(cfg)


def test_load_table_satisfies_schema(tmp_path, monkeypatch):
    from omegaconf import OmegaConf

    monkeypatch.setenv("CXRSSL_CACHE", str(tmp_path / "cache"))
    data_cfg = OmegaConf.load(Path(__file__).parents[2] / "conf/data/synthetic.yaml")
    data_cfg.synthetic = {**TINY, "images_per_patient": [1, 4], "markers": True}
    table = load_synthetic_table(data_cfg)
    validate_table(table, "synthetic")
    root = default_root(SyntheticSettings.from_mapping(data_cfg.synthetic))
    assert (root / MARKER).is_file()
    assert table["split"].isna().all()
    for column in ("path", "mask_path", "lung_mask_path"):
        assert all(Path(p).is_absolute() and Path(p).is_file() for p in table[column])
    assert table["ctr"].dtype == float and set(table["sex"]) <= {"M", "F"}
    assert set(table["view"]) <= {"PA", "AP"}
    image = _read(root, Path(table["path"][0]).relative_to(root).as_posix())
    assert image.dtype == np.uint8 and image.shape == (64, 64)
