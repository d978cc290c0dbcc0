"""DICOM files written by the tests with pydicom: grey radiographs with the tags a modality sets."""

from __future__ import annotations

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid


def write_dicom(
    path,
    pixels: np.ndarray,
    photometric: str = "MONOCHROME2",
    bits_stored: int = 12,
    rescale: tuple[float, float] | None = None,
    window: tuple[float, float] | None = None,
    voi_function: str | None = None,
    transfer_syntax=ExplicitVRLittleEndian,
    pixel_data: bytes | None = None,
) -> str:
    """Writes ``pixels`` (uint16 (H, W)) as a DICOM Part 10 file; ``pixel_data`` replaces the encoded pixels."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = transfer_syntax
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, bits_stored, bits_stored - 1
    ds.PixelRepresentation = 0
    if rescale is not None:
        ds.RescaleSlope, ds.RescaleIntercept = rescale
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    if voi_function is not None:
        ds.VOILUTFunction = voi_function
    if pixel_data is None:
        ds.PixelData = np.ascontiguousarray(pixels, np.uint16).tobytes()
    else:
        ds.PixelData = pixel_data
        ds["PixelData"].VR = "OB"
    ds.save_as(str(path), enforce_file_format=True)
    assert pydicom.dcmread(str(path)).Rows == pixels.shape[0]
    return str(path)


def radiograph(height: int = 60, width: int = 50, seed: int = 0) -> np.ndarray:
    """A 12-bit test image: a smooth gradient with noise, every value in 0..4095."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = 400 + 3000 * (x / width) * (0.5 + 0.5 * y / height)
    return np.clip(base + rng.normal(0, 150, base.shape), 0, 4095).astype(np.uint16)
