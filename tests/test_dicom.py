"""DICOM input: rescale slope/intercept, VOI windowing, MONOCHROME1, compressed syntaxes, every reader."""

import numpy as np
import pytest
from dicom_fixtures import radiograph, write_dicom
from PIL import Image
from pydicom.encaps import encapsulate
from pydicom.uid import JPEGLSLossless

from effnet_jax.data import dicom, external, imaging
from effnet_jax.inference.prediction import Preprocessor


def read(path) -> np.ndarray:
    with open(path, "rb") as f:
        return np.asarray(imaging.decode_file(f.read(), str(path)))


def test_without_a_window_the_image_range_is_stretched_to_0_255(tmp_path):
    pixels = radiograph()
    got = read(write_dicom(tmp_path / "a.dcm", pixels))
    lo, hi = float(pixels.min()), float(pixels.max())
    expected = np.round((pixels.astype(np.float64) - lo) * (255.0 / (hi - lo))).astype(np.uint8)
    assert got.dtype == np.uint8 and got.shape == pixels.shape
    np.testing.assert_array_equal(got, expected)


def test_rescale_then_window_follow_the_standard(tmp_path):
    pixels = radiograph()
    # Hounsfield-like values 2 * p - 1024, shown through the window centre 1500, width 2000 (LINEAR_EXACT).
    got = read(
        write_dicom(tmp_path / "w.dcm", pixels, rescale=(2, -1024), window=(1500, 2000), voi_function="LINEAR_EXACT")
    )
    values = 2.0 * pixels - 1024
    expected = np.round(np.clip((values - 1500) / 2000 + 0.5, 0, 1) * 255)
    assert np.abs(got.astype(int) - expected).max() <= 1  # float rounding at .5 only
    assert np.mean(got == expected) > 0.99
    assert got.min() == 0 and got.max() == 255  # the window clips both ends of this image


def test_monochrome1_is_inverted_to_its_monochrome2_twin(tmp_path):
    pixels = radiograph()
    mono2 = read(write_dicom(tmp_path / "m2.dcm", pixels, rescale=(1, -100)))
    mono1 = read(write_dicom(tmp_path / "m1.dcm", 4095 - pixels, photometric="MONOCHROME1", rescale=(1, -100)))
    np.testing.assert_array_equal(mono1, mono2)
    windowed2 = read(write_dicom(tmp_path / "w2.dcm", pixels, window=(2048, 2048), voi_function="LINEAR_EXACT"))
    windowed1 = read(
        write_dicom(
            tmp_path / "w1.dcm", 4095 - pixels, "MONOCHROME1", window=(4095 - 2048, 2048), voi_function="LINEAR_EXACT"
        )
    )
    np.testing.assert_array_equal(windowed1, windowed2)


def test_a_compressed_syntax_without_a_decoder_is_one_clear_line(tmp_path):
    path = write_dicom(
        tmp_path / "ls.dcm",
        radiograph(),
        transfer_syntax=JPEGLSLossless,
        pixel_data=encapsulate([b"\xff\xd8\xff\xf7 not really JPEG-LS \xff\xd9"]),
    )
    with pytest.raises(imaging.BadImageError) as info:
        read(path)
    message = str(info.value)
    assert message.startswith(
        f"{path}: DICOM transfer syntax JPEG-LS Lossless Image Compression (1.2.840.10008.1.2.4.80)"
    )
    assert "is compressed and cannot be decoded here" in message and "\n" not in message


def test_broken_dicom_files_name_the_file(tmp_path):
    good = open(write_dicom(tmp_path / "g.dcm", radiograph()), "rb").read()
    truncated = tmp_path / "t.dcm"
    truncated.write_bytes(good[: len(good) // 2])
    with pytest.raises(imaging.BadImageError, match=f"^{truncated}: "):
        read(truncated)
    assert dicom.is_dicom(good) and not dicom.is_dicom(b"\x89PNG" + good)


def test_effnet_predict_reads_dicom_as_the_same_pixels_in_a_png(tmp_path):
    path = write_dicom(tmp_path / "x.dcm", radiograph(90, 70), window=(2000, 3000))
    png = tmp_path / "x.png"
    Image.fromarray(read(path)).save(png)
    pre = Preprocessor(image_size=24, mean=(0.5,) * 3, std=(0.5,) * 3, center_crop=0.9, max_size=64)
    np.testing.assert_array_equal(pre(path)[0], pre(str(png))[0])


def test_external_folders_take_dicom_files(tmp_path):
    for cls in ("NORMAL", "PNEUMONIA"):
        (tmp_path / cls).mkdir()
        write_dicom(tmp_path / cls / f"{cls.lower()}.dcm", radiograph(seed=len(cls)))
    meta, paths = external._scan(str(tmp_path), "error")
    assert [p.rsplit("/", 1)[-1] for p in paths] == ["normal.dcm", "pneumonia.dcm"]
    assert list(meta.labels) == [0, 1]
