"""Documented data-layer behaviours that had no test: NIH's Data_Entry_2017.csv fallback,
CheXpert `data.valid_split=val`, MIMIC `frontal_only=false`, 10- and 14-bit PNGs, the DICOM VOI
LUT sequence, and `data.clahe_clip`."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from omegaconf import OmegaConf
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from cxrssl.data.io import read_image
from cxrssl.data.sources import load_table
from cxrssl.data.transforms import build_preprocess
from tests.data.test_dicom import write_dicom
from tests.data.test_real_sources import chexpert_cfg, make_chexpert, make_mimic, make_nih, nih_cfg


def test_nih_reads_the_original_data_entry_csv(tmp_path: Path):
    root = make_nih(tmp_path / "nih")
    new = load_table(nih_cfg(root))
    (root / "Data_Entry_2017_v2020.csv").rename(root / "Data_Entry_2017.csv")
    old = load_table(nih_cfg(root))
    assert len(old) == len(new) > 0
    assert list(old["image_id"]) == list(new["image_id"])
    assert (old["cardiomegaly"].to_numpy() == new["cardiomegaly"].to_numpy()).all()


def test_chexpert_valid_split_val_uses_the_valid_csv_for_validation(tmp_path: Path):
    root = make_chexpert(tmp_path)
    default = load_table(chexpert_cfg(root))
    as_val = load_table(chexpert_cfg(root, valid_split="val"))
    valid_patients = {"patient64541", "patient64542", "patient64543"}
    assert set(default.loc[default["split"] == "test", "patient_id"]) == valid_patients
    assert set(as_val.loc[as_val["split"] == "val", "patient_id"]) == valid_patients
    assert "test" not in set(as_val["split"].dropna())


def test_mimic_frontal_only_false_keeps_lateral_views(tmp_path: Path):
    root = make_mimic(tmp_path / "mimic")
    cfg = {"source": "mimic", "root": str(root), "patients_csv": "patients.csv", "uncertain": "ignore",
           "blank": "zeros", "on_error": "raise"}
    frontal = load_table(OmegaConf.create(cfg))
    everything = load_table(OmegaConf.create({**cfg, "frontal_only": False}))
    assert len(frontal) == 12 and len(everything) == 24
    assert everything.attrs["counts"]["non_frontal_excluded"] == 0
    assert (everything["image_id"].str.contains("LA")).sum() == 12


def test_10_and_14_bit_pngs_are_scaled_by_their_depth(tmp_path: Path):
    """A 16-bit container holding 10- or 14-bit data is scaled by 2**bits - 1, not by 65535."""
    ramp = np.linspace(0, 1, 20 * 12).reshape(20, 12)
    for bits in (10, 14):
        peak = 2**bits - 1
        pixels = np.round(ramp * peak).astype(np.uint16)
        path = tmp_path / f"b{bits}.png"
        assert cv2.imwrite(str(path), pixels)
        image = read_image(path)
        assert image.max() == 1.0 and image.min() == 0.0
        np.testing.assert_allclose(image, pixels / peak, atol=1e-6)
    dim = np.round(ramp * 700).astype(np.uint16)  # max 700 fits 10 bits: scale 1023
    assert cv2.imwrite(str(tmp_path / "dim.png"), dim)
    np.testing.assert_allclose(read_image(tmp_path / "dim.png"), dim / 1023, atol=1e-6)


def test_dicom_voi_lut_sequence_is_applied(tmp_path: Path):
    """The LUT (not a min-max of the stored values) decides the output: an inverting, 8-bit LUT."""
    stored = np.linspace(0, 255, 16 * 16).reshape(16, 16).astype(np.uint16)
    path = write_dicom(tmp_path / "lut.dcm", stored, bits_stored=8)
    import pydicom

    ds = pydicom.dcmread(path)
    item = Dataset()
    item.add_new(0x00283002, "US", [256, 0, 8])  # LUTDescriptor: 256 entries, first value 0, 8 bits
    item.add_new(0x00283006, "US", list(range(255, -1, -1)))  # LUTData: stored v → 255 - v
    ds.VOILUTSequence = Sequence([item])
    ds.save_as(path, enforce_file_format=True)
    image = read_image(path)
    np.testing.assert_allclose(image, (255 - stored) / 255.0, atol=1 / 255)


def _clahe_output(image: np.ndarray, clip: float) -> np.ndarray:
    cfg = OmegaConf.create({"image_size": 64, "equalize": "clahe", "clahe_clip": clip, "resize_mode": "stretch"})
    return build_preprocess(cfg)(image=image)["image"]


def test_clahe_clip_controls_contrast_enhancement():
    rng = np.random.default_rng(0)
    image = (100 + rng.normal(0, 6, (64, 64))).clip(0, 255).astype(np.uint8)  # low contrast
    gentle, strong = _clahe_output(image, 1.0), _clahe_output(image, 8.0)
    assert not np.array_equal(gentle, strong)
    assert strong.astype(float).std() > 1.5 * gentle.astype(float).std()
    plain = build_preprocess(OmegaConf.create({"image_size": 64, "equalize": "none", "resize_mode": "stretch"}))(
        image=image)["image"]
    assert strong.astype(float).std() > plain.astype(float).std()
