from pathlib import Path

import numpy as np
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

from cxrssl.data.io import ImageReadError, read_image


def write_dicom(path: Path, pixels: np.ndarray, photometric: str = "MONOCHROME2",
                bits_stored: int = 12, window: tuple[float, float] | None = None,
                rescale: tuple[float, float] | None = None, suffix_dcm: bool = True) -> Path:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.PatientID = "DX", "X"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, bits_stored, bits_stored - 1
    ds.PixelRepresentation = 0
    if window:
        ds.WindowCenter, ds.WindowWidth = window
    if rescale:
        ds.RescaleSlope, ds.RescaleIntercept = rescale
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.fixture
def ramp() -> np.ndarray:
    return np.linspace(0, 4095, 24 * 16).reshape(24, 16).astype(np.uint16)


def test_monochrome2_12bit_full_range(tmp_path: Path, ramp):
    image = read_image(write_dicom(tmp_path / "a.dcm", ramp))
    assert image.dtype == np.float32 and image.shape == (24, 16)
    np.testing.assert_allclose(image, ramp / 4095.0, atol=1e-6)


def test_monochrome1_is_inverted(tmp_path: Path, ramp):
    normal = read_image(write_dicom(tmp_path / "m2.dcm", ramp))
    inverted = read_image(write_dicom(tmp_path / "m1.dcm", ramp, photometric="MONOCHROME1"))
    np.testing.assert_allclose(inverted, 1.0 - normal, atol=1e-6)


def test_window_is_applied_after_rescale(tmp_path: Path, ramp):
    # rescale: value = 2 * stored - 1000; window 1000..3000 in rescaled units
    image = read_image(write_dicom(tmp_path / "w.dcm", ramp, window=(2000, 2000),
                                   rescale=(2.0, -1000.0)))
    rescaled = 2.0 * ramp - 1000.0
    assert (image[rescaled <= 1000] == 0).all() and (image[rescaled >= 3000] == 1).all()
    inside = (rescaled > 1100) & (rescaled < 2900)
    expected = (rescaled[inside] - 1000) / 2000
    np.testing.assert_allclose(image[inside], expected, atol=0.01)


def test_16bit_and_detection_without_suffix(tmp_path: Path):
    pixels = np.linspace(0, 65535, 64).reshape(8, 8)
    path = write_dicom(tmp_path / "no_suffix", pixels, bits_stored=16)
    image = read_image(path)
    assert image.min() == 0.0 and image.max() == pytest.approx(1.0)


def test_broken_dicom_names_the_file(tmp_path: Path, ramp):
    path = write_dicom(tmp_path / "b.dcm", ramp)
    path.write_bytes(path.read_bytes()[:400])
    with pytest.raises(ImageReadError, match="b.dcm") as info:
        read_image(path)
    assert "DICOM" in info.value.reason


def test_dicom_rows_through_csv_source_and_dataset(tmp_path: Path, ramp):
    import pandas as pd
    from omegaconf import OmegaConf

    from cxrssl.data.dataset import CXRDataset
    from cxrssl.data.sources.csv import load_csv_table

    write_dicom(tmp_path / "m1.dcm", ramp, photometric="MONOCHROME1")
    write_dicom(tmp_path / "m2.dcm", ramp)
    pd.DataFrame({"path": ["m1.dcm", "m2.dcm"], "patient_id": ["a", "b"]}).to_csv(
        tmp_path / "meta.csv", index=False)
    table = load_csv_table(tmp_path / "meta.csv", tmp_path)
    dataset = CXRDataset(table, OmegaConf.create({"image_size": 8, "resize_mode": "stretch"}),
                         train=False)
    m1, m2 = dataset[0]["image"], dataset[1]["image"]
    assert m1.shape == (1, 8, 8) and (m1 + m2 - 1).abs().max() < 0.01
