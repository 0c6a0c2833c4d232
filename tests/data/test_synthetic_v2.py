"""Phantom v2 (the default preset): continuous CTR, reader labels, AP confounding, sites, pool;
and the easy preset pinned to the original generator's output."""
from __future__ import annotations

import hashlib
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from cxrssl.data.schema import MetadataError
from cxrssl.data.sources.phantom import measure_ctr
from cxrssl.data.sources.synthetic import (POOL_CSV, SyntheticSettings, generate_synthetic, load_synthetic_pool,
                                           plan_dataset)
from cxrssl.data.sources.synthetic_v2 import reader_labels

SMALL = {"n_patients": 30, "n_unlabelled_patients": 8, "native_size": 64, "workers": 1, "seed": 1}
#: Decoded pixels + CSV + generator.json of the easy preset at these settings, as produced by the
#: generator before v2 existed (commit 82a7592). Changes only if easy's output changes.
EASY_DIGEST = "ce433bf39b4b58bcfaad23ae8177ef857c4c889af082a4540cd60fac9d5f576b"


def _pixel_digest(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if not p.is_file() or p.name.startswith("."):
            continue
        h.update(str(p.relative_to(root)).encode())
        h.update(cv2.imread(str(p), cv2.IMREAD_UNCHANGED).tobytes() if p.suffix == ".png" else p.read_bytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> tuple[Path, pd.DataFrame, pd.DataFrame]:
    root = tmp_path_factory.mktemp("v2") / "set"
    csv = generate_synthetic(root, SMALL, progress=False)
    return root, pd.read_csv(csv), pd.read_csv(root / POOL_CSV)


def test_easy_preset_is_the_original_generator(tmp_path):
    root = generate_synthetic(tmp_path / "easy", {"n_patients": 6, "native_size": 64, "workers": 1, "seed": 0,
                                                  "preset": "easy"}, progress=False).parent
    assert _pixel_digest(root) == EASY_DIGEST
    assert not (root / POOL_CSV).exists()


def test_v2_is_deterministic_and_thread_independent(tmp_path, small):
    root, table, _ = small
    again = generate_synthetic(tmp_path / "again", {**SMALL, "workers": 2}, progress=False).parent
    assert _pixel_digest(again) == _pixel_digest(root)
    other = generate_synthetic(tmp_path / "other", {**SMALL, "seed": 2}, progress=False)
    assert not pd.read_csv(other)["ctr"].equals(table["ctr"])


def test_true_ctr_is_the_measured_ratio_without_ap_magnification(small):
    root, table, _ = small
    for row in table.itertuples():
        heart = cv2.imread(str(root / row.mask_path), cv2.IMREAD_GRAYSCALE)
        lungs = cv2.imread(str(root / row.lung_mask_path), cv2.IMREAD_GRAYSCALE)
        assert row.ctr_measured == pytest.approx(measure_ctr(heart, lungs), abs=1e-6)
    ap = table["view"] == "AP"
    assert ap.any() and (~ap).any()
    assert (table.loc[~ap, "ctr"] == table.loc[~ap, "ctr_measured"]).all()
    ratio = table.loc[ap, "ctr_measured"] / table.loc[ap, "ctr"]
    assert ratio.between(1.09, 1.16).all()  # magnified on the film, the truth unchanged
    assert (table["cardiomegaly_true"] == (table["ctr"] > 0.5).astype(int)).all()


def test_ctr_is_continuous_through_the_cut_off():
    plans = plan_dataset(SyntheticSettings(n_patients=3000))
    ctr = np.array([p.anatomy.heart_ctr for p in plans])
    assert ((ctr > 0.495) & (ctr < 0.505)).mean() > 0.02  # easy had none here
    assert (ctr > 0.5).mean() == pytest.approx(0.25, abs=0.02)


def test_reader_noise_sits_near_the_boundary_and_on_ap():
    s = SyntheticSettings(n_patients=10, label_noise=0.0, reader_noise=0.01)
    rng = np.random.default_rng(0)
    ctr = rng.uniform(0.38, 0.62, 40000)
    ap = rng.random(40000) < 0.5
    magnification = np.where(ap, 1.12, 1.0)
    wrong = reader_labels(ctr, magnification, ap, s) != (ctr > 0.5)
    near, far = np.abs(ctr - 0.5) < 0.01, np.abs(ctr - 0.5) > 0.05
    assert wrong[near].mean() > 0.2 and wrong[far & ~ap].mean() < 0.001
    assert wrong[ap].mean() > 2 * wrong[~ap].mean()
    assert (reader_labels(ctr, magnification, ap, s)[ap & (ctr < 0.5)]).mean() > 0.05  # AP over-calls
    flips = SyntheticSettings(n_patients=10, label_noise=0.1, reader_noise=0.0, reader_ap_correction=1.0)
    y = reader_labels(ctr, np.ones_like(ctr), np.zeros_like(ap), flips)
    assert (y != (ctr > 0.5)).mean() == pytest.approx(0.1, abs=1e-4)


def _ap_rate_by_age(**settings) -> tuple[float, float]:
    plans = plan_dataset(SyntheticSettings(n_patients=4000, **settings))
    age = np.array([p.anatomy.age for p in plans])
    ap = np.array([p.acquisition.view == "AP" for p in plans])
    return ap[age >= 70].mean(), ap[age < 40].mean()


def test_ap_is_commoner_in_older_patients_and_configurable():
    old, young = _ap_rate_by_age()
    assert old > young + 0.08
    old, young = _ap_rate_by_age(ap_confounding=0.0)
    assert abs(old - young) < 0.05


def test_sites_and_external_site(tmp_path, small):
    _, table, _ = small
    assert set(table["site"]) == {"A", "B"}
    plans = plan_dataset(SyntheticSettings(n_patients=5, site="C"))
    assert {p.findings.site for p in plans} == {"C"} and all(p.patient_id.startswith("CP") for p in plans)
    with pytest.raises(MetadataError, match="site"):
        SyntheticSettings.from_mapping({"site": "Z"})


def test_unlabelled_pool_is_patient_disjoint_and_unlabelled(tmp_path, small, monkeypatch):
    root, table, pool = small
    assert len(pool) >= 8 and pool["cardiomegaly"].isna().all() and pool["ctr"].notna().all()
    assert set(pool["patient_id"]).isdisjoint(table["patient_id"]) and pool["patient_id"].str.startswith("U").all()
    assert all((root / p).is_file() for p in pool["path"])
    loaded = load_synthetic_pool({"root": str(root), "synthetic": SMALL})
    assert len(loaded) == len(pool) and Path(loaded["path"].iloc[0]).is_absolute()
    assert SyntheticSettings().unlabelled_patients() == 4 * SyntheticSettings().n_patients
    assert SyntheticSettings(preset="easy").unlabelled_patients() == 0


def test_key_separates_presets_and_v2_settings():
    base = SyntheticSettings.from_mapping({})
    for change in ({"preset": "easy"}, {"age_coupling": 0.3}, {"site": "B"}, {"reader_noise": 0.02},
                   {"n_unlabelled_patients": 3}, {"devices": False}):
        assert SyntheticSettings.from_mapping(change).key() != base.key(), change
    easy = SyntheticSettings.from_mapping({"preset": "easy"})
    assert easy.key() == SyntheticSettings.from_mapping({"preset": "easy", "age_coupling": 0.5}).key()
    with pytest.raises(MetadataError, match="preset"):
        SyntheticSettings.from_mapping({"preset": "hard"})
