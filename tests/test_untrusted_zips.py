"""Zip archives of image folders (a chest_xray.zip as downloaded): what listing and reading their members may do.

Each archive is written here, often byte by byte (tests/crafted_fixtures.py) so that its names,
methods and declared sizes can be anything. A member is never inflated past what it declares, nor
past the ratio and budget limits; a member zipfile cannot read is a bad image naming it; and a name
that is not canonical, is listed twice or is a link is a listed problem, never a path followed
(docs/untrusted-inputs.md).
"""

import bz2
import lzma
import os
import struct
import tracemalloc
import warnings
import zipfile
import zlib

import crafted_fixtures as crafted
import data_fixtures as fx
import pytest
from data_fixtures import GOOD_TREE, jpeg, write_tree, zip_tree

from effnet_jax import limits, zip_directory
from effnet_jax.cli import data as data_cli
from effnet_jax.data import imaging, kermany

# --- central directories and members zipfile refuses ----------------------------------------------


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


MEMBER = "chest_xray/train/NORMAL/IM-0999-0001.jpeg"


def _zip_with(tmp_path, name, members, compression=zipfile.ZIP_STORED):
    good = fx.write_tree(tmp_path / "tree" / "chest_xray", fx.GOOD_TREE)
    path = fx.zip_tree(good, tmp_path / name)
    with zipfile.ZipFile(path, "a", compression=compression) as archive:
        for member, data in members:
            archive.writestr(member, data)
    return path


def _patch_headers(path, member, patch):
    """Applies ``patch(data, header_offset, is_local)`` to the local and central headers of ``member``."""
    data, key = bytearray(path.read_bytes()), member.encode()
    for signature, name_at, length_at in ((b"PK\x03\x04", 30, 26), (b"PK\x01\x02", 46, 28)):
        i = data.find(signature)
        while i >= 0:
            length = struct.unpack("<H", data[i + length_at : i + length_at + 2])[0]
            if bytes(data[i + name_at : i + name_at + length]) == key:
                patch(data, i, signature == b"PK\x03\x04")
            i = data.find(signature, i + 4)
    path.write_bytes(bytes(data))
    return path


def _encrypted(data, at, local):
    data[at + (6 if local else 8)] |= 1


def _method_99(data, at, local):
    at += 8 if local else 10
    data[at : at + 2] = struct.pack("<H", 99)


def _corrupt_payload(path, member):
    data = bytearray(path.read_bytes())
    start = data.rfind(b"PK\x03\x04") + 30 + len(member) + 64
    data[start : start + 64] = bytes(b ^ 0xFF for b in data[start : start + 64])
    path.write_bytes(bytes(data))
    return path


@pytest.mark.parametrize(
    "make, why",
    [
        (lambda p: _patch_headers(_zip_with(p, "enc.zip", [(MEMBER, fx.jpeg(7))]), MEMBER, _encrypted), "encrypted"),
        (
            lambda p: _patch_headers(_zip_with(p, "m99.zip", [(MEMBER, fx.jpeg(7))]), MEMBER, _method_99),
            "not supported",
        ),
        (
            lambda p: _corrupt_payload(
                _zip_with(p, "d.zip", [(MEMBER, fx.jpeg(7) * 40)], zipfile.ZIP_DEFLATED), MEMBER
            ),
            "decompressing",
        ),
        (
            lambda p: _corrupt_payload(_zip_with(p, "x.zip", [(MEMBER, fx.jpeg(7) * 40)], zipfile.ZIP_LZMA), MEMBER),
            "Corrupt input",
        ),
    ],
    ids=["encrypted", "method-99", "corrupt-deflate", "corrupt-lzma"],
)
def test_a_zip_member_zipfile_cannot_read_is_a_bad_image_naming_it(tmp_path, make, why):
    # Before: RuntimeError, NotImplementedError, zlib.error or LZMAError out of data preparation.
    layout = kermany.scan(make(tmp_path))
    try:
        with pytest.raises(imaging.BadImageError, match=f"{MEMBER}: cannot read: .*{why}"):
            layout.read(MEMBER)
    finally:
        layout.close()


def test_preparing_a_zip_with_an_encrypted_member_skips_it_by_policy(tmp_path):
    from effnet_jax.data import prepare

    path = _patch_headers(_zip_with(tmp_path, "enc.zip", [(MEMBER, fx.jpeg(7))]), MEMBER, _encrypted)
    factory = prepare.BuilderFactory(
        name="chest_xray", manual_dir=str(path), data_dir=str(tmp_path / "tfds"), max_size=36, on_bad_image="skip"
    )
    builder = prepare.ensure_prepared(factory)
    assert builder.info.splits["train"].num_examples == sum(fx.GOOD_COUNTS["train"])
    assert any(MEMBER in s and "encrypted" in s for s in builder.info.metadata["skipped"])


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


# --- members that inflate past what they declare --------------------------------------------------


_DEFLATE_BOMB_BYTES = 3 << 29  # 1.5 GiB of zeros, declared honestly


def _zeros_deflate(total: int) -> tuple[bytes, int]:
    """A raw deflate stream of `total` zero bytes and its CRC, built in well under a second.

    After a full flush deflate forgets its history, so every 16 MiB chunk compresses to
    the same bytes: compress one, repeat it.
    """
    chunk = 1 << 24
    assert total % chunk == 0
    z = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = z.compress(bytes(chunk)) + z.flush(zlib.Z_FULL_FLUSH)
    crc = 0
    zeros = bytes(chunk)
    for _ in range(total // chunk):
        crc = zlib.crc32(zeros, crc)
    return block * (total // chunk) + z.flush(), crc


def _good_member_tuples():
    out = []
    for rel, make in fx.GOOD_TREE.items():
        data = make()
        out.append((f"chest_xray/{rel}", zipfile.ZIP_STORED, data, zlib.crc32(data), len(data)))
    return out


@pytest.fixture(scope="module")
def bomb_zip(tmp_path_factory):
    payload, crc = _zeros_deflate(_DEFLATE_BOMB_BYTES)
    path = tmp_path_factory.mktemp("bomb") / "chest_xray.zip"
    bomb = ("chest_xray/train/NORMAL/IM-0900-0001.jpeg", zipfile.ZIP_DEFLATED, payload, crc, _DEFLATE_BOMB_BYTES)
    return crafted.raw_zip(path, _good_member_tuples() + [bomb])


def test_zip_bomb_member_is_refused_from_its_header_with_bounded_memory(bomb_zip):
    assert bomb_zip.stat().st_size < 4 << 20  # a 1.5 GiB member in a ~2 MB zip
    layout = kermany.scan(bomb_zip)
    tracemalloc.start()
    try:
        with pytest.raises(imaging.BadImageError, match=r"IM-0900-0001.jpeg: declares 1,610,612,736 bytes.*zip bomb"):
            layout.read("chest_xray/train/NORMAL/IM-0900-0001.jpeg")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
        layout.close()
    assert peak < 16 << 20, f"{peak:,} bytes allocated"


def test_zip_member_beyond_the_ratio_limit_is_refused(tmp_path):
    payload, crc = _zeros_deflate(32 << 20)  # 32 MiB of zeros: under the size limit, 1000x the ratio
    name = "chest_xray/train/PNEUMONIA/person9_virus_9.jpeg"
    path = crafted.raw_zip(
        tmp_path / "ratio.zip", _good_member_tuples() + [(name, zipfile.ZIP_DEFLATED, payload, crc, 32 << 20)]
    )
    layout = kermany.scan(path)
    with pytest.raises(imaging.BadImageError, match=r"person9_virus_9.jpeg: inflates .* beyond the 100x limit"):
        layout.read(name)
    layout.close()


def test_zip_member_lying_about_its_size_cannot_inflate_past_it(tmp_path):
    # Declares 1 KiB, but its stream inflates to 48 MiB: reading stops at what was declared.
    payload, _ = _zeros_deflate(48 << 20)
    name = "chest_xray/train/NORMAL/IM-0901-0001.jpeg"
    path = crafted.raw_zip(
        tmp_path / "liar.zip",
        _good_member_tuples() + [(name, zipfile.ZIP_DEFLATED, payload, zlib.crc32(bytes(1024)), 1024)],
    )
    layout = kermany.scan(path)
    tracemalloc.start()
    try:
        data = layout.read(name)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
        layout.close()
    assert len(data) == 1024 and peak < 16 << 20


def _prepare(raw, data_dir, **kw):
    from effnet_jax.data import prepare

    return prepare.ensure_prepared(
        prepare.BuilderFactory(name="chest_xray", manual_dir=str(raw), data_dir=str(data_dir), max_size=36, **kw)
    )


def test_preparing_from_a_zip_bomb_names_the_member_or_skips_it(bomb_zip, tmp_path):
    with pytest.raises(imaging.BadImageError, match="IM-0900-0001.jpeg: declares 1,610,612,736 bytes"):
        _prepare(bomb_zip, tmp_path / "error")
    builder = _prepare(bomb_zip, tmp_path / "skip", on_bad_image="skip")
    assert builder.info.splits["train"].num_examples == sum(fx.GOOD_COUNTS["train"])
    assert any("IM-0900-0001.jpeg: declares" in s for s in builder.info.metadata["skipped"])


_BZIP2_LZMA_BOMB_BYTES = 64 << 20


def _bzip2_bomb() -> bytes:
    compressor, zeros = bz2.BZ2Compressor(9), bytes(1 << 20)
    return b"".join(compressor.compress(zeros) for _ in range(_BZIP2_LZMA_BOMB_BYTES >> 20)) + compressor.flush()


def _lzma_member(payload_chunks) -> bytes:
    """A zip LZMA member: version, properties size and properties, then the raw LZMA stream (with its end marker)."""
    compressor = lzma.LZMACompressor(lzma.FORMAT_ALONE, preset=0)
    alone = b"".join(compressor.compress(c) for c in payload_chunks) + compressor.flush()
    return struct.pack("<2BH", 9, 4, 5) + alone[:5] + alone[13:]  # the .lzma header's 8-byte size left out


@pytest.mark.parametrize("method", [zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA])
def test_a_bzip2_or_lzma_member_never_inflates_past_its_declared_size(tmp_path, method):
    # zipfile hands a bzip2 or LZMA chunk to its decompressor whole: 1 kB of bzip2 declaring 5 kB
    # inflated to 1.5 GB (3.2 GB at the peak) before zipfile cut it at the declared size.
    data = (
        _bzip2_bomb()
        if method == zipfile.ZIP_BZIP2
        else _lzma_member([bytes(1 << 20)] * (_BZIP2_LZMA_BOMB_BYTES >> 20))
    )
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


def test_an_lzma_member_declaring_a_dictionary_over_the_budget_is_refused(tmp_path):
    head = struct.pack("<2BH", 9, 4, 5) + bytes([0x5D]) + struct.pack("<I", 0xFFFFFFFF)  # a 4 GiB dictionary
    member = _member(NORMAL.encode() + b"big.jpeg", head + bytes(64), zipfile.ZIP_LZMA, size=1000, crc=0)
    layout = kermany.scan(_write(tmp_path / "chest_xray.zip", _raw_zip(_good_members() + [member])))
    with pytest.raises(imaging.BadImageError, match=r"big\.jpeg: cannot read: .*[Mm]emory"):
        layout.read(NORMAL + "big.jpeg")
    layout.close()


# --- member names ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "/chest_xray/train/NORMAL/IM-0998-0001.jpeg",
        "chest_xray/train//NORMAL/IM-0997-0001.jpeg",
        "../chest_xray/train/NORMAL/IM-0996-0001.jpeg",
        "chest_xray/train/./NORMAL/IM-0995-0001.jpeg",
    ],
    ids=["absolute", "double-slash", "dot-dot", "dot"],
)
def test_a_non_canonical_member_name_is_a_listed_problem_not_a_traceback(tmp_path, name):
    # Before: '/a/b' and 'a//b' were listed as 'a/b', which zipfile does not hold: a KeyError.
    layout = kermany.scan(_zip_with(tmp_path, "odd.zip", [(name, fx.jpeg(3))]))
    try:
        assert any(
            p.endswith(f"{name}: an absolute or non-canonical member name ('..', '//'); not read")
            for p in layout.problems
        )
        listed = [rel for items in layout.files.values() for _, rel in items]
        assert len(listed) == sum(sum(c) for c in fx.GOOD_COUNTS.values())
        for rel in listed:
            layout.read(rel)
    finally:
        layout.close()


def _tree(root):
    return write_tree(root, GOOD_TREE)


def test_a_zip_member_listed_twice_is_a_listed_problem_not_read(tmp_path):
    # zipfile reads the last copy of a name: which file was prepared was the archive's choice.
    name = "chest_xray/train/NORMAL/IM-0001-0001.jpeg"
    path = zip_tree(_tree(tmp_path / "data"), tmp_path / "x.zip")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns of the duplicate name
        with zipfile.ZipFile(path, "a") as zf:
            zf.writestr(name, jpeg(99))
    layout = kermany.scan(path)
    assert f"{path}:{name}: listed 2 times in the zip (which copy is the image is ambiguous); not read" in (
        layout.problems
    )
    assert name not in [rel for entries in layout.files.values() for _, rel in entries]


def test_a_zip_whose_names_are_all_refused_says_so(tmp_path):
    path = tmp_path / "windows.zip"
    with zipfile.ZipFile(path, "w") as zf:
        for rel, content in GOOD_TREE.items():
            zf.writestr("chest_xray\\" + rel.replace("/", "\\"), content())
    with pytest.raises(kermany.LayoutError, match=r"absolute or non-canonical member name\(s\) not read, e\.g\. "):
        kermany.scan(path)


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
