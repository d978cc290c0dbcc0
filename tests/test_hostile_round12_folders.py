"""Hostile inputs, round 12: image folders and data set zips as they come from the internet.

Each case failed before the fix it names (a traceback, GBs of memory, a message naming no file,
a file silently left out or excluded by another's name) and is asserted here as the documented
behaviour (docs/untrusted-inputs.md). Nothing is trained or compiled.
"""

import bz2
import json
import logging
import lzma
import os
import struct
import sys
import tracemalloc
import warnings
import zipfile
import zlib

import numpy as np
import pytest
from data_fixtures import GOOD_TREE, encode, jpeg, write_mnist_npz, write_tree, xray, zip_tree
from helpers import tiny_config

from effnet_jax import limits, zip_directory
from effnet_jax.cli import data as data_cli
from effnet_jax.cli.errors import one_line
from effnet_jax.data import exclusions, external, imaging, kermany, sources
from effnet_jax.data.builders import pneumonia_mnist
from effnet_jax.data.eda import figures, scan
from effnet_jax.inference import gradcam
from effnet_jax.inference.inputs import expand_inputs

NORMAL = "chest_xray/train/NORMAL/"


def _member(name: bytes, data: bytes, method: int = 0, size=None, crc=None, flags: int = 0):
    return {"name": name, "data": data, "method": method, "size": len(data) if size is None else size, "crc": crc,
            "flags": flags}  # fmt: skip


def _raw_zip(members) -> bytes:
    """A zip written byte by byte: names, methods, flags and declared sizes as given (zipfile would fix them)."""
    out, directory = bytearray(), bytearray()
    for m in members:
        crc = zlib.crc32(m["data"]) if m["crc"] is None else m["crc"]
        fields = (20, m["flags"], m["method"], 0, 0, crc, len(m["data"]), m["size"], len(m["name"]))
        directory += struct.pack("<4s6H3L5H2L", b"PK\1\2", 20, *fields, 0, 0, 0, 0, 0, len(out)) + m["name"]
        out += struct.pack("<4s5H3L2H", b"PK\3\4", *fields, 0) + m["name"] + m["data"]
    end = struct.pack("<4s4H2LH", b"PK\5\6", 0, 0, len(members), len(members), len(directory), len(out), 0)
    return bytes(out + directory + end)


def _good_members():
    return [_member(("chest_xray/" + rel).encode(), content()) for rel, content in GOOD_TREE.items()]


def _write(path, data: bytes):
    path.write_bytes(data)
    return path


# --- zips: central directories zipfile refuses -----------------------------------------------------


@pytest.mark.parametrize(
    "damage, why",
    [
        ("utf8-flag", "UnicodeDecodeError"),  # was "'utf-8' codec can't decode byte 0xff ...", naming no file
        ("directory-magic", "Bad magic number for central directory"),  # was a BadZipFile traceback
        ("version", "zip file version"),  # was a NotImplementedError traceback
    ],
)
def test_a_zip_whose_central_directory_zipfile_refuses_is_one_line_naming_it(tmp_path, capsys, damage, why):
    members = _good_members()
    if damage == "utf8-flag":  # a name flagged UTF-8 that is not
        members.append(_member(NORMAL.encode() + b"\xff\xfe.jpeg", jpeg(1), flags=0x800))
    data = bytearray(_raw_zip(members))
    last = data.rfind(b"PK\1\2")
    if damage == "directory-magic":
        data[last : last + 4] = b"PK\x09\x09"
    elif damage == "version":
        data[last + 6] = 99  # version needed to extract: 9.9
    path = _write(tmp_path / "chest_xray.zip", bytes(data))
    with pytest.raises(kermany.LayoutError, match=rf"^{path}: a zip whose central directory cannot be read \(.*{why}"):
        kermany.scan(path)
    assert data_cli.main(["report", f"--data_dir={path}", f"--out={tmp_path / 'out'}", "--no_progress"]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"effnet-data: {path}: a zip whose central directory cannot be read")


def test_a_zip_found_in_the_folder_that_is_a_link_loop_is_one_line(tmp_path):
    # open() raised ELOOP (an OSError) out of the scan: a traceback in effnet-data.
    folder = tmp_path / "download"
    folder.mkdir()
    os.symlink("data.zip", folder / "data.zip")
    with pytest.raises(
        kermany.LayoutError, match=r"data\.zip: cannot open the zip \(a link that loops or leads nowhere\)"
    ):
        kermany.scan(folder)


# --- zips: members that inflate past what they declare ----------------------------------------------

_BOMB_BYTES = 64 << 20


def _bzip2_bomb() -> bytes:
    compressor, zeros = bz2.BZ2Compressor(9), bytes(1 << 20)
    return b"".join(compressor.compress(zeros) for _ in range(_BOMB_BYTES >> 20)) + compressor.flush()


def _lzma_member(payload_chunks) -> bytes:
    """A zip LZMA member: version, properties size and properties, then the raw LZMA stream (with its end marker)."""
    compressor = lzma.LZMACompressor(lzma.FORMAT_ALONE, preset=0)
    alone = b"".join(compressor.compress(c) for c in payload_chunks) + compressor.flush()
    return struct.pack("<2BH", 9, 4, 5) + alone[:5] + alone[13:]  # the .lzma header's 8-byte size left out


@pytest.mark.parametrize("method", [zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA])
def test_a_bzip2_or_lzma_member_never_inflates_past_its_declared_size(tmp_path, method):
    # zipfile hands a bzip2 or LZMA chunk to its decompressor whole: 1 kB of bzip2 declaring 5 kB
    # inflated to 1.5 GB (3.2 GB at the peak) before zipfile cut it at the declared size.
    data = _bzip2_bomb() if method == zipfile.ZIP_BZIP2 else _lzma_member([bytes(1 << 20)] * (_BOMB_BYTES >> 20))
    bomb = _member(NORMAL.encode() + b"bomb.jpeg", data, method, size=5000, crc=0)
    layout = kermany.scan(_write(tmp_path / "chest_xray.zip", _raw_zip(_good_members() + [bomb])))
    tracemalloc.start()
    try:
        with pytest.raises(imaging.BadImageError, match=r"bomb\.jpeg: cannot read: .* inflates past the 5,000 bytes"):
            layout.read(NORMAL + "bomb.jpeg")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
        layout.close()
    assert peak < 4 << 20


@pytest.mark.parametrize("method", [zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA])
def test_members_of_every_method_zipfile_writes_still_read_and_a_bad_crc_is_named(tmp_path, method):
    payload = jpeg(3) + bytes(200_000)
    path = tmp_path / "chest_xray.zip"
    zip_tree(write_tree(tmp_path / "data", GOOD_TREE), path)
    with zipfile.ZipFile(path, "a", compression=method) as zf:
        zf.writestr(NORMAL + "IM-0900-0001.jpeg", payload)
        zf.writestr(NORMAL + "IM-0901-0001.jpeg", b"")
    layout = kermany.scan(path)
    with zipfile.ZipFile(path) as zf:
        for name, expected in ((NORMAL + "IM-0900-0001.jpeg", payload), (NORMAL + "IM-0901-0001.jpeg", b"")):
            assert layout.read(name) == expected == zip_directory.read_member(zf, zf.getinfo(name))
        info = zf.getinfo(NORMAL + "IM-0900-0001.jpeg")
        info.CRC ^= 1
        with pytest.raises(zipfile.BadZipFile, match="Bad CRC-32"):
            zip_directory.read_member(zf, info)
    layout.close()


def test_an_lzma_member_declaring_a_dictionary_over_the_budget_is_refused(tmp_path):
    head = struct.pack("<2BH", 9, 4, 5) + bytes([0x5D]) + struct.pack("<I", 0xFFFFFFFF)  # a 4 GiB dictionary
    member = _member(NORMAL.encode() + b"big.jpeg", head + bytes(64), zipfile.ZIP_LZMA, size=1000, crc=0)
    layout = kermany.scan(_write(tmp_path / "chest_xray.zip", _raw_zip(_good_members() + [member])))
    with pytest.raises(imaging.BadImageError, match=r"big\.jpeg: cannot read: .*[Mm]emory"):
        layout.read(NORMAL + "big.jpeg")
    layout.close()


def test_a_pneumoniamnist_npz_of_bzip2_members_is_refused_before_they_inflate(tmp_path):
    # numpy reads the member through zipfile, which inflates a bzip2 chunk whole: a member of 1.5 GB of
    # zeros declaring 600 kB took 3.2 GB.
    source = tmp_path / "plain.npz"
    write_mnist_npz(source, size=28)
    path = tmp_path / "pneumoniamnist_28.npz"
    with zipfile.ZipFile(source) as plain, zipfile.ZipFile(path, "w", zipfile.ZIP_BZIP2) as packed:
        for name in plain.namelist():
            packed.writestr(name, plain.read(name))
    with pytest.raises(ValueError, match=r"train_images\.npy is encrypted or compressed with zip method 12"):
        pneumonia_mnist.PneumoniaMnist._load(str(path), 28)
    assert set(pneumonia_mnist.PneumoniaMnist._load(str(source), 28)) == {"train", "val", "test"}


# --- zips: names -------------------------------------------------------------------------------------


def test_member_names_nested_thousands_deep_are_held_to_the_budget(tmp_path, monkeypatch):
    # Each folder of a name was a key holding its whole path: three names 32,000 folders deep (a 411 kB
    # zip) took 15 s and 3.4 GB to list.
    monkeypatch.setenv(limits.ENV_VAR, "64M")
    deep = _member(NORMAL.encode() + b"a/" * 8000 + b"x.jpeg", b"")
    path = _write(tmp_path / "chest_xray.zip", _raw_zip(_good_members() + [deep]))
    with pytest.raises(kermany.LayoutError, match=r"the folders its 17 member names pass through would take"):
        kermany.scan(path)
    shallow = _member(NORMAL.encode() + b"a/" * 100 + b"x.jpeg", b"")
    layout = kermany.scan(_write(path, _raw_zip(_good_members() + [shallow])))
    assert f"{path}:{NORMAL}a: stray folder inside a class folder" in layout.problems


def test_names_that_differ_by_case_or_unicode_normalisation_are_separate_files(tmp_path):
    names = [NORMAL + "IM-0700-\u00e9.jpeg", NORMAL + "IM-0700-e\u0301.jpeg", NORMAL + "A.jpeg", NORMAL + "a.jpeg"]
    path = zip_tree(
        write_tree(tmp_path / "data", GOOD_TREE), tmp_path / "x.zip", extra={n: jpeg(i) for i, n in enumerate(names)}
    )
    layout = kermany.scan(path)
    listed = [rel for _, rel in layout.files["train"]]
    assert set(names) <= set(listed) and not layout.problems
    assert [layout.read(n) for n in names] == [jpeg(i) for i in range(4)]
    layout.close()


def test_a_symlink_member_is_read_as_its_bytes_never_followed(tmp_path):
    link = _member(NORMAL.encode() + b"IM-0800-0001.jpeg", b"/etc/passwd")
    data = bytearray(_raw_zip(_good_members() + [link]))
    last = data.rfind(b"PK\1\2")
    data[last + 38 : last + 42] = struct.pack("<L", 0o120777 << 16)  # external attributes: a unix symlink
    layout = kermany.scan(_write(tmp_path / "x.zip", bytes(data)))
    assert layout.read(NORMAL + "IM-0800-0001.jpeg") == b"/etc/passwd"
    layout.close()


# --- folders -------------------------------------------------------------------------------------------


def _frames() -> int:
    frame, depth = sys._getframe(), 0
    while frame is not None:
        frame, depth = frame.f_back, depth + 1
    return depth


def _chain(top, depth: int, name: str = "d"):
    """``top/d/d/.../d`` ``depth`` folders deep; returns the deepest."""
    path = top
    for _ in range(depth):
        path = path / name
    path.mkdir(parents=True)
    return path


def test_a_data_folder_hundreds_of_folders_deep_is_scanned(tmp_path):
    # pathlib's rglob recursed: a downloaded tree 1,200 folders deep was a RecursionError traceback.
    root = write_tree(tmp_path / "data", GOOD_TREE)
    (_chain(root / "train/NORMAL", 300) / "x.png").write_bytes(b"")
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(_frames() + 150)
    try:
        layout = kermany.scan(root)
    finally:
        sys.setrecursionlimit(limit)
    assert f"{root}/train/NORMAL/d: stray folder inside a class folder" in layout.problems
    assert len(layout.files["train"]) == 11


def test_predict_and_adapt_walk_a_folder_hundreds_of_folders_deep(tmp_path):
    # os.walk and pathlib's '**' recursed: RecursionError tracebacks in effnet-predict and effnet-adapt.
    png = encode(xray(1), "PNG")
    (tmp_path / "scans").mkdir()
    (tmp_path / "scans" / "a.png").write_bytes(png)
    (_chain(tmp_path / "scans" / "sub", 300) / "deep.png").write_bytes(png)
    deep = str(tmp_path / "scans" / "sub" / os.path.join(*["d"] * 300) / "deep.png")
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(_frames() + 150)
    try:
        walked = expand_inputs([str(tmp_path / "scans")])
        globbed = expand_inputs([f"{tmp_path}/scans/**/*.png"])
        many = expand_inputs([f"{tmp_path}/scans/**/**/**/**/**/**/**/**/*.png"])  # each path matched once
    finally:
        sys.setrecursionlimit(limit)
    assert walked == globbed == many == [f"{tmp_path}/scans/a.png", deep]


def test_a_folder_too_deep_to_list_is_a_listed_problem(tmp_path):
    root = write_tree(tmp_path / "data", GOOD_TREE)
    fd = os.open(root / "train" / "NORMAL", os.O_RDONLY)
    for _ in range(18):  # 18 x 251 bytes: past the 4,096 a path may have, made a folder at a time
        os.mkdir("f" * 250, dir_fd=fd)
        inner = os.open("f" * 250, os.O_RDONLY, dir_fd=fd)
        os.close(fd)
        fd = inner
    os.close(fd)
    layout = kermany.scan(root)
    assert any(p.endswith("cannot be listed (File name too long); its files are not read") for p in layout.problems)
    assert len(layout.files["train"]) == 11


@pytest.mark.parametrize("kind", ["file", "fifo"])
def test_a_class_folder_that_is_a_file_is_named_as_not_a_folder(tmp_path, kind):
    root = write_tree(tmp_path / "data", {k: v for k, v in GOOD_TREE.items() if not k.startswith("test/NORMAL/")})
    (root / "test/NORMAL").write_bytes(b"x") if kind == "file" else os.mkfifo(root / "test/NORMAL")
    with pytest.raises(kermany.LayoutError, match=r"/test/NORMAL: not a folder \(every split needs"):
        kermany.scan(root)


def test_a_backslash_in_a_file_name_is_part_of_its_key(tmp_path):
    # 'train/NORMAL/test\NORMAL\IM-0200-0001.jpeg' was keyed test/NORMAL/IM-0200-0001.jpeg: excluding it
    # (a duplicate of a training image, say) left out the real test image too.
    root = write_tree(tmp_path / "data", GOOD_TREE)
    (root / "train/NORMAL/test\\NORMAL\\IM-0200-0001.jpeg").write_bytes(jpeg(1))
    keys = [info.key for info in scan.scan_raw(root, progress=False).images]
    assert len(set(keys)) == len(keys) == 17
    assert "train/NORMAL/test\\NORMAL\\IM-0200-0001.jpeg" in keys
    listed = tmp_path / "list.csv"
    listed.write_text("file,reason\ntrain/NORMAL/test\\NORMAL\\IM-0200-0001.jpeg,dup\ntrain\\NORMAL\\b.jpeg,typed\n")
    assert exclusions.read(listed) == {
        "train/NORMAL/test\\NORMAL\\IM-0200-0001.jpeg": "dup",
        "train/NORMAL/b.jpeg": "typed",  # a key typed with Windows separators still reads
    }


def test_effnet_data_out_that_is_a_dangling_link_is_one_line_before_the_scan(tmp_path, capsys):
    # mkdir raised FileExistsError after the whole scan: a traceback.
    out = tmp_path / "out"
    os.symlink(tmp_path / "nowhere" / "x", out)
    root = write_tree(tmp_path / "data", GOOD_TREE)
    assert data_cli.main(["clean", f"--data_dir={root}", f"--out={out}", "--no_progress"]) == 2
    assert capsys.readouterr().err.strip() == (
        f"effnet-data clean: --out={out}: exists and is not a folder (a link to {tmp_path}/nowhere/x)"
    )


# --- names drawn into figures --------------------------------------------------------------------------

_ODD_NAMES = ["IM-0777-\udcff\udcfe.jpeg", "IM-0778-$\\sqrt{$.jpeg", "IM-0779-\x1b[2J.jpeg"]


@pytest.mark.parametrize("name", _ODD_NAMES, ids=["not-utf8", "mathtext", "escape-code"])
def test_the_report_sample_grid_draws_any_file_name_as_text(tmp_path, name):
    # matplotlib raised TypeError on a name that is not UTF-8 and ParseSyntaxException on '$\sqrt{$'.
    inventory = type("Inventory", (), {"samples": {"NORMAL": [(f"train/NORMAL/{name}", np.zeros((8, 8), np.uint8))]}})
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # "Glyph 27 missing from font": the escape code drawn raw
        figures.samples(inventory, tmp_path / "samples.png")
    assert (tmp_path / "samples.png").read_bytes().startswith(b"\x89PNG")


@pytest.mark.parametrize("name", _ODD_NAMES, ids=["not-utf8", "mathtext", "escape-code"])
def test_a_grad_cam_panel_draws_any_file_name_as_text(tmp_path, name):
    image = np.zeros((16, 16, 3), np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        gradcam.save_panel(image, np.ones((16, 16)), tmp_path / "panel.png", 0.7, "PNEUMONIA", 0.5, name=name)
    assert (tmp_path / "panel.png").read_bytes().startswith(b"\x89PNG")


# --- external folders ----------------------------------------------------------------------------------


def _external(tmp_path):
    root = tmp_path / "site"
    png = lambda seed: encode(xray(seed, size=(40, 40)), "PNG")  # noqa: E731
    write_tree(root, {"NORMAL/a.png": png(1), "NORMAL/b.png": png(2), "PNEUMONIA/c.png": png(3)})
    return root


def test_an_external_image_removed_after_the_scan_is_one_line_naming_it(tmp_path):
    # The read raised FileNotFoundError: a traceback out of effnet-eval or training.
    root = _external(tmp_path)
    reader = sources.reader(tiny_config().data, f"folder:{root}")
    os.remove(root / "NORMAL" / "b.png")
    with pytest.raises(external.ExternalDataError) as caught:
        reader.read_image(0, 1)
    assert str(caught.value).startswith(f"{root}/NORMAL/b.png: cannot read (No such file or directory)")
    assert one_line(caught.value)[1] == str(caught.value)


def test_files_an_external_folder_does_not_read_are_said(tmp_path, caplog):
    # A DICOM export without an extension, a GIF and a sub-folder were left out without a word.
    root = _external(tmp_path)
    write_tree(
        root, {"NORMAL/IM0001": b"DICM", "NORMAL/x.gif": b"GIF89a", "PNEUMONIA/sub/d.png": b"", "NORMAL/.DS_Store": b""}
    )
    config = tiny_config()
    with caplog.at_level(logging.WARNING, logger="effnet_jax.data.external"):
        meta, _ = external.scan(config.data, f"folder:{root}")
    assert list(meta.file_names) == ["NORMAL/a.png", "NORMAL/b.png", "PNEUMONIA/c.png"]
    (said,) = [r.getMessage() for r in caplog.records if "not read" in r.getMessage()]
    assert said.startswith(f"external folder {root}: 3 entries not read") and said.endswith("IM0001, x.gif, sub/")


# --- exclusion lists -----------------------------------------------------------------------------------


def test_a_csv_exclusion_list_is_read_a_row_at_a_time_and_bounded_in_entries(tmp_path, monkeypatch):
    # 64 MiB of one-character rows took 22 s and 2.4 GB (33 M empty rows: a MemoryError at 5.6 GB).
    monkeypatch.setattr(exclusions, "MAX_ENTRIES", 1000)
    path = tmp_path / "list.csv"
    path.write_text("file,reason\n\n" + "".join(f"train/NORMAL/{i}.jpeg,dup\n" for i in range(1000)))
    assert len(exclusions.read(path)) == 1000  # a blank line is skipped, as before
    path.write_text("file,reason\n" + "a/b/c,r\n" * 1001)
    with pytest.raises(exclusions.ExclusionListError, match=r"more than 1,000 entries"):
        exclusions.read(path)
    path.write_text("file,reason," + ",".join(f"c{i}" for i in range(2000)) + "\n")
    with pytest.raises(exclusions.ExclusionListError, match=r"CSV header \['file', 'reason', 'c0', "):
        exclusions.read(path)
    path.write_text("file,reason\ntrain/NORMAL/a.jpeg,dup" + "," * 100_000 + "\n")
    with pytest.raises(exclusions.ExclusionListError, match=r"line 2: 100,002 fields, more than the header's 2"):
        exclusions.read(path)


def test_a_json_exclusion_list_is_held_to_the_budget_for_json(tmp_path, monkeypatch):
    # 64 MiB of '{},' parsed into 1.6 GB of dicts before the first entry was refused.
    monkeypatch.setenv(limits.ENV_VAR, "1M")  # JSON at most 32 KiB
    path = tmp_path / "list.json"
    path.write_text(json.dumps({"format": exclusions.FORMAT, "excluded": [{}] * 20_000}))
    with pytest.raises(exclusions.ExclusionListError, match=r"at most 32,768 bytes \(a JSON list: the decoded-size"):
        exclusions.read(path)
    path.write_text(json.dumps({"format": exclusions.FORMAT, "excluded": [{"file": "train/A/x.png", "reason": "r"}]}))
    assert exclusions.read(path) == {"train/A/x.png": "r"}


def test_an_exclusion_list_naming_paths_outside_the_folder_only_names_keys(tmp_path):
    path = tmp_path / "list.csv"
    path.write_text("file,reason\n../../../etc/passwd,evil\n")
    assert exclusions.read(path) == {"../etc/passwd": "evil"}  # a key no listed file has; nothing is opened
