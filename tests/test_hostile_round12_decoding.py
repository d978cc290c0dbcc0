"""Hostile inputs, round 12: decoding what the checks before it let through.

Each case failed before the fix it names and is asserted here as the documented behaviour
(docs/untrusted-inputs.md): an image file of an external folder corrupt past a valid header,
read by the pipeline (effnet-train's external splits, effnet-eval's ``folder:PATH``), was an
``OSError`` traceback naming no file; an FF DA in a JPEG's metadata counted as a scan; and the
records of a prepared TFDS data set were decoded with none of the checks a raw file gets.
"""

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import tensorflow_datasets as tfds
from array_record.python.array_record_module import ArrayRecordReader, ArrayRecordWriter
from data_fixtures import jpeg, write_mnist_npz, write_tree
from PIL import Image
from tensorflow_datasets.core import decode

from effnet_jax.data import imaging, jpeg_scans, pipeline, prepare
from effnet_jax.inference.prediction import ImageReadError, Preprocessor
from effnet_jax.train import config as config_lib


def _noisy_jpeg(size=(256, 256), **kwargs) -> bytes:
    out = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, size[::-1], dtype=np.uint8)).save(out, "JPEG", **kwargs)
    return out.getvalue()


def _noisy_png(size=(64, 64)) -> bytes:
    out = io.BytesIO()
    Image.fromarray(np.random.default_rng(1).integers(0, 256, size[::-1], dtype=np.uint8)).save(out, "PNG")
    return out.getvalue()


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _scan_data(data: bytes) -> int:
    """Where the entropy-coded data of a baseline JPEG's (only) scan starts."""
    sos = data.index(b"\xff\xda")
    return sos + 2 + int.from_bytes(data[sos + 2 : sos + 4], "big")


def _corrupt_files() -> dict[str, bytes]:
    """Files whose header Pillow reads and every check passes, but whose pixel data does not decode."""
    j, p = _noisy_jpeg(), _noisy_png()
    at, idat = _scan_data(j), p.index(b"IDAT") + 4
    flipped = bytearray(p)
    flipped[idat + 10] ^= 0xFF  # inside the zlib stream: its checksum no longer matches
    return {
        "truncated.jpeg": j[: at + (len(j) - at) // 2],  # cut mid-scan
        "garbage.jpeg": j[: at + 50] + b"\xff\xc8" * 8 + j[at + 50 :],  # a marker no decoder knows, mid-scan
        "truncated.png": p[: idat + 100],  # cut mid-IDAT
        "badzlib.png": bytes(flipped),
    }


CORRUPT = _corrupt_files()


def _config(tmp_path, **keys):
    c = config_lib.default_data_config()
    c.name, c.data_dir = "chest_xray", str(tmp_path / "tfds")
    for key, value in keys.items():
        setattr(c, key, value)
    return c


def _eval_pass(c, split: str, image_size=16):
    return list(
        pipeline.create_split(
            c,
            split,
            training=False,
            batch_size=4,
            image_size=image_size,
            mean=(0.5,) * 3,
            std=(0.5,) * 3,
            seed=0,
            shard_index=0,
            shard_count=1,
        )
    )


def _one_line(error: BaseException, start: str) -> None:
    assert str(error).startswith(start) and "\n" not in str(error), str(error)


# --- 1. external folders: an image file corrupt past its header -------------------------------------------


@pytest.mark.parametrize("name", sorted(CORRUPT))
def test_an_external_image_corrupt_past_its_header_is_a_bad_image_naming_the_file(tmp_path, name):
    # Before: external.checked_image passed the file on (its header checked out), and the pipeline's
    # decode raised OSError "image file is truncated" / "broken data stream": a traceback naming no file.
    ext = write_tree(tmp_path / "ext", {"NORMAL/a.jpeg": jpeg(1), f"PNEUMONIA/{name}": CORRUPT[name]})
    path = str(ext / "PNEUMONIA" / name)
    for c, split in [(_config(tmp_path, external=(str(ext),)), "external"), (_config(tmp_path), f"folder:{ext}")]:
        with pytest.raises(imaging.BadImageError, match="corrupt or truncated image") as refusal:
            _eval_pass(c, split)  # effnet-train's external split; effnet-eval --split=folder:PATH
        _one_line(refusal.value, f"{path}: corrupt or truncated image (")
    # effnet-predict on the folder: an error record naming the file (decoded whole, as preparation does).
    with pytest.raises(ImageReadError, match="corrupt or truncated image") as refusal:
        Preprocessor(16, (0.5,) * 3, (0.5,) * 3)(path)
    _one_line(refusal.value, f"{path}: ")


# --- 2. JPEG scans: counted as libjpeg finds them, not in metadata ---------------------------------------------


def _progressive(copies: int, size=16) -> bytes:
    """A progressive grey JPEG whose last scan (with the Huffman table before it) is repeated ``copies`` times."""
    out = io.BytesIO()
    Image.fromarray(np.random.default_rng(2).integers(0, 256, (size, size), dtype=np.uint8)).save(
        out, "JPEG", progressive=True
    )
    data = out.getvalue()
    last = data.rindex(b"\xff\xda")  # Pillow's coded data never holds FF DA
    table = data.rfind(b"\xff\xc4", 0, last)
    start = table if table >= 0 and table + 2 + int.from_bytes(data[table + 2 : table + 4], "big") == last else last
    return data[:-2] + data[start:-2] * copies + b"\xff\xd9"


def _with_segment(data: bytes, marker: int, payload: bytes) -> bytes:
    """``data`` with a segment of ``marker`` holding ``payload`` right after its SOI."""
    return data[:2] + bytes([0xFF, marker]) + struct.pack(">H", len(payload) + 2) + payload + data[2:]


def test_ff_da_inside_metadata_or_past_the_end_of_image_is_no_scan():
    # Before: every FF DA byte pair was a scan: an Exif thumbnail of 100 scans, a comment or an MPO's
    # second frame made a photo of one scan "a JPEG of 101 scans", refused.
    photo = _noisy_jpeg()
    thumbnail = _progressive(100)
    assert jpeg_scans.count_scans(thumbnail) > imaging.MAX_JPEG_SCANS
    with_metadata = _with_segment(photo, 0xE1, b"Exif\0\0" + thumbnail)
    with_metadata = _with_segment(with_metadata, 0xFE, b"\xff\xda" * 100)  # a comment
    with_metadata = _with_segment(with_metadata, 0xED, b"Photoshop 3.0\0" + b"\xff\xda\0\x0c" * 100)  # APP13
    with_metadata += thumbnail  # past the end of image: an MPO's next frame, never decoded
    assert jpeg_scans.count_scans(with_metadata) == 1
    gray = imaging.decode_file(with_metadata, "photo.jpeg")
    assert np.array_equal(np.asarray(gray), np.asarray(Image.open(io.BytesIO(photo))))


def test_scans_are_still_counted_through_fill_bytes_restarts_and_coded_data():
    # The hostile case the cap is for: a progressive JPEG of many scans is refused as before.
    many = _progressive(100)
    with pytest.raises(imaging.ImageBudgetError, match=r"^x.jpeg: a JPEG of 10\d scans, over the 64 decoded"):
        imaging.decode_file(many, "x.jpeg")
    assert imaging.decode_file(_progressive(10), "ok.jpeg").size == (16, 16)
    # Fill bytes before a marker, restart markers and stuffed FF 00 pairs in coded data do not hide a scan.
    hidden = many.replace(b"\xff\xda", b"\xff\xd0\xff\x00\xff\xff\xff\xda")
    assert jpeg_scans.count_scans(hidden) == jpeg_scans.count_scans(many)
    # A restart-coded baseline JPEG is one scan, whatever its RSTn markers.
    assert jpeg_scans.count_scans(_noisy_jpeg(restart_marker_blocks=1)) == 1
    # Not a codestream a decoder would start on: every FF DA counts, as before.
    assert jpeg_scans.count_scans(b"\0\0" + b"\xff\xda" * 70) == 70
    # The walk is one regex search per segment, bounded: past MAX_HEADER_ITEMS segments the rest is
    # counted as bytes (in C), never fewer than a decoder meets.
    tail = b"\xff\xfe\x00\x02" * (jpeg_scans.MAX_HEADER_ITEMS + 1) + b"\xff\xda" * 70
    assert jpeg_scans.count_scans(b"\xff\xd8" + tail) == 70


# --- 3. prepared TFDS records: the checks of a raw file, naming the data set and record ------------------------


def _prepared_mnist(tmp_path):
    write_mnist_npz(tmp_path / "raw" / "pneumoniamnist.npz", size=28)
    c = config_lib.default_data_config()
    c.name, c.mnist_size, c.manual_dir, c.data_dir = (
        "pneumonia_mnist",
        28,
        str(tmp_path / "raw"),
        str(tmp_path / "tfds"),
    )
    factory = prepare.BuilderFactory(name=c.name, manual_dir=c.manual_dir, data_dir=c.data_dir, mnist_size=28)
    return c, Path(prepare.ensure_prepared(factory).data_dir)


def _plant(version_dir: Path, split: str, index: int, make) -> None:
    """Replace the image bytes of record ``index`` of ``split`` by ``make(old bytes)``, of the same length.

    The serialized example holds the PNG bytes as they are, so a same-length replacement keeps it valid.
    """
    builder = tfds.builder_from_directory(str(version_dir))
    old = builder.as_data_source(split, decoders={"image": decode.SkipDecoding()})[index]["image"]
    new = make(old)
    assert len(new) == len(old)
    (path,) = version_dir.glob(f"*-{split}.array_record-*")
    reader = ArrayRecordReader(str(path))
    options, records = reader.writer_options_string(), reader.read_all()
    reader.close()
    records[index] = records[index].replace(old, new)
    writer = ArrayRecordWriter(str(path), options)
    for record in records:
        writer.write(record)
    writer.close()


def _huge_png(side: int, colour: int):
    """A PNG of ``side`` x ``side`` pixels of PNG colour type ``colour`` and no pixel data, as long as the bytes it replaces."""

    def make(old: bytes) -> bytes:
        ihdr = _chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, colour, 0, 0, 0))
        head = b"\x89PNG\r\n\x1a\n" + ihdr + _chunk(b"IDAT", zlib.compress(b""))
        return head + _chunk(b"prVt", b"\0" * (len(old) - len(head) - 24)) + _chunk(b"IEND", b"")

    return make


@pytest.mark.parametrize(
    "side, colour, match",
    [
        (30000, 0, "refused as a decompression bomb"),  # over Pillow's own limit
        (9000, 2, r"a PNG image of 9000x9000 pixels in mode RGB would take [\d,]+ bytes to decode, over"),
    ],
    ids=["grey-30000", "rgb-9000"],
)
def test_a_planted_oversized_record_of_a_prepared_data_set_is_refused_before_decoding(tmp_path, side, colour, match):
    # Before: the TFDS reader handed the record's bytes straight to Pillow, unchecked: a 30000 x 30000
    # header was a DecompressionBombError traceback, a 9000 x 9000 RGB one (under Pillow's limits)
    # allocated 324 MB before failing as truncated; neither named the data set or the record.
    c, version_dir = _prepared_mnist(tmp_path)
    _plant(version_dir, "val", 2, _huge_png(side, colour))
    with pytest.raises(imaging.ImageBudgetError, match=match) as refusal:
        _eval_pass(c, "validation", 28)
    _one_line(refusal.value, f"{version_dir} val record 2 ('val_00002'): ")


def test_a_corrupt_record_of_a_prepared_data_set_is_a_bad_image_naming_it(tmp_path):
    # Before: an OSError traceback from the pipeline's decode, naming neither data set nor record.
    c, version_dir = _prepared_mnist(tmp_path)

    def corrupt(png: bytes) -> bytes:
        flipped = bytearray(png)
        flipped[png.index(b"IDAT") + 10] ^= 0xFF
        return bytes(flipped)

    _plant(version_dir, "val", 1, corrupt)
    with pytest.raises(imaging.BadImageError, match="corrupt or truncated image") as refusal:
        _eval_pass(c, "validation", 28)
    _one_line(refusal.value, f"{version_dir} val record 1 ('val_00001'): corrupt or truncated image (")
