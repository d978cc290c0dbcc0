"""Files crafted byte by byte for the untrusted-input tests (tests/test_untrusted_*.py).

Zips whose names, methods and declared sizes can be anything; torch .pth files (zip and legacy) of
any pickle, storage and tensor view; and small files that declare huge contents (DICOM, PNG, Keras
HDF5, .pth): the decoded-size budget's bombs, which test_untrusted_budgets.py reads together in a
process of bounded address space. Also the one-line checks those tests share.
"""

import collections
import io
import pickle
import struct
import zipfile
import zlib

import numpy as np
import pydicom
from dicom_fixtures import write_dicom
from PIL import Image
from pydicom.encaps import encapsulate
from pydicom.uid import DeflatedExplicitVRLittleEndian, RLELossless

# --- one-line refusals ----------------------------------------------------------------------------


def one_line_naming(error, path) -> str:
    """The message of ``error``, asserted to be one line that starts with ``path``."""
    message = str(error)
    assert message.startswith(str(path)) and "\n" not in message, message
    return message


def refused_by_budget(error, path) -> None:
    """Asserts ``error`` is the one-line refusal of ``path`` by the decoded-size budget."""
    assert "over the decoded-size budget" in one_line_naming(error, path)


# --- zips written by hand -------------------------------------------------------------------------


def raw_zip(path, members):
    """Writes a zip of (name, method, payload, crc, declared size) by hand, so sizes can be anything."""
    local, central = io.BytesIO(), io.BytesIO()
    for name, method, payload, crc, size in members:
        offset = local.tell()
        encoded = name.encode()
        local.write(
            struct.pack("<4s5H3L2H", b"PK\x03\x04", 20, 0, method, 0, 0x21, crc, len(payload), size, len(encoded), 0)
            + encoded
            + payload
        )
        central.write(
            struct.pack(
                "<4s6H3L5H2L",
                b"PK\x01\x02",
                20,
                20,
                0,
                method,
                0,
                0x21,
                crc,
                len(payload),
                size,
                len(encoded),
                0,
                0,
                0,
                0,
                0,
                offset,
            )
            + encoded
        )
    with open(path, "wb") as f:
        f.write(local.getvalue() + central.getvalue())
        f.write(
            struct.pack(
                "<4s4H2LH",
                b"PK\x05\x06",
                0,
                0,
                len(members),
                len(members),
                len(central.getvalue()),
                len(local.getvalue()),
                0,
            )
        )
    return path


# --- torch .pth files -----------------------------------------------------------------------------


LEGACY_MAGIC = 0x1950A86A20F9469CFC6C  # the first pickle of a legacy (pre-zip) torch.save file


class StorageRef:
    """A tensor storage of ``numel`` float32 under ``key``: TorchPickler writes it as a persistent id."""

    def __init__(self, key, numel):
        self.key, self.numel = key, numel


class Tensor:
    """Pickles as torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...), as torch.save does."""

    def __init__(self, storage, offset, size, stride):
        self.args = (storage, offset, tuple(size), tuple(stride), False, collections.OrderedDict())

    def __reduce__(self):
        import torch._utils

        return torch._utils._rebuild_tensor_v2, self.args


class TorchPickler(pickle.Pickler):
    """Pickles as torch.save does: a StorageRef as its persistent id (the legacy format's, or the zip's)."""

    def __init__(self, file, legacy):
        super().__init__(file, protocol=2)
        self.legacy = legacy

    def persistent_id(self, obj):
        import torch

        if isinstance(obj, StorageRef):
            pid = ("storage", torch.FloatStorage, obj.key, "cpu", obj.numel)
            return pid + (None,) if self.legacy else pid
        return None


def write_pth(path, state, storages: dict[str, bytes], legacy: bool, header=None):
    """A torch.save-style file of `state`; storages are raw float32 bytes by key."""
    body = io.BytesIO()
    TorchPickler(body, legacy).dump(state)
    if not legacy:
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("archive/data.pkl", body.getvalue())
            for key, raw in storages.items():
                archive.writestr(f"archive/data/{key}", raw)
        return path
    header = header or [LEGACY_MAGIC, 1001, {"protocol_version": 1001, "little_endian": True}]
    with open(path, "wb") as f:
        for field in header:
            pickle.dump(field, f, protocol=2)
        f.write(body.getvalue())
        pickle.dump(list(storages), f, protocol=2)
        for raw in storages.values():
            f.write(struct.pack("<q", len(raw) // 4) + raw)
    return path


def zip_pth(path, pickle_bytes: bytes, members=()) -> str:
    """A zip .pth holding ``pickle_bytes`` as its data.pkl, and ``members`` (name, bytes) as its storages."""
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", pickle_bytes)
        for name, raw in members:
            archive.writestr(f"archive/data/{name}", raw)
    return str(path)


def storage_pickle(numel: int, size=None, stride=None) -> bytes:
    """The data.pkl of a zip .pth whose one tensor 'w' views a storage of ``numel`` float32."""
    size = (numel,) if size is None else size
    stride = (1,) * len(size) if stride is None else stride
    body = io.BytesIO()
    TorchPickler(body, legacy=False).dump({"w": Tensor(StorageRef("0", numel), 0, size, stride)})
    return body.getvalue()


def deflated_storage_members(numel: int, payload: bytes) -> list:
    """Zip members of a .pth whose one storage of `numel` float32 is stored as `payload`, deflated."""
    pkl = storage_pickle(numel)
    return [
        ("archive/data.pkl", zipfile.ZIP_STORED, pkl, zlib.crc32(pkl), len(pkl)),
        ("archive/data/0", zipfile.ZIP_DEFLATED, payload, 0, 4 * numel),  # its CRC is never reached
    ]


def legacy_pth(path, numel: int, stored: bytes, size=None, stride=None) -> str:
    """A legacy .pth whose one storage declares `numel` float32 and holds `stored` after its count."""
    with open(path, "wb") as f:
        for field in (LEGACY_MAGIC, 1001, {"protocol_version": 1001, "little_endian": True}):
            pickle.dump(field, f, protocol=2)
        state = {"w": Tensor(StorageRef("0", numel), 0, (numel,) if size is None else size, stride or (1,))}
        TorchPickler(f, legacy=True).dump(state)
        pickle.dump(["0"], f, protocol=2)
        f.write(struct.pack("<q", numel) + stored)
    return str(path)


def laughs(levels: int) -> bytes:
    """{'a': L, 'b': L} for L the level below, `levels` deep, each level a memo reference: 2**levels leaves."""
    out = b"\x80\x02}q\x00X\x01\x00\x00\x00aK\x01s"
    for i in range(1, levels + 1):
        out += b"}r" + struct.pack("<L", i) + b"(X\x01\x00\x00\x00aj" + struct.pack("<L", i - 1)
        out += b"X\x01\x00\x00\x00bj" + struct.pack("<L", i - 1) + b"u"
    return out + b"."


# --- images ---------------------------------------------------------------------------------------


def png_chunk(kind: bytes, body: bytes) -> bytes:
    """A PNG chunk: its length, kind, body and CRC."""
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def grey_png(width=64, height=64, pre=b"", post=b"", depth=8, header_only=False) -> bytes:
    """A black greyscale PNG, the chunks ``pre`` before its IDAT and ``post`` after it (``header_only``: no rows)."""
    ihdr = struct.pack(">IIBBBBB", width, height, depth, 0, 0, 0, 0)
    rows = b"" if header_only else (b"\0" + b"\0" * (width * depth // 8)) * height
    idat = png_chunk(b"IDAT", zlib.compress(rows))
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + pre + idat + post + png_chunk(b"IEND", b"")


def grey_jpeg(mode="L", size=(64, 64)) -> bytes:
    """A flat JPEG of ``size`` in Pillow mode ``mode``."""
    out = io.BytesIO()
    Image.new(mode, size, 128).save(out, "JPEG")
    return out.getvalue()


def png_header(path, width: int, height: int, color_type: int = 6) -> str:
    """A PNG whose header declares width x height (RGBA by default), with one tiny IDAT: Pillow opens it lazily."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">L", len(body)) + kind + body + struct.pack(">L", zlib.crc32(kind + body))

    ihdr = struct.pack(">2L5B", width, height, 8, color_type, 0, 0, 0)
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)))
        f.write(chunk(b"IEND", b""))
    return str(path)


def jpeg_segments(data):
    """``(marker, start, end)`` of a JPEG's marker segments, a scan's coded data included."""
    i, found = 2, []
    while i < len(data):
        marker = data[i + 1]
        if marker == 0xD9:
            return found + [(marker, i, i + 2)]
        end = i + 2 + struct.unpack(">H", data[i + 2 : i + 4])[0]
        if marker == 0xDA:
            while not (data[end] == 0xFF and data[end + 1] not in (0x00, *range(0xD0, 0xD8))):
                end += 1
        found.append((marker, i, end))
        i = end
    return found


def many_scans_jpeg(copies, size=256):
    """A progressive grey JPEG whose last scan (with its Huffman table) is repeated ``copies`` times."""
    out = io.BytesIO()
    Image.new("L", (size, size), 128).save(out, "JPEG", progressive=True)
    data = out.getvalue()
    segments = jpeg_segments(data)
    last = max(k for k, s in enumerate(segments) if s[0] == 0xDA)
    start = segments[last - 1][1] if segments[last - 1][0] == 0xC4 else segments[last][1]
    return data[: segments[-1][1]] + data[start : segments[last][2]] * copies + b"\xff\xd9"


# --- DICOM ----------------------------------------------------------------------------------------


def rle_bomb(path, side: int = 13000) -> str:
    """A 16-bit RLE DICOM of side x side pixels (338 MB decoded), each byte plane one run of zeros (5.3 MB)."""
    plane = side * side
    segment = b"\x81\x00" * (plane // 128) + b"\x00\x00" * (plane % 128 > 0)  # 128 zeros per 2 bytes
    header = struct.pack("<16L", 2, 64, 64 + len(segment), *([0] * 13))
    frame = header + segment + segment
    pixels = np.broadcast_to(np.uint16(0), (side, side))  # its shape only: no memory
    return write_dicom(path, pixels, transfer_syntax=RLELossless, pixel_data=encapsulate([frame]))


def deflated_bomb(path, inflated: int = 3 << 30, rows: int = 16) -> str:
    """A Deflated-syntax DICOM whose 16x16 image carries `inflated` bytes of pixel data once inflated."""
    meta = pydicom.dataset.FileMetaDataset()
    meta.MediaStorageSOPClassUID = pydicom.uid.SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
    meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    ds = pydicom.dataset.Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Rows = ds.Columns = rows
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    body = pydicom.filebase.DicomBytesIO()
    body.is_little_endian, body.is_implicit_VR = True, False
    pydicom.filewriter.write_dataset(body, ds)
    head = pydicom.filebase.DicomBytesIO()
    head.is_little_endian, head.is_implicit_VR = True, False
    pydicom.filewriter.write_file_meta_info(head, meta)
    chunk = 1 << 24
    z = zlib.compressobj(9, zlib.DEFLATED, -15)
    start = z.compress(body.getvalue() + b"\xe0\x7f\x10\x00OW\x00\x00" + struct.pack("<L", inflated))
    start += z.flush(zlib.Z_FULL_FLUSH)
    block = z.compress(bytes(chunk)) + z.flush(zlib.Z_FULL_FLUSH)  # after a full flush, each chunk is the same
    with open(path, "wb") as f:
        f.write(b"\x00" * 128 + b"DICM" + head.getvalue() + start + block * (inflated // chunk) + z.flush())
    return str(path)


# --- Keras HDF5 -----------------------------------------------------------------------------------


def keras_h5(path, make_weight, weight_name: str = "kernel:0") -> str:
    """A Keras weights file with one layer 'stem_conv' whose one weight `make_weight(group, name)` writes."""
    import h5py

    with h5py.File(path, "w") as f:
        f.attrs["layer_names"] = [b"stem_conv"]
        group = f.create_group("stem_conv")
        group.attrs["weight_names"] = [weight_name.encode()]
        make_weight(f, group, weight_name)
    return str(path)


def gzip_chunks(group, name, shape, chunk):
    """A gzip dataset of `shape` float32 zeros whose every chunk is written, compressed, by hand."""
    z = zlib.compress(bytes(4 * int(np.prod(chunk))), 9)
    dataset = group.create_dataset(name, shape=shape, dtype=np.float32, chunks=chunk, compression="gzip")
    for offset in np.ndindex(*(s // c for s, c in zip(shape, chunk))):
        dataset.id.write_direct_chunk(tuple(o * c for o, c in zip(offset, chunk)), z)
