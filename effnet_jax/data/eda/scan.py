"""One pass over every image of a chest_xray set: what each file is, and its fingerprints.

Reads either the raw layout (a folder, a parent of it, or its zip: see kermany.scan) or a
prepared TFDS data set. Raw files give original sizes, colour modes and bit depths;
prepared records only what was stored (grayscale, shorter side <= max_size).
"""

import dataclasses
import logging
from pathlib import Path

import numpy as np
from PIL import Image

from effnet_jax import limits
from effnet_jax.data import exclusions, imaging, kermany, prepared_files
from effnet_jax.data.eda import hashing
from effnet_jax.progress import Progress
from effnet_jax.weights.readers import read_json_file

log = logging.getLogger("effnet_jax.data")

THUMB = 160  # sample-grid thumbnails: longer side in pixels
# Bits per channel of each Pillow mode (what the file stored, before our 8-bit conversion).
_BIT_DEPTH = {
    "1": 1,
    "L": 8,
    "P": 8,
    "RGB": 8,
    "RGBA": 8,
    "RGBX": 8,
    "CMYK": 8,
    "YCbCr": 8,
    "LA": 8,
    "La": 8,
    "PA": 8,
    "LAB": 8,
    "HSV": 8,
    "I;16": 16,
    "I;16B": 16,
    "I;16L": 16,
    "I;16N": 16,
    "I": 32,
    "F": 32,
}


@dataclasses.dataclass
class ImageInfo:
    """One file: where it sits, what it is, and (when readable) its pixel statistics."""

    key: str  # 'split/CLASS/file name' (the exclusion list's key)
    split: str
    label: str
    patient: str
    pathogen: str
    file_bytes: int
    error: str | None = None  # why it could not be decoded (None: readable)
    format: str | None = None
    mode: str | None = None
    bit_depth: int | None = None
    width: int | None = None
    height: int | None = None
    mean: float | None = None  # of the 8-bit grayscale pixels
    std: float | None = None
    pixel_hash: str | None = None
    phash: str | None = None


@dataclasses.dataclass
class Inventory:
    """Every image of a data set, plus what the layout scan found beside them."""

    source: str
    kind: str  # 'raw' or 'prepared'
    images: list[ImageInfo]
    problems: list[str]  # stray files/folders (raw)
    ignored: list[str]  # OS metadata, nested copies (raw)
    histograms: dict[str, np.ndarray]  # label -> mean normalised 256-bin grayscale histogram
    samples: dict[str, list[tuple[str, np.ndarray]]]  # label -> [(key, thumbnail uint8)]
    metadata: dict = dataclasses.field(default_factory=dict)  # prepared: the dataset's metadata


def _decode(data: bytes, shown: str) -> tuple[Image.Image, Image.Image]:
    """(opened image, its 8-bit grayscale); BadImageError naming `shown` when unusable."""
    # As training data is read: the formats, the budget, TIFF strips and JPEG scans checked before decoding.
    im = imaging.load_image(data, shown)
    try:  # the first frame of a multi-frame file, as imaging.decode_file reads it
        return im, imaging.to_gray(im)
    except imaging.BadImageError as e:
        raise imaging.BadImageError(f"{shown}: {e}") from e


class _Accumulator:
    """Fills ImageInfo pixel fields and collects per-class histograms and sample thumbnails."""

    def __init__(self, sample_keys: set[str]):
        self.sample_keys = sample_keys
        self.hist_sum: dict[str, np.ndarray] = {}
        self.hist_n: dict[str, int] = {}
        self.samples: dict[str, list] = {}

    def add(self, info: ImageInfo, data: bytes, shown: str) -> None:
        try:
            im, gray = _decode(data, shown)
        except imaging.BadImageError as e:
            info.error = str(e)
            return
        info.format, info.mode = im.format, im.mode
        info.bit_depth = _BIT_DEPTH.get(im.mode)
        info.width, info.height = im.size
        arr = np.asarray(gray)
        info.mean, info.std = float(arr.mean()), float(arr.std())
        info.pixel_hash, info.phash = hashing.pixel_hash(gray), hashing.phash(gray)
        # Each image adds its normalised histogram, so a 2,000-px original weighs no more
        # than a 400-px one in its class's curve.
        hist = np.bincount(arr.ravel(), minlength=256) / arr.size
        self.hist_sum[info.label] = self.hist_sum.get(info.label, 0) + hist
        self.hist_n[info.label] = self.hist_n.get(info.label, 0) + 1
        if info.key in self.sample_keys:
            thumb = gray.copy()
            thumb.thumbnail((THUMB, THUMB))
            self.samples.setdefault(info.label, []).append((info.key, np.asarray(thumb)))

    def histograms(self) -> dict[str, np.ndarray]:
        return {k: v / self.hist_n[k] for k, v in sorted(self.hist_sum.items())}


def _pick_samples(keys_by_label: dict[str, list[str]], per_class: int, seed: int) -> set[str]:
    """A seeded choice of `per_class` keys per label (the same grid on every run)."""
    rng = np.random.default_rng(seed)
    picked = set()
    for label, keys in keys_by_label.items():
        keys = sorted(keys)
        for i in sorted(rng.choice(len(keys), min(per_class, len(keys)), replace=False)):
            picked.add(keys[i])
    return picked


def scan_raw(
    path, *, samples_per_class: int = 8, seed: int = 0, progress: bool = True, follow_links: bool = False
) -> Inventory:
    """Decode every file of the raw chest_xray layout at `path` (folder or zip).

    A link leading outside `path` is an unreadable image unless ``follow_links``.
    """
    layout = kermany.scan(path, follow_links=follow_links)
    try:
        entries = [(split, cls, rel) for split in layout.files for cls, rel in layout.files[split]]
        by_label = {}
        for _, cls, rel in entries:
            by_label.setdefault(cls, []).append(exclusions.file_key(rel))
        acc = _Accumulator(_pick_samples(by_label, samples_per_class, seed))
        images = []
        for split, cls, rel in Progress(
            len(entries), f"scan {layout.source}", unit="img", enabled=progress, logger=log
        ).wrap(entries):
            name = rel.rsplit("/", 1)[-1]
            patient, pathogen = kermany.parse_name(name, cls)
            info = ImageInfo(
                key=exclusions.file_key(rel), split=split, label=cls, patient=patient, pathogen=pathogen, file_bytes=0
            )
            images.append(info)
            try:  # a link loop, dangling link, link out or oversized member is an unreadable image, not a crash
                data = layout.read(rel)
            except imaging.BadImageError as e:
                info.error = str(e)
                continue
            info.file_bytes = len(data)
            shown = f"{layout.source}:{rel}" if layout.zip_path else f"{layout.source}/{rel}"
            acc.add(info, data, shown)
    finally:
        layout.close()
    return Inventory(
        source=layout.source,
        kind="raw",
        images=images,
        problems=layout.problems,
        ignored=layout.ignored,
        histograms=acc.histograms(),
        samples=acc.samples,
    )


def find_prepared(path, follow_links: bool = False) -> Path | None:
    """The prepared chest_xray version folder at or under `path` (one with dataset_info.json).

    Each dataset_info.json is read as a run's JSON is (a regular file, bounded in size and
    nesting) and, unless ``follow_links``, only where it really lies inside `path`: a link out
    of it is refused naming the file, as a link out of an image folder is.
    """
    path = Path(path).expanduser()
    if (path / "dataset_info.json").is_file():
        _dataset_info(path / "dataset_info.json", path, follow_links)
        return path
    found = sorted(
        {
            p.parent
            for pattern in ("*/dataset_info.json", "*/*/dataset_info.json", "chest_xray/*/*/dataset_info.json")
            for p in path.glob(pattern)
        }
    )
    found = [p for p in found if _dataset_info(p / "dataset_info.json", path, follow_links).get("name") == "chest_xray"]
    if len(found) > 1:
        listing = "\n  ".join(str(p) for p in found)
        raise ValueError(
            f"--data_dir {path}: holds {len(found)} prepared chest_xray data sets; point it at one of:\n  {listing}"
        )
    return found[0] if found else None


def _dataset_info(path: Path, folder: Path, follow_links: bool) -> dict:
    """A dataset_info.json found in ``folder``; ``{}`` when it holds no JSON object. ValueError naming it when refused."""
    found = str(path) if follow_links else limits.FoundInFolder(str(path), str(folder), kermany.FOLLOW_LINKS_HINT)
    value = read_json_file(found)
    return value if isinstance(value, dict) else {}


# The features a prepared chest_xray set holds. TFDS imports the module of any class features.json
# names (``this.X`` printed the Zen of Python), so no other is read.
_FEATURES = {
    "image": "tensorflow_datasets.core.features.image_feature.Image",
    "label": "tensorflow_datasets.core.features.class_label_feature.ClassLabel",
    "pathogen": "tensorflow_datasets.core.features.class_label_feature.ClassLabel",
    "patient_id": "tensorflow_datasets.core.features.text_feature.Text",
    "file_name": "tensorflow_datasets.core.features.text_feature.Text",
}


def _check_features(path: Path) -> None:
    """``features.json`` must describe chest_xray's features with TFDS's own classes (PreparedDataError naming it)."""
    value = read_json_file(str(path), error=prepared_files.PreparedDataError)
    try:
        top, features = value["pythonClassName"], value["featuresDict"]["features"]
        found = {key: feature["pythonClassName"] for key, feature in features.items()}
        dtype = features["image"]["image"].get("dtype", "uint8")
    except (KeyError, TypeError, AttributeError):
        found, top, dtype = None, None, None
    if top != "tensorflow_datasets.core.features.features_dict.FeaturesDict" or found != _FEATURES or dtype != "uint8":
        raise prepared_files.PreparedDataError(
            f"{path}: not the features of a prepared chest_xray set (image, label, pathogen, patient_id and "
            "file_name, of TFDS's own feature classes, uint8 images)"
        )


def scan_prepared(version_dir, *, samples_per_class: int = 8, seed: int = 0, progress: bool = True) -> Inventory:
    """Decode every stored record of a prepared chest_xray data set (TFDS version folder)."""
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    from tensorflow_datasets.core import decode  # pylint: disable=g-import-not-at-top

    prepared_files.check_folder(str(version_dir), "chest_xray")
    _check_features(Path(version_dir) / "features.json")
    builder = tfds.builder_from_directory(str(version_dir))
    names = builder.info.features["label"].names
    pathogens = builder.info.features["pathogen"].names
    text = lambda v: v.decode("utf-8") if isinstance(v, bytes) else str(v)
    classes = {"label": len(names), "pathogen": len(pathogens)}
    records = {}
    for split in builder.info.splits:
        source = builder.as_data_source(split, decoders={"image": decode.SkipDecoding()})
        records[split] = prepared_files.read_split(source, f"{version_dir} {split}", classes)
    by_label = {}
    for split, recs in records.items():
        for r in recs:
            by_label.setdefault(names[r["label"]], []).append(f"{split}/{names[r['label']]}/{text(r['file_name'])}")
    acc = _Accumulator(_pick_samples(by_label, samples_per_class, seed))
    images = []
    total = sum(len(v) for v in records.values())
    with Progress(total, f"scan {version_dir}", unit="img", enabled=progress, logger=log) as bar:
        for split, recs in records.items():
            for r in recs:
                label, name = names[r["label"]], text(r["file_name"])
                info = ImageInfo(
                    key=f"{split}/{label}/{name}",
                    split=split,
                    label=label,
                    patient=text(r["patient_id"]),
                    pathogen=pathogens[r["pathogen"]],
                    file_bytes=len(r["image"]),
                )
                acc.add(info, r["image"], f"{version_dir}:{split}/{name}")
                images.append(info)
                bar.update()
    return Inventory(
        source=str(version_dir),
        kind="prepared",
        images=images,
        problems=[],
        ignored=[],
        histograms=acc.histograms(),
        samples=acc.samples,
        metadata=dict(builder.info.metadata or {}),
    )


def scan_any(path, follow_links: bool = False, **kw) -> Inventory:
    """Scan a prepared data set when `path` holds one, else the raw layout (folder or zip)."""
    prepared = None if Path(path).expanduser().is_file() else find_prepared(path, follow_links)
    return scan_prepared(prepared, **kw) if prepared else scan_raw(path, follow_links=follow_links, **kw)
