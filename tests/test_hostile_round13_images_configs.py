"""Hostile inputs, round 13: unusual image and DICOM encodings, and config values a run reads late.

Each case failed before the fix it names and is asserted here as the documented behaviour
(docs/untrusted-inputs.md): a JPEG of many Exif segments took a minute and GBs to open, a damaged
compressed DICOM frame printed pydicom's traceback and blamed a missing decoder, and config
values the trainer reads only once the data is prepared (or never checks) passed
``validate_config`` and ``effnet-train --dry_run``. Nothing is trained or compiled.
"""

import io
import logging
import struct

import numpy as np
import pytest
from dicom_fixtures import radiograph, write_dicom
from helpers import tiny_config
from PIL import Image
from pydicom.encaps import encapsulate
from pydicom.uid import RLELossless

from effnet_jax.data import imaging, jpeg_scans
from effnet_jax.labels import class_weights
from effnet_jax.train.config import validate_config


def _jpeg_with_exif_segments(count: int, size: int = 1000) -> bytes:
    out = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 40), dtype=np.uint8)).save(out, "JPEG")
    base = out.getvalue()
    body = b"Exif\x00\x00" + b"\x00" * size
    return base[:2] + (b"\xff\xe1" + struct.pack(">H", len(body) + 2) + body) * count + base[2:]


# --- images: jpeg_scans.MAX_EXIF_SEGMENTS ------------------------------------------------------------


def test_a_jpeg_of_many_exif_segments_is_refused_before_pillow_joins_them():
    # Pillow copies the Exif joined so far at each segment: 1,500 of 64 kB took 52 s and 375 MB.
    data = _jpeg_with_exif_segments(jpeg_scans.MAX_EXIF_SEGMENTS + 1)
    with pytest.raises(imaging.ImageBudgetError, match=r"^x\.jpeg: a JPEG of 17 Exif segments, over the 16 read"):
        imaging.open_image(data, "x.jpeg")


def test_a_jpeg_of_a_few_exif_segments_still_opens():
    assert jpeg_scans.count_exif_segments(_jpeg_with_exif_segments(2)) == 2
    assert imaging.decode_file(_jpeg_with_exif_segments(jpeg_scans.MAX_EXIF_SEGMENTS), "x.jpeg").size == (40, 32)


# --- DICOM: a damaged compressed frame ------------------------------------------------------------


def test_a_damaged_compressed_dicom_frame_is_one_line_without_a_traceback(tmp_path, caplog):
    # An RLE header of one segment where a 16-bit image needs two: pydicom's decoder fails on the data.
    frame = struct.pack("<16I", 1, 64, *([0] * 14)) + b"\x80" * 100
    path = write_dicom(tmp_path / "d.dcm", radiograph(), transfer_syntax=RLELossless, pixel_data=encapsulate([frame]))
    with caplog.at_level(logging.WARNING), pytest.raises(imaging.BadImageError) as info:
        imaging.decode_file(open(path, "rb").read(), path)
    message = str(info.value)
    assert message.startswith(f"{path}: cannot decode the first compressed DICOM frame (RLE Lossless): ")
    assert "number of RLE segments" in message and "\n" not in message
    assert "install a pydicom decoder" not in message  # the decoder is there; the frame is damaged
    assert [r.getMessage() for r in caplog.records if r.exc_info] == []  # pydicom's traceback


# --- config values read late: validate_config ---------------------------------------------------


@pytest.mark.parametrize(
    "key, value, said",
    [
        ("model.depthwise_impl", "bogus", "config.model.depthwise_impl='bogus': expected one of 'auto'"),
        ("optimizer.name", "adamx", "config.optimizer.name='adamx': expected one of 'adamw'"),
        ("schedule.name", "cosin", "config.schedule.name='cosin': expected one of 'cosine'"),
        ("data.split_protocol", "../x", "config.data.split_protocol='../x': expected one of 'patient'"),
        ("data.pooled_group", "bogus", "config.data.pooled_group='bogus': expected one of 'image'"),
        ("soup_combine", "mean", "config.soup_combine='mean': expected one of 'weights'"),
        ("operating_threshold", "0.5", "config.operating_threshold='0.5': expected one of 'auto'"),
        ("soup_seeds", 0, "config.soup_seeds=0: expected an integer >= 1, at most 64"),
        ("soup_seeds", 100_000, "config.soup_seeds=100000: expected an integer >= 1, at most 64"),
        ("data.val_fraction", 0.0, "config.data.val_fraction=0.0: expected a fraction in (0, 1)"),
        ("data.val_fraction", float("nan"), "config.data.val_fraction=nan: expected a fraction in (0, 1)"),
        ("data.pooled_fractions", (0.6, 0.2, 0.3), "config.data.pooled_fractions=(0.6, 0.2, 0.3): expected 3"),
        ("data.pooled_fractions", (1.2, -0.4, 0.2), "config.data.pooled_fractions=(1.2, -0.4, 0.2): expected 3"),
        ("class_weights", "1,nan", "config.class_weights='1,nan': expected finite weights >= 0, not all 0"),
        ("class_weights", "-1,1", "config.class_weights='-1,1': expected finite weights >= 0"),
        ("class_weights", "0,0", "config.class_weights='0,0': expected finite weights >= 0, not all 0"),
        ("class_weights", "1,2,3", "config.class_weights='1,2,3': expected 'none', 'balanced' or"),
        ("freeze", ("[",), "config.freeze[0]='[' is not a valid regex"),
        ("freeze_until", "blocks", "config.freeze_until='blocks': expected 'blocks_S'"),
        ("select_split", "external", "config.select_split='external': expected one of ['validation'] (external"),
        ("model.pretrained", "/nonexistent/w.pth", "config.model.pretrained='/nonexistent/w.pth': not a weight"),
        ("model.pretrained", "/dev/zero", "config.model.pretrained='/dev/zero': not a weight file"),
    ],
)
def test_a_value_the_run_reads_late_is_refused_naming_its_key(key, value, said):
    with pytest.raises(ValueError) as info:
        validate_config(tiny_config(**{key: value}))
    assert str(info.value).startswith(said) and "\n" not in str(info.value)


def test_the_values_those_keys_accept_still_pass(tmp_path):
    weights = tmp_path / "w.safetensors"
    weights.write_bytes(b"")
    for overrides in (
        {"operating_threshold": "", "class_weights": "balanced", "freeze_until": "blocks_2", "soup_seeds": 64},
        {"data.external": (str(tmp_path),), "select_split": "external", "model.pretrained": str(weights)},
        {"model.pretrained": "timm/efficientnet_b0.ra_in1k", "freeze": ("^blocks_0_",), "class_weights": "1,2.5"},
        {"data.split_protocol": "pooled", "data.pooled_fractions": (0.6, 0.2, 0.2), "data.pooled_group": "patient"},
    ):
        validate_config(tiny_config(**overrides))


def test_class_weights_refuse_a_nan_weight_at_run_time_too():
    # The trainer calls it with the training split's counts, after validate_config.
    with pytest.raises(ValueError, match=r"^config\.class_weights='nan,1': expected finite weights"):
        class_weights("nan,1", [10, 20])
