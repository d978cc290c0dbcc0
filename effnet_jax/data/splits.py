"""Split rules: which records of the prepared (official) splits make up train/validation/test.

Splits are computed at read time from the labels and patient ids stored with each
record, so changing `val_fraction`, `split_seed` or the protocol never needs the
data to be prepared again.
"""

import dataclasses

import numpy as np

SPLITS = ("train", "validation", "test")
# The data set's own small validation part, untouched by the patient protocol: a few images
# from outside train/ that no split carved from train/ can stand in for (Kermany: 8 + 8).
OFFICIAL_VAL = "official_val"


@dataclasses.dataclass(frozen=True)
class PartMeta:
    """Per-record metadata of one prepared (official) split, in record order."""

    labels: np.ndarray  # int32 (n,)
    patient_ids: list[str] | None
    file_names: list[str] | None


@dataclasses.dataclass(frozen=True)
class Selection:
    """One logical split: records (part name, record index) in a fixed order, with labels."""

    part: np.ndarray  # int32 (n,): index into `parts`
    record: np.ndarray  # int64 (n,): record index inside that part
    labels: np.ndarray  # int32 (n,)
    parts: tuple[str, ...]
    file_names: list[str] | None
    patient_ids: list[str] | None

    def __len__(self):
        return len(self.labels)


def stratified_group_split(labels, groups, fractions, seed: int) -> np.ndarray:
    """Assign each example to bucket 0..len(fractions)-1, keeping groups whole.

    Per label: the label's groups are shuffled with `seed`, then cut where the running
    image count passes each cumulative fraction, so every bucket gets close to its
    fraction of that label's images. Returns an int array of bucket ids per example.
    """
    labels = np.asarray(labels)
    groups = np.asarray(groups)
    fractions = np.asarray(fractions, np.float64)
    if np.any(fractions < 0) or not np.isclose(fractions.sum(), 1.0):
        raise ValueError(f"split fractions {fractions.tolist()}: expected non-negative, summing to 1")
    bucket = np.full(len(labels), -1, np.int64)
    rng = np.random.default_rng([seed, 5381])
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        uniq, inverse, counts = np.unique(groups[members], return_inverse=True, return_counts=True)
        order = rng.permutation(len(uniq))
        cum = np.cumsum(counts[order])
        cuts = np.round(np.cumsum(fractions)[:-1] * len(members))
        # A group goes to the bucket in which its first image falls (cum - count is the
        # number of images before it), so a group never straddles a cut.
        group_bucket = np.empty(len(uniq), np.int64)
        group_bucket[order] = np.searchsorted(cuts, cum - counts[order], side="right")
        bucket[members] = group_bucket[inverse]
    # A group with images of several labels (one patient's bacterial and viral films) goes
    # whole to the bucket its first image drew, so no patient straddles two splits.
    _, first, whole = np.unique(groups, return_index=True, return_inverse=True)
    return bucket[first][whole.reshape(-1)]


def _concat(metas: dict[str, PartMeta], parts: tuple[str, ...]):
    part = np.concatenate([np.full(len(metas[p].labels), i, np.int32) for i, p in enumerate(parts)])
    record = np.concatenate([np.arange(len(metas[p].labels), dtype=np.int64) for p in parts])
    labels = np.concatenate([metas[p].labels for p in parts]).astype(np.int32)

    def join(attr):
        values = [getattr(metas[p], attr) for p in parts]
        if any(v is None for v in values):
            return None
        if attr == "file_names" and len(parts) > 1:
            # Pooled: the same file name can occur in two official splits; say which one.
            return [f"{p}/{x}" for p, v in zip(parts, values) for x in v]
        return [x for v in values for x in v]

    return part, record, labels, join("file_names"), join("patient_ids")


def _select(all_parts, metas, parts, keep: np.ndarray) -> Selection:
    part, record, labels, names, pids = all_parts
    idx = np.flatnonzero(keep)
    pick = lambda v: None if v is None else [v[i] for i in idx]
    return Selection(part[idx], record[idx], labels[idx], parts, pick(names), pick(pids))


def select(
    metas: dict[str, PartMeta],
    split: str,
    *,
    protocol: str,
    val_fraction: float,
    pooled_fractions=(0.6, 0.2, 0.2),
    pooled_group: str = "image",
    seed: int = 0,
    carve_validation: bool = True,
) -> Selection:
    """Resolve a logical split name to the records that make it up.

    Args:
      metas: metadata of the prepared splits, e.g. {'train': ..., 'val': ..., 'test': ...}.
      split: 'train', 'validation' or 'test'.
      protocol: 'patient' (validation carved from 'train' by patient; test = official
        test) or 'pooled' (every part pooled, stratified into pooled_fractions).
      carve_validation: False when the data set ships its own validation part (named
        'validation' or 'val' in `metas`) and it should be used as is (PneumoniaMNIST).
    """
    if split == OFFICIAL_VAL:
        return _official_val(metas, protocol, carve_validation)
    if split not in SPLITS:
        raise ValueError(f"split={split!r}: expected one of {SPLITS + (OFFICIAL_VAL,)}")
    if protocol == "pooled":
        parts = tuple(metas)
        everything = _concat(metas, parts)
        if pooled_group == "patient":
            groups = everything[4]
            if groups is None:
                raise ValueError("data.pooled_group='patient' but this data set has no patient ids; use 'image'")
        elif pooled_group == "image":
            groups = np.arange(len(everything[2]))
        else:
            raise ValueError(f"data.pooled_group={pooled_group!r}: expected 'image' or 'patient'")
        if len(pooled_fractions) != 3:
            raise ValueError(f"data.pooled_fractions={pooled_fractions}: expected 3 fractions")
        bucket = stratified_group_split(everything[2], groups, pooled_fractions, seed)
        return _select(everything, metas, parts, bucket == SPLITS.index(split))
    if protocol != "patient":
        raise ValueError(f"data.split_protocol={protocol!r}: expected 'patient' or 'pooled'")
    if split == "test":
        if "test" not in metas:
            raise ValueError(
                f"split test: the prepared data has only the parts {sorted(metas)} "
                "(no official test folder); use data.split_protocol='pooled' or "
                "evaluate on validation"
            )
        parts = ("test",)
        everything = _concat(metas, parts)
        return _select(everything, metas, parts, np.ones(len(everything[2]), bool))
    if not carve_validation:
        name = {"train": "train", "validation": "validation" if "validation" in metas else "val"}[split]
        parts = (name,)
        everything = _concat(metas, parts)
        return _select(everything, metas, parts, np.ones(len(everything[2]), bool))
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"data.val_fraction={val_fraction}: expected a fraction in (0, 1)")
    parts = ("train",)
    everything = _concat(metas, parts)
    groups = everything[4] if everything[4] is not None else np.arange(len(everything[2]))
    bucket = stratified_group_split(everything[2], groups, (1 - val_fraction, val_fraction), seed)
    return _select(everything, metas, parts, bucket == (1 if split == "validation" else 0))


def _official_val(metas, protocol: str, carve_validation: bool) -> Selection:
    name = "validation" if "validation" in metas else "val"
    if protocol != "patient":
        raise ValueError(
            f"split {OFFICIAL_VAL}: under data.split_protocol={protocol!r} the official "
            "validation images are pooled into train/validation/test"
        )
    if not carve_validation:
        raise ValueError(
            f"split {OFFICIAL_VAL}: this data set's official validation part is its "
            "validation split already; use split='validation'"
        )
    if name not in metas:
        raise ValueError(f"split {OFFICIAL_VAL}: the prepared data has only the parts {sorted(metas)}")
    everything = _concat(metas, (name,))
    return _select(everything, metas, (name,), np.ones(len(everything[2]), bool))
