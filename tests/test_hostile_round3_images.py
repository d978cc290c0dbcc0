"""Hostile inputs, round 3: images Pillow should not reach, names and lists from users, tampered exports.

Each case is one an independent probe found: it failed before the fix beside it (a traceback,
a program run, an hour of backtracking, one output replacing another) and is asserted here
as the documented behaviour (docs/untrusted-inputs.md, docs/untrusted-outputs.md).
"""

import hashlib
import io
import json
import logging
import os
import shutil
import socket
import stat
import struct
import time
import zlib

import numpy as np
import pytest
from PIL import Image

from effnet_jax.cli.errors import one_line
from effnet_jax.data import exclusions, folders, imaging, prepare

# --- images ---------------------------------------------------------------------------------------


def _png(width=40, height=30) -> bytes:
    out = io.BytesIO()
    Image.fromarray((np.arange(width * height) % 251).astype(np.uint8).reshape(height, width)).save(out, "PNG")
    return out.getvalue()


def test_an_eps_file_named_png_runs_no_ghostscript(tmp_path, monkeypatch):
    # Pillow opens EPS by running Ghostscript on it: a "gs" on PATH that leaves a mark if run.
    marker = tmp_path / "gs-ran"
    gs = tmp_path / "bin" / "gs"
    gs.parent.mkdir()
    gs.write_text(f"#!/bin/sh\ntouch {marker}\nexit 1\n")
    gs.chmod(0o755)
    monkeypatch.setenv("PATH", f"{gs.parent}{os.pathsep}{os.environ['PATH']}")
    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 100 100\nshowpage\n"
    with pytest.raises(imaging.BadImageError, match=r"^scan\.png: not an image"):
        imaging.decode_file(eps, "scan.png")
    assert not marker.exists()
    # Formats outside the documented ones are not opened either (their decoders are not reached).
    ppm = io.BytesIO()
    Image.new("L", (8, 8)).save(ppm, "PPM")
    with pytest.raises(imaging.BadImageError, match=r"^x\.ppm: not an image"):
        imaging.decode_file(ppm.getvalue(), "x.ppm")
    assert imaging.decode_file(_png(), "ok.png").size == (40, 30)


def _tiff_with_a_second_frame_without_dimensions() -> bytes:
    """A 1x1 grey TIFF whose second IFD (frame) has no tags at all."""
    tags = [(256, 1), (257, 1), (258, 8), (259, 1), (262, 1), (273, 0), (278, 1), (279, 1)]
    first = 8
    data_at = first + 2 + 12 * len(tags) + 4
    second = data_at + 2
    ifd = struct.pack("<H", len(tags))
    for tag, value in tags:
        kind, value = (4, data_at) if tag == 273 else (3, value)
        ifd += struct.pack("<HHI", tag, kind, 1) + (
            struct.pack("<I", value) if kind == 4 else struct.pack("<HH", value, 0)
        )
    return (
        b"II*\x00" + struct.pack("<I", first) + ifd + struct.pack("<I", second) + b"\x80\x00" + b"\x00\x00" + b"\0" * 4
    )


def test_a_multi_frame_tiff_with_a_damaged_second_frame_reads_its_first():
    # Counting frames (n_frames) parsed the damaged frame and raised a bare TypeError.
    gray = imaging.decode_file(_tiff_with_a_second_frame_without_dimensions(), "multi.tif")
    assert gray.size == (1, 1) and gray.mode == "L"


def test_a_header_pillow_calls_a_decompression_bomb_is_a_budget_refusal():
    ihdr = b"IHDR" + struct.pack(">IIBBBBB", 30000, 30000, 8, 0, 0, 0, 0)  # 900 M grey pixels
    chunks = [ihdr, b"IDAT" + zlib.compress(b"\0" * 64), b"IEND"]
    header = b"\x89PNG\r\n\x1a\n" + b"".join(
        struct.pack(">I", len(c) - 4) + c + struct.pack(">I", zlib.crc32(c)) for c in chunks
    )
    with pytest.raises(imaging.ImageBudgetError, match=r"^bomb\.png: refused as a decompression bomb"):
        imaging.decode_file(bytes(header), "bomb.png")


def test_a_file_name_that_is_not_utf8_is_prepared_with_escapes(tmp_path):
    # The name went into a TFDS text feature as surrogates: a RuntimeError deep in TFDS.
    raw = tmp_path / "task"
    for split, count in (("train", 3), ("test", 1)):
        for cls in ("A", "B"):
            (raw / split / cls).mkdir(parents=True)
            for i in range(count):
                (raw / split / cls / f"{cls}{i}.png").write_bytes(_png())
    odd = os.fsencode(raw / "train" / "A") + b"/scan\xff.png"
    with open(odd, "wb") as f:
        f.write(_png())
    factory = prepare.BuilderFactory(name="folder", manual_dir=str(raw), data_dir=str(tmp_path / "tfds"), max_size=32)
    builder = prepare.ensure_prepared(factory)
    assert builder.info.splits["train"].num_examples == 7
    names = {r["file_name"].decode() for r in builder.as_data_source(split="train")}
    assert "scan\\xff.png" in names


# --- lists and rules from users -------------------------------------------------------------------

_F = exclusions.FORMAT


@pytest.mark.parametrize(
    "name, content, why",
    [
        ("a.json", {"format": _F, "excluded": [{"file": 5, "reason": "x"}]}, "entry 0 is"),
        ("a.json", {"format": _F, "excluded": 5}, '"excluded" is 5'),
        ("a.json", {"format": _F, "excluded": [{"file": "a.png", "reason": "x"}]}, "entry 0: 'a.png': expected"),
        ("a.json", '{{"format": "{}", "excluded": {}}}'.format(_F, "[" * 50000 + "]" * 50000), "nested too deeply"),
        ("a.csv", b"file,reason\ntrain/A/\xff.png,x\n", "UTF-8"),
        ("a.csv", "file,reason\ntrain/A/" + "a" * 200000 + ",x\n", "not a readable CSV"),
    ],
    ids=["file-not-text", "excluded-not-a-list", "short-key", "deep-json", "not-utf8", "huge-csv-field"],
)
def test_a_malformed_exclusion_list_is_one_line_naming_the_key(name, content, why, tmp_path):
    path = tmp_path / name
    if isinstance(content, dict):
        content = json.dumps(content)
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(ValueError) as caught:
        exclusions.read(str(path))
    status, message = one_line(caught.value)  # None (a traceback) before
    assert message.startswith(f"data.exclude_list={str(path)!r}: ") and why in message
    assert len(message) < 400


def test_a_huge_exclusion_list_is_refused_from_its_size(tmp_path):
    path = tmp_path / "list.json"
    with open(path, "wb") as f:
        f.truncate(exclusions.MAX_LIST_BYTES + 1)  # sparse: costs nothing to make, GBs to read whole
    with pytest.raises(exclusions.ExclusionListError, match=r"not a regular file of at most"):
        exclusions.read(str(path))


@pytest.mark.parametrize("pattern", [r"(a+)+$", r"(a|aa)+$", r"(?:\w+_)+x", r"((ab)*c)*"])
def test_a_patient_pattern_that_backtracks_exponentially_is_refused(pattern):
    # (a+)+$ searched in 'aaaa...aB' took 22 s at 28 letters, doubling with each one more.
    with pytest.raises(ValueError, match=r"^data\.patient_id_pattern=.*exponential time") as caught:
        folders.patient_of("aaB.png", "A", pattern)  # a short name: the test never hangs, fixed or not
    assert one_line(caught.value)[0] == 2


def test_safe_patient_patterns_still_work_and_names_are_searched_in_their_first_255_characters():
    kermany = r"^(?P<patient>person\d+|(?:[A-Za-z0-9]+-)?IM-\d+)"
    assert folders.patient_of("NORMAL2-IM-1427-0001.jpeg", "NORMAL", kermany) == "NORMAL2-IM-1427"
    assert folders.patient_of("person12_virus_3.jpeg", "A", r"^(?P<patient>[^_]+)_") == "person12"
    assert folders.patient_of("x" * 300 + "_p7.png", "A", r"_(?P<patient>p\d+)") == "A/" + "x" * 300 + "_p7"


# --- Grad-CAM output names ------------------------------------------------------------------------


def test_gradcam_panels_of_stems_holding_the_suffix_never_share_a_name():
    from effnet_jax.inference.prediction import _overlay_names, _panel_name

    paths = ["scans/k.gradcam.png.png", "scans/k.gradcam_panel.png.png", "scans/k.png"]
    overlays = _overlay_names(paths)
    written = overlays + [_panel_name(n) for n in overlays]
    assert len({n.lower() for n in written}) == 6, written


# --- exported folders -----------------------------------------------------------------------------


def _copy(exported, tmp_path, edit=None) -> str:
    folder = str(tmp_path / "exported")
    shutil.copytree(exported, folder)
    if edit is not None:
        path = os.path.join(folder, "model.json")
        with open(path) as f:
            text = edit(f.read())
        with open(path, "w") as f:
            f.write(text)
        digest = hashlib.sha256(text.encode()).hexdigest()
        with open(os.path.join(folder, "SHA256SUMS")) as f:
            lines = [line for line in f.read().splitlines() if not line.endswith("model.json")]
        with open(os.path.join(folder, "SHA256SUMS"), "w") as f:
            f.write("\n".join([*lines, f"{digest}  model.json"]) + "\n")
    return folder


def test_an_infinite_temperature_in_model_json_is_refused(exported, tmp_path):
    # JSON's Infinity parsed, passed 'v > 0', and was echoed as "temperature": Infinity in every record.
    from effnet_jax import serving

    folder = _copy(exported, tmp_path, lambda text: json.dumps({**json.loads(text), "temperature": float("inf")}))
    with pytest.raises(serving.ExportedModelError, match=r"model\.json: bad value for 'temperature': inf"):
        serving.load(folder)


def test_a_link_among_an_exported_folders_files_is_refused(exported, tmp_path):
    from effnet_jax import serving

    folder = _copy(exported, tmp_path)
    outside = tmp_path / "elsewhere.npz"
    shutil.move(os.path.join(folder, "weights.npz"), outside)
    os.symlink(outside, os.path.join(folder, "weights.npz"))
    with pytest.raises(serving.ExportedModelError, match=r"weights\.npz: is a symbolic link"):
        serving.load(folder)
    os.remove(os.path.join(folder, "weights.npz"))
    os.mkfifo(os.path.join(folder, "weights.npz"))  # opened without blocking, then refused
    assert stat.S_ISFIFO(os.lstat(os.path.join(folder, "weights.npz")).st_mode)
    with pytest.raises(serving.ExportedModelError, match=r"weights\.npz: not a regular file"):
        serving.load(folder)


# --- effnet-serve ---------------------------------------------------------------------------------


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.records = []

    def emit(self, record):
        self.records.append(record)


def test_a_client_leaving_before_its_announced_body_leaves_no_traceback(exported):
    pytest.importorskip("fastapi")
    import httpx

    from effnet_jax import serving
    from effnet_jax.server.app import BackgroundServer, Settings, create_app

    app = create_app(serving.load(exported), Settings(max_batch=1))
    seen, ours = _Records(), logging.getLogger("effnet_jax.server")
    with BackgroundServer(app) as url:
        loggers = (logging.getLogger("uvicorn.error"), ours)
        level = ours.level
        ours.setLevel(logging.INFO)
        for logger in loggers:
            logger.addHandler(seen)
        try:
            host, port = url.split("//")[1].split(":")
            with socket.create_connection((host, int(port))) as client:
                client.sendall(
                    b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n"
                    b"Content-Type: multipart/form-data; boundary=b\r\n\r\n--b\r\n"
                )
                time.sleep(0.3)  # the server now waits for the rest of the body
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and not any("disconnected" in r.getMessage() for r in seen.records):
                time.sleep(0.05)
            assert httpx.get(f"{url}/healthz", timeout=10).json()["status"] == "ok"
        finally:
            for logger in loggers:
                logger.removeHandler(seen)
            ours.setLevel(level)
    assert any("disconnected" in r.getMessage() for r in seen.records)
    assert not [r for r in seen.records if r.exc_info or "Exception in ASGI" in r.getMessage()]
