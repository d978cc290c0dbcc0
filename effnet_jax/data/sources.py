"""Random-access record sources per data set: metadata of each prepared split, and a reader.

A reader is a small picklable object (grain worker processes receive a copy) that
opens its TFDS data sources lazily in whichever process uses it.
"""

import functools

from effnet_jax.data import bundled_sample, external, imaging, synthetic
from effnet_jax.data import splits as splits_lib

DATASETS = ("chest_xray", "folder", "pneumonia_mnist", "synthetic", "sample")


class SyntheticReader:
    """Reads synthetic examples: the image is computed from (part, index)."""

    def __init__(self, parts):
        self.parts = tuple(parts)

    def read_image(self, part: int, index: int):
        return synthetic.image(self.parts[part], int(index))


class TfdsReader:
    """Reads encoded image bytes of prepared TFDS splits through `as_data_source`.

    Each record's bytes pass the checks a raw file's do (``imaging.open_image``: formats, header
    items, decoded-size budget, JPEG scans) before they are returned: the records under
    data.data_dir may be a downloaded or tampered copy, not what preparation wrote.
    """

    def __init__(self, builder_factory, parts):
        self._factory = builder_factory  # picklable callable returning the TFDS builder
        self.parts = tuple(parts)
        self._sources = None
        self._where = None  # the prepared version folder, for naming records

    def __getstate__(self):
        # Open file handles do not travel to worker processes; each reopens its own.
        return {"_factory": self._factory, "parts": self.parts, "_sources": None, "_where": None}

    def _open(self):
        from tensorflow_datasets.core import decode  # pylint: disable=g-import-not-at-top

        builder = self._factory()
        # SkipDecoding: keep the stored JPEG/PNG bytes; we decode with Pillow at the
        # size we need (and TensorFlow is not needed to read them).
        self._sources = [builder.as_data_source(p, decoders={"image": decode.SkipDecoding()}) for p in self.parts]
        self._where = str(builder.data_dir)

    def _record(self, part: int, index: int) -> dict:
        if self._sources is None:
            self._open()
        return self._sources[part][int(index)]

    def read_image(self, part: int, index: int):
        record = self._record(part, index)
        imaging.open_image(record["image"], self._name(part, index, record)).close()  # header only, nothing decoded
        return record["image"]

    def record_name(self, part: int, index: int) -> str:
        return self._name(part, index, self._record(part, index))

    def _name(self, part: int, index: int, record: dict) -> str:
        """The version folder, split, position and original file of a record: what errors name.

        The file name is shown as a repr: a stored name may hold anything, a newline included.
        """
        file_name = record.get("file_name", b"")
        file_name = file_name.decode("utf-8", "replace") if isinstance(file_name, bytes) else str(file_name)
        return f"{self._where} {self.parts[part]} record {int(index)}" + (f" ({file_name!r})" if file_name else "")


def record_name(reader, part: int, index: int) -> str:
    """How an error names record ``index`` of ``part`` of ``reader``: its file, or its data set and position."""
    name = getattr(reader, "record_name", None)
    return name(part, index) if name is not None else f"{reader.parts[part]} record {int(index)}"


def _config_key(cfg) -> tuple:
    return (
        cfg.name,
        cfg.get("data_dir"),
        cfg.get("manual_dir"),
        cfg.get("max_size"),
        cfg.get("on_bad_image"),
        cfg.get("mnist_size"),
        cfg.get("synthetic_examples"),
        cfg.get("prepare", True),
        cfg.get("exclude_list"),
        tuple(cfg.get("class_names") or ()),
        tuple(tuple(r) for r in cfg.get("class_from_name") or ()),
        cfg.get("patient_id_pattern") or None,
        bool(cfg.get("follow_links", False)),
    )


@functools.lru_cache(maxsize=8)
def _catalog(key: tuple):
    name = key[0]
    if name == "synthetic":
        sizes = synthetic.split_sizes(int(key[6]))
        metas = {p: splits_lib.PartMeta(synthetic.labels(n), None, None) for p, n in sizes.items()}
        return metas, SyntheticReader(tuple(metas))
    if name == "sample":
        return bundled_sample.catalog()
    if name not in DATASETS:
        raise ValueError(f"data.name={name!r}: expected one of {DATASETS}")
    from effnet_jax.data import prepare  # pylint: disable=g-import-not-at-top

    factory = prepare.BuilderFactory(
        name=name,
        data_dir=key[1],
        manual_dir=key[2],
        max_size=key[3],
        on_bad_image=key[4],
        mnist_size=key[5],
        exclude_list=key[8],
        class_names=key[9],
        class_from_name=key[10],
        patient_id_pattern=key[11],
        follow_links=key[12],
    )
    builder = prepare.ensure_prepared(factory, allow_prepare=key[7])
    metas = prepare.read_part_metadata(builder)
    return metas, TfdsReader(factory, tuple(metas))


def catalog(cfg) -> tuple[dict[str, splits_lib.PartMeta], object]:
    """Metadata of every prepared split of `cfg.name`, and a reader for their images."""
    return _catalog(_config_key(cfg))


def reader(cfg, split: str):
    """The reader of `split`'s images: the prepared data set's, or an external folder's."""
    if external.is_external(split):
        return external.reader(cfg, split)
    return catalog(cfg)[1]


def selection(cfg, split: str) -> splits_lib.Selection:
    """The records of logical `split` ('train' | 'validation' | 'test' | 'external...') under cfg's protocol."""
    if external.is_external(split):
        return external.selection(cfg, split)
    metas, _ = catalog(cfg)
    if cfg.name in ("synthetic", "sample"):
        # Synthetic splits are generated separately, and the bundled sample ships its two
        # patient-disjoint parts: both are used as they are.
        return splits_lib.select(metas, split, protocol="patient", val_fraction=0.5, carve_validation=False)
    return splits_lib.select(
        metas,
        split,
        protocol=cfg.split_protocol,
        val_fraction=cfg.val_fraction,
        pooled_fractions=tuple(cfg.get("pooled_fractions", (0.6, 0.2, 0.2))),
        pooled_group=cfg.get("pooled_group", "image"),
        seed=cfg.split_seed,
        # PneumoniaMNIST ships a validation part (and has no patient ids to carve by).
        carve_validation=cfg.name != "pneumonia_mnist",
    )
