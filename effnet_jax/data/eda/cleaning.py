"""Findings on a scanned data set, and the exclusions they imply (one reason per file).

What is excluded, in priority order (a file gets the first reason that applies):

    unreadable         not an image, corrupt or truncated (Pillow cannot decode it fully)
    blank              every pixel the same value
    near_constant      grayscale standard deviation below `min_std` (no anatomy to learn)
    too_small          shorter side below `min_side` pixels
    too_large          longer side above `max_side` pixels
    extreme_aspect     longer / shorter side above `max_aspect` (a crop or a strip, not a chest film)
    label_conflict     the same (or a near-identical) image carries both labels: every copy goes
    leakage_duplicate  a train/val image whose exact or near copy is in test (test keeps its copy)
    leakage_patient    a train/val image of a patient who also has images in test
                       (`patient_leakage='exclude'`, the default; 'report' only lists them)
    exact_duplicate    same pixels as a kept image
    near_duplicate     perceptual hash within `near_bits` of a kept image

Duplicate groups are connected components of "same pixels" and "pHash within near_bits"
links, among images that passed the quality checks (blank images would otherwise all be
duplicates of each other). Each group keeps one image: the one in the most held-out split
(test, then val, then train), then the first by name, so evaluation sets stay as shipped.
"""

import dataclasses

from effnet_jax.data.eda import hashing

REASONS = (
    "unreadable",
    "blank",
    "near_constant",
    "too_small",
    "too_large",
    "extreme_aspect",
    "label_conflict",
    "leakage_duplicate",
    "leakage_patient",
    "exact_duplicate",
    "near_duplicate",
)
_KEEP_ORDER = {"test": 0, "val": 1, "train": 2}  # which copy of a duplicate group survives
PATIENT_LEAKAGE = ("exclude", "report")


@dataclasses.dataclass(frozen=True)
class Thresholds:
    """Limits of the checks; every one is a flag of `effnet-data clean`."""

    near_bits: int = hashing.NEAR_THRESHOLD  # of 256 pHash bits; see hashing.py for the gap it sits in
    # Gray levels (0..255). The least varied real Kermany image has std ~20; a blank or a
    # washed-out frame has < 1, so 4 leaves a wide margin on both sides.
    min_std: float = 4.0
    min_side: int = 64  # px; a chest film has hundreds of px per side (the shared copies: 224)
    max_side: int = 10_000  # px; beyond this decoding costs GBs and it is not a chest film
    max_aspect: float = 3.0  # a chest film is within ~1:2; beyond 1:3 it is a strip, crop or scan error
    patient_leakage: str = "exclude"

    def __post_init__(self):
        if self.patient_leakage not in PATIENT_LEAKAGE:
            raise ValueError(f"--patient_leakage={self.patient_leakage!r}: expected one of {PATIENT_LEAKAGE}")
        if not 0 <= self.near_bits < hashing.PHASH_BITS // 2:
            raise ValueError(f"--near_bits={self.near_bits}: expected 0..{hashing.PHASH_BITS // 2 - 1}")


def _quality_reason(img, th: Thresholds) -> tuple[str, str] | None:
    """(reason, detail) when a single image is unusable on its own, else None."""
    if img.error is not None:
        return "unreadable", img.error
    if img.std == 0:
        return "blank", f"every pixel is {img.mean:.0f}"
    if img.std < th.min_std:
        return "near_constant", f"grayscale std {img.std:.2f} < {th.min_std}"
    short, long = min(img.width, img.height), max(img.width, img.height)
    if short < th.min_side:
        return "too_small", f"{img.width}x{img.height}: shorter side < {th.min_side} px"
    if long > th.max_side:
        return "too_large", f"{img.width}x{img.height}: longer side > {th.max_side} px"
    if long / short > th.max_aspect:
        return "extreme_aspect", f"{img.width}x{img.height}: aspect {long / short:.2f} > {th.max_aspect}"
    return None


def _components(n: int, links) -> list[list[int]]:
    """Connected components (size >= 2) of `n` nodes joined by (i, j) links (union-find)."""
    parent = list(range(n))

    def root(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, j in links:
        parent[root(i)] = root(j)
    groups = {}
    for i in range(n):
        groups.setdefault(root(i), []).append(i)
    return sorted((g for g in groups.values() if len(g) > 1), key=lambda g: g[0])


def duplicate_groups(images, near_bits: int) -> list[dict]:
    """Groups of exact or near duplicates among `images` (ImageInfo), each with its links."""
    by_hash = {}
    for i, img in enumerate(images):
        by_hash.setdefault(img.pixel_hash, []).append(i)
    exact = [(g[0], j) for g in by_hash.values() for j in g[1:]]
    near = hashing.close_pairs([img.phash for img in images], near_bits)
    near = [(i, j, d) for i, j, d in near if images[i].pixel_hash != images[j].pixel_hash]
    out = []
    for members in _components(len(images), exact + [(i, j) for i, j, _ in near]):
        inside = set(members)
        bits = [d for i, j, d in near if i in inside]
        ordered = sorted(members, key=lambda i: (_KEEP_ORDER.get(images[i].split, 3), images[i].key))
        out.append(
            {
                "kind": "near" if bits else "exact",
                "files": [images[i].key for i in ordered],
                "splits": sorted({images[i].split for i in members}),
                "labels": sorted({images[i].label for i in members}),
                "patients": sorted({images[i].patient for i in members}),
                "max_bits": max(bits, default=0),
                "_index": ordered,
            }
        )
    return out


def counts(images, excluded_keys=frozenset()) -> dict[str, dict[str, int]]:
    """{split: {label: images}} of the images not in `excluded_keys`."""
    out = {}
    for img in images:
        if img.key not in excluded_keys:
            per = out.setdefault(img.split, {})
            per[img.label] = per.get(img.label, 0) + 1
    return {s: dict(sorted(v.items())) for s, v in sorted(out.items())}


def find(inventory, th: Thresholds = Thresholds()) -> dict:
    """Every finding on `inventory` and the exclusions they imply, as plain JSON-able values."""
    images = inventory.images
    excluded = {}  # key -> entry; the first reason set wins (REASONS order is respected below)

    def exclude(img, reason, detail):
        if img.key not in excluded:
            excluded[img.key] = {
                "file": img.key,
                "split": img.split,
                "label": img.label,
                "reason": reason,
                "detail": detail,
            }

    for img in images:
        found = _quality_reason(img, th)
        if found:
            exclude(img, *found)
    usable = [img for img in images if img.key not in excluded]
    groups = duplicate_groups(usable, th.near_bits)

    for g in groups:  # label_conflict
        if len(g["labels"]) > 1:
            for i in g["_index"]:
                exclude(
                    usable[i],
                    "label_conflict",
                    f"same image as {len(g['files']) - 1} other file(s) "
                    f"with labels {g['labels']}: {', '.join(g['files'])}",
                )

    leaked_images = []
    for g in groups:  # leakage_duplicate
        keep = usable[g["_index"][0]]
        if keep.split != "test":
            continue
        for i in g["_index"][1:]:
            img = usable[i]
            if img.split != "test":
                leaked_images.append({"file": img.key, "test_file": keep.key, "kind": g["kind"]})
                exclude(img, "leakage_duplicate", f"{g['kind']} duplicate of {keep.key}")

    held_out = {img.patient for img in images if img.split == "test"}
    leaked_patients = {}
    for img in images:
        if img.split != "test" and img.patient in held_out:
            leaked_patients.setdefault(img.patient, []).append(img.key)
    if th.patient_leakage == "exclude":
        for img in images:
            if img.patient in leaked_patients and img.split != "test":
                exclude(img, "leakage_patient", f"patient {img.patient} also has images in test")

    for g in groups:  # plain duplicates: keep the first, drop the rest
        keep = usable[g["_index"][0]]
        for i in g["_index"][1:]:
            img = usable[i]
            same = img.pixel_hash == keep.pixel_hash
            bits = 0 if same else hashing.hamming(img.phash, keep.phash)
            exclude(
                img,
                "exact_duplicate" if same else "near_duplicate",
                f"same pixels as {keep.key}" if same else f"{bits} pHash bits from {keep.key}",
            )

    train_val = {}
    for img in images:
        if img.split in ("train", "val"):
            train_val.setdefault(img.patient, set()).add(img.split)
    entries = sorted(excluded.values(), key=lambda e: (REASONS.index(e["reason"]), e["file"]))
    by_reason = {r: sum(e["reason"] == r for e in entries) for r in REASONS}
    return {
        "thresholds": dataclasses.asdict(th),
        "excluded": entries,
        "num_excluded": len(entries),
        "by_reason": {r: n for r, n in by_reason.items() if n},
        "duplicate_groups": [{k: v for k, v in g.items() if k != "_index"} for g in groups],
        "leakage": {
            "images": leaked_images,
            "patients": [{"patient": p, "files": sorted(f)} for p, f in sorted(leaked_patients.items())],
        },
        # Not leakage under the patient protocol (validation is carved from train by
        # patient, official val unused), but it is if official val is used to select models.
        "patients_in_train_and_val": sorted(p for p, s in train_val.items() if len(s) == 2),
        "counts_before": counts(images),
        "counts_after": counts(images, set(excluded)),
    }


def leakage_banner(findings: dict) -> str | None:
    """A loud multi-line warning when anything in train/val also appears in test, else None."""
    leak = findings["leakage"]
    if not leak["images"] and not leak["patients"]:
        return None
    lines = [
        "!" * 72,
        "!! LEAKAGE: train/val data also present in the test split",
        f"!!   {len(leak['images'])} image(s) identical or nearly identical to a test image",
        f"!!   {len(leak['patients'])} patient(s) with images in test and in train/val",
    ]
    for item in leak["images"][:10]:
        lines.append(f"!!   {item['file']}  ==({item['kind']})  {item['test_file']}")
    for item in leak["patients"][:10]:
        lines.append(f"!!   patient {item['patient']}: {len(item['files'])} train/val image(s)")
    action = (
        "excluded from train/val"
        if findings["thresholds"]["patient_leakage"] == "exclude"
        else "duplicates excluded; patients only reported (--patient_leakage=report)"
    )
    lines += [f"!!   -> {action}; test is kept as shipped", "!" * 72]
    return "\n".join(lines)
