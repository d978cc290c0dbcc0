"""TFDS builder for PneumoniaMNIST (MedMNIST+: the Kermany images at 28, 64, 128 or 224 px)."""

import hashlib
import io
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

from effnet_jax import limits, zip_directory
from effnet_jax.data.builders import base
from effnet_jax.data.kermany import FOLLOW_LINKS_HINT
from effnet_jax.labels import CLASS_NAMES
from effnet_jax.output_files import open_output

SIZES = (28, 64, 128, 224)
RECORD = "https://zenodo.org/records/10519652"
# MD5 of each file as the MedMNIST package records them (Zenodo record 10519652, v3.0).
MD5 = {
    28: "28209eda62fecd6e6a2d98b1501bb15f",
    64: "8f4eceb4ccffa70c672198ea285246c6",
    128: "05b46931834c231683c68f40c47b2971",
    224: "d6a3c71de1b945ea11211b03746c1fe1",
}
SPLITS = ("train", "val", "test")
# A MedMNIST file holds six arrays (images and labels of each split); a zip listing many more is not one.
MAX_NPZ_MEMBERS = 16


def file_name(size: int) -> str:
    """The npz file name MedMNIST uses for `size` (28 px has no suffix)."""
    return "pneumoniamnist.npz" if size == 28 else f"pneumoniamnist_{size}.npz"


def url(size: int) -> str:
    return f"{RECORD}/files/{file_name(size)}?download=1"


def _open_npz(path: Path):
    """The npz opened for reading, its zip directory checked before numpy lists its members."""
    try:
        return zip_directory.open_checked(path, max_entries=MAX_NPZ_MEMBERS, what="a MedMNIST .npz", error=ValueError)
    except OSError as e:
        raise ValueError(f"{path}: not a readable npz ({type(e).__name__}: {e.strerror or e})") from e


class _WriteError(Exception):
    """Writing the download failed (the disk), as opposed to fetching it (the network)."""


def _download(size: int, folder: Path, timeout_s: float = 60.0) -> Path:
    """Fetch the npz for `size` into `folder` (once), verifying its MD5; clear error offline.

    One attempt with a timeout instead of TFDS's download manager, whose retries with
    back-off take minutes to tell an offline user that there is no network.
    """
    target = folder / file_name(size)
    if target.is_file() and _md5(target) == MD5[size]:
        return target
    folder.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(".partial")
    h = hashlib.md5()
    try:
        # Never through a link, FIFO or shared file planted at the name (data_dir may be anyone's).
        out = open_output(partial, "wb")
    except OSError as e:  # UnsafeOutputError (a ValueError) names the planted file itself
        raise RuntimeError(f"{partial}: cannot write the download there ({e.strerror or e})") from e
    with out:
        try:
            response = urllib.request.urlopen(url(size), timeout=timeout_s)
            with response:
                for chunk in iter(lambda: response.read(1 << 20), b""):
                    h.update(chunk)
                    try:
                        out.write(chunk)
                    except OSError as e:  # a full or read-only disk: not the network's fault
                        raise _WriteError(f"{partial}: cannot write the download there ({e.strerror or e})") from e
        except _WriteError as e:
            partial.unlink(missing_ok=True)
            raise RuntimeError(str(e)) from e.__cause__
        except (OSError, urllib.error.URLError) as e:  # URLError, timeouts, refused connections
            partial.unlink(missing_ok=True)
            raise RuntimeError(
                f"PneumoniaMNIST: could not download {url(size)} ({type(e).__name__}: {e}). "
                f"Offline? Download {file_name(size)} from {RECORD} and set data.manual_dir to "
                "the folder holding it."
            ) from e
    if h.hexdigest() != MD5[size]:
        partial.unlink(missing_ok=True)
        raise RuntimeError(
            f"{url(size)}: downloaded MD5 {h.hexdigest()} does not match the expected {MD5[size]} for {file_name(size)}"
        )
    partial.rename(target)
    return target


class PneumoniaMnistConfig(tfds.core.BuilderConfig):
    """One image size of PneumoniaMNIST."""

    def __init__(self, size: int, **kwargs):
        super().__init__(name=f"size{size}", description=f"{size}x{size} grayscale", **kwargs)
        self.size = size


def config_for(size: int) -> PneumoniaMnistConfig:
    """The registered config for data.mnist_size, or a clear error."""
    if size not in SIZES:
        raise ValueError(f"data.mnist_size={size}: expected one of {SIZES}")
    return next(c for c in PneumoniaMnist.BUILDER_CONFIGS if c.size == size)


def _md5(path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class PneumoniaMnist(base.Builder):
    """PneumoniaMNIST: image, label and file name (its index in the npz) per example."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First version (MedMNIST+ v3 files)."}
    BUILDER_CONFIGS = [PneumoniaMnistConfig(s) for s in SIZES]
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        f"Optional: put {file_name(224)} (or the file for your size) from {RECORD} into "
        "data.manual_dir to prepare offline."
    )

    def __init__(self, *, raw_path=None, follow_links: bool = False, **kwargs):
        self._raw_path = raw_path
        self._follow_links = follow_links  # data.follow_links: the npz found in raw_path may lead anywhere
        super().__init__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        size = self.builder_config.size
        return self.dataset_info_from_configs(
            description="PneumoniaMNIST (MedMNIST+): pediatric chest X-rays, NORMAL vs PNEUMONIA, "
            "centre-cropped and resized by the MedMNIST authors.",
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(size, size, 1), encoding_format="png"),
                    "label": tfds.features.ClassLabel(names=list(CLASS_NAMES)),
                    "file_name": tfds.features.Text(),
                }
            ),
            supervised_keys=("image", "label"),
            homepage=RECORD,
            citation="Yang et al., MedMNIST v2, Scientific Data 10:41, 2023.",
            metadata=tfds.core.MetadataDict(),
            # Records in generation order (sorted paths / npz order), so record i is easy to trace.
            disable_shuffling=True,
        )

    def _find_local(self) -> Path | str | None:
        if self._raw_path is None:
            return None
        raw = Path(self._raw_path)
        if raw.is_file():
            return raw
        candidate = raw / file_name(self.builder_config.size)
        if not candidate.is_file():
            return None
        # Found in the folder, not named: read only where it lies inside it, as images found there are.
        return candidate if self._follow_links else limits.FoundInFolder(str(candidate), str(raw), FOLLOW_LINKS_HINT)

    def _split_generators(self, dl_manager):
        size = self.builder_config.size
        path = self._find_local()
        if path is None:
            path = _download(size, Path(dl_manager.download_dir))
        arrays = self._load(path, size)
        self.info.metadata.update({"source": str(path), "size": size})
        return {split: self._generate_examples(*arrays[split], split) for split in SPLITS}

    @staticmethod
    def _load(path, size: int):
        source = _open_npz(path)
        try:
            npz = np.load(source)
        except Exception as e:
            source.close()
            raise ValueError(f"{path}: not a readable npz ({type(e).__name__}: {e})") from e
        out = {}
        with source, npz:
            # Members are read whole: what they declare is held to the decoded-size budget first.
            declared = sum(info.file_size for info in npz.zip.infolist())
            limits.check(path, declared, f"the {len(npz.files)} arrays of a MedMNIST .npz", ValueError)
            for info in npz.zip.infolist():
                # zipfile inflates a bzip2 or LZMA chunk whole, past the declared size (a 1.5 GB
                # member declaring 600 kB took 3.2 GB); numpy writes stored or deflated members.
                if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED) or info.flag_bits & 0x1:
                    raise ValueError(
                        f"{path}: {info.filename} is encrypted or compressed with zip method {info.compress_type}; "
                        "a MedMNIST .npz holds stored or deflated arrays (numpy.savez / savez_compressed)"
                    )
                _check_npy_header(npz.zip, info, path)
            for split in SPLITS:
                missing = [k for k in (f"{split}_images", f"{split}_labels") if k not in npz.files]
                if missing:
                    raise ValueError(
                        f"{path}: missing arrays {missing}; expected train/val/test "
                        "_images and _labels (MedMNIST layout)"
                    )
                images, labels = npz[f"{split}_images"], npz[f"{split}_labels"].reshape(-1)
                if images.ndim == 4 and images.shape[-1] == 1:
                    images = images[..., 0]
                if images.shape[1:] != (size, size) or images.dtype != np.uint8:
                    raise ValueError(
                        f"{path}: {split}_images is {images.dtype}{list(images.shape)}; "
                        f"expected uint8 [N, {size}, {size}] for data.mnist_size={size}"
                    )
                if len(images) != len(labels) or len(images) == 0:
                    raise ValueError(
                        f"{path}: {split} has {len(images)} images and {len(labels)} labels; "
                        "expected the same non-zero number"
                    )
                if not np.isin(labels, (0, 1)).all():
                    raise ValueError(
                        f"{path}: {split}_labels has values {np.unique(labels).tolist()}; "
                        "expected 0 (normal) and 1 (pneumonia)"
                    )
                out[split] = (images, labels.astype(np.int64))
        return out

    def _generate_examples(self, images, labels, split):
        for i, (image, label) in enumerate(zip(images, labels)):
            buf = io.BytesIO()
            Image.fromarray(image, mode="L").save(buf, format="PNG")
            name = f"{split}_{i:05d}"
            yield name, {"image": buf.getvalue(), "label": int(label), "file_name": name}


def _check_npy_header(archive: zipfile.ZipFile, info: zipfile.ZipInfo, path) -> None:
    """Refuses a member whose .npy header declares more bytes than the member holds, or Python objects.

    numpy allocates the array a header declares before it reads the data: a member of a few
    bytes declaring 1e9 x 28 x 28 took that memory (MemoryError). Object arrays need pickles,
    which are never loaded.
    """
    try:
        with archive.open(info) as f:
            version = np.lib.format.read_magic(f)
            read_header = (
                np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            )
            shape, _, dtype = read_header(f)
            header_bytes = f.tell()
    except Exception as e:  # numpy's header parser raises ValueError, zipfile BadZipFile, a cut file EOFError
        raise ValueError(f"{path}: {info.filename} is not a .npy array ({type(e).__name__}: {e})") from None
    if dtype.hasobject:
        raise ValueError(
            f"{path}: {info.filename} holds Python objects (dtype {dtype}); a MedMNIST array holds numbers"
        )
    declared = int(np.prod(shape, dtype=object)) * dtype.itemsize
    if declared > info.file_size - header_bytes:
        raise ValueError(
            f"{path}: {info.filename} declares a {dtype}{list(shape)} array of {declared:,} bytes but holds "
            f"{max(info.file_size - header_bytes, 0):,}"
        )
