"""Every number of the exploratory report, as one JSON-able dict, and its console summary."""

import numpy as np
from sklearn.utils.class_weight import compute_class_weight

from effnet_jax.data import kermany
from effnet_jax.data.eda import cleaning
from effnet_jax.labels import CLASS_NAMES

BLACK_LEVEL = 5  # gray levels 0..5 count as black border in 'black_fraction'


def _stats(values) -> dict | None:
    """min / 5th percentile / median / mean / 95th percentile / max of `values` (None if empty)."""
    v = np.asarray([x for x in values if x is not None], np.float64)
    if not len(v):
        return None
    p5, med, p95 = np.percentile(v, [5, 50, 95])
    return {
        "min": float(v.min()),
        "p5": float(p5),
        "median": float(med),
        "mean": float(v.mean()),
        "p95": float(p95),
        "max": float(v.max()),
    }


def _tally(values) -> dict:
    """{str(value): count}, numbers in numeric order (JSON keys are strings: '10' after '9')."""
    out = {}
    for v in values:
        out[str(v)] = out.get(str(v), 0) + 1
    numeric = lambda k: k.lstrip("-").isdigit()
    return dict(sorted(out.items(), key=lambda kv: (not numeric(kv[0]), int(kv[0]) if numeric(kv[0]) else 0, kv[0])))


def class_weights(per_label: dict[str, int]) -> dict[str, float] | None:
    """sklearn's 'balanced' weights (n / (classes * n_class)) for these counts; None if a class is empty."""
    if any(per_label.get(c, 0) == 0 for c in CLASS_NAMES):
        return None
    y = np.concatenate([np.full(per_label[c], c) for c in CLASS_NAMES])
    w = compute_class_weight("balanced", classes=np.array(CLASS_NAMES), y=y)
    return {c: round(float(x), 6) for c, x in zip(CLASS_NAMES, w)}


def _imbalance(per_label: dict[str, int]) -> dict | None:
    n = {c: per_label.get(c, 0) for c in CLASS_NAMES}
    if min(n.values()) == 0:
        return None
    major = max(n, key=n.get)
    return {"majority": major, "ratio": round(max(n.values()) / min(n.values()), 4)}


def _split_section(images) -> dict:
    """Per split and class: images, patients, images per patient, pathogen mix."""
    out = {}
    for split in sorted(
        {img.split for img in images}, key=lambda s: kermany.SPLITS.index(s) if s in kermany.SPLITS else 9
    ):
        mine = [img for img in images if img.split == split]
        per_class = {}
        for label in CLASS_NAMES:
            imgs = [img for img in mine if img.label == label]
            per_patient = _tally(img.patient for img in imgs).values()
            per_class[label] = {
                "images": len(imgs),
                "patients": len(per_patient),
                "images_per_patient": _stats(per_patient),
                "images_per_patient_histogram": _tally(per_patient) if per_patient else {},
                "pathogens": _tally(img.pathogen for img in imgs),
            }
        # Pathogen is a per-file label; one patient id with both bacteria and virus files is
        # either a child with both, or a person number reused across the two series (the
        # split rules then keep two children together: safe for leakage, coarser groups).
        pathogens_of = {}
        for img in mine:
            if img.pathogen in ("bacteria", "virus"):
                pathogens_of.setdefault(img.patient, set()).add(img.pathogen)
        per_class["PNEUMONIA"]["patients_with_both_pathogens"] = sum(len(p) == 2 for p in pathogens_of.values())
        counts = {c: per_class[c]["images"] for c in CLASS_NAMES}
        out[split] = {
            "classes": per_class,
            "images": len(mine),
            "imbalance": _imbalance(counts),
            "class_weights": class_weights(counts),
        }
    return out


def _properties(inventory) -> dict:
    ok = [img for img in inventory.images if img.error is None]
    per_class = {}
    for label in CLASS_NAMES:
        imgs = [img for img in ok if img.label == label]
        per_class[label] = {
            "mean_intensity": _stats(img.mean for img in imgs),
            "std_intensity": _stats(img.std for img in imgs),
            "width": _stats(img.width for img in imgs),
            "height": _stats(img.height for img in imgs),
        }
        hist = inventory.histograms.get(label)
        # Near-black pixels are film border and collimation, not lung: a class that has
        # more of them offers the model a shortcut that has nothing to do with pneumonia.
        per_class[label]["black_fraction"] = None if hist is None else round(float(hist[: BLACK_LEVEL + 1].sum()), 6)
    return {
        # Prepared data keeps only what was stored (gray, shorter side <= max_size).
        "size_kind": "original" if inventory.kind == "raw" else "stored",
        "readable": len(ok),
        "unreadable": len(inventory.images) - len(ok),
        "width": _stats(img.width for img in ok),
        "height": _stats(img.height for img in ok),
        "aspect_w_over_h": _stats(img.width / img.height for img in ok),
        "distinct_sizes": len({(img.width, img.height) for img in ok}),
        "modes": _tally(img.mode for img in ok),
        "bit_depths": _tally(img.bit_depth for img in ok),
        "formats": _tally(img.format for img in ok),
        "file_bytes": _stats(img.file_bytes for img in inventory.images),
        "per_class": per_class,
        "intensity_histograms": {k: [round(float(x), 7) for x in v] for k, v in inventory.histograms.items()},
    }


def build(inventory, findings: dict, exclusion_list: dict[str, str] | None = None) -> dict:
    """The whole report: counts, patients, classes, image properties and cleaning findings.

    findings: cleaning.find on this inventory (what `effnet-data clean` would exclude).
    exclusion_list: {file key: reason} of a list to apply instead (e.g. one edited by hand);
    its 'after' counts are reported beside the proposed ones.
    """
    cl = findings
    out = {
        "source": inventory.source,
        "kind": inventory.kind,
        "num_images": len(inventory.images),
        "splits": _split_section(inventory.images),
        "image_properties": _properties(inventory),
        "layout": {"problems": list(inventory.problems), "ignored": list(inventory.ignored)},
        "cleaning": {**cl, "class_weights_train_after": class_weights(cl["counts_after"].get("train", {}))},
        "exclusion_list": None,
        "prepared": None,
    }
    if exclusion_list is not None:
        keys = {img.key for img in inventory.images}
        after = cleaning.counts(inventory.images, set(exclusion_list))
        out["exclusion_list"] = {
            "num_entries": len(exclusion_list),
            "not_found": sorted(set(exclusion_list) - keys),
            "by_reason": _tally(exclusion_list.values()),
            "counts_after": after,
            "class_weights_train_after": class_weights(after.get("train", {})),
        }
    if inventory.kind == "prepared":
        meta = inventory.metadata
        # The stored records are already what the builder kept; it recorded what it started from.
        out["prepared"] = {
            "metadata": meta,
            "counts_before_exclusion": meta.get("counts_before_exclusion"),
            "counts_stored": cleaning.counts(inventory.images),
            "num_excluded": meta.get("num_excluded", 0),
            "num_skipped": meta.get("num_skipped", 0),
        }
    return out


def _fmt_counts(counts: dict) -> str:
    return ", ".join(f"{s} " + "/".join(f"{n:,}" for n in per.values()) for s, per in counts.items())


def summary(report: dict) -> str:
    """A few lines a person reads in a minute (the numbers behind them are in report.json)."""
    lines = [f"{report['source']} ({report['kind']}, {report['num_images']:,} images)"]
    for split, s in report["splits"].items():
        c = s["classes"]
        pathogens = c["PNEUMONIA"]["pathogens"]
        weights = s["class_weights"]
        lines.append(
            f"  {split:5s} NORMAL {c['NORMAL']['images']:,} ({c['NORMAL']['patients']:,} patients)"
            f"  PNEUMONIA {c['PNEUMONIA']['images']:,} ({c['PNEUMONIA']['patients']:,} patients; "
            + ", ".join(f"{k} {v:,}" for k, v in pathogens.items())
            + ")"
            + (f"  imbalance {s['imbalance']['ratio']:.2f}:1" if s["imbalance"] else "")
            + (f"  weights N {weights['NORMAL']:.3f} / P {weights['PNEUMONIA']:.3f}" if weights else "")
            + (
                f"  [{c['PNEUMONIA']['patients_with_both_pathogens']:,} patient ids have bacteria and virus files]"
                if c["PNEUMONIA"]["patients_with_both_pathogens"]
                else ""
            )
        )
    p = report["image_properties"]
    if p["width"]:
        lines.append(
            f"  {p['size_kind']} sizes: width {p['width']['min']:.0f}-{p['width']['max']:.0f}, "
            f"height {p['height']['min']:.0f}-{p['height']['max']:.0f} px "
            f"({p['distinct_sizes']:,} distinct); aspect w/h median "
            f"{p['aspect_w_over_h']['median']:.2f}; modes {p['modes']}; bits {p['bit_depths']}"
        )
    black = {c: v["black_fraction"] for c, v in p["per_class"].items() if v["black_fraction"] is not None}
    if black:
        lines.append(
            f"  near-black pixels (gray <= {BLACK_LEVEL}, borders): "
            + ", ".join(f"{c} {f:.1%}" for c, f in black.items())
        )
    prep = report["prepared"]
    if prep:
        lines.append(
            f"  prepared: {prep['num_excluded']} excluded by its list, {prep['num_skipped']} "
            f"skipped as bad; stored {_fmt_counts(prep['counts_stored'])}"
            + (
                f" (before exclusion {_fmt_counts(prep['counts_before_exclusion'])})"
                if prep["counts_before_exclusion"]
                else ""
            )
        )
    cl = report["cleaning"]
    reasons = ", ".join(f"{r} {n}" for r, n in cl["by_reason"].items()) or "nothing"
    lines.append(f"  cleaning (proposed): {cl['num_excluded']} to exclude: {reasons}")
    groups = cl["duplicate_groups"]
    lines.append(
        f"    duplicate groups: {sum(g['kind'] == 'exact' for g in groups)} exact, "
        f"{sum(g['kind'] == 'near' for g in groups)} near; "
        f"{sum(len(g['patients']) > 1 for g in groups)} span several patients"
    )
    lines.append(f"    before: {_fmt_counts(cl['counts_before'])} (NORMAL/PNEUMONIA)")
    lines.append(f"    after:  {_fmt_counts(cl['counts_after'])}")
    ex = report["exclusion_list"]
    if ex:
        lines.append(
            f"    with the given list ({ex['num_entries']} entries, {len(ex['not_found'])} "
            f"not found): {_fmt_counts(ex['counts_after'])}"
        )
    if cl["patients_in_train_and_val"]:
        lines.append(
            f"    note: {len(cl['patients_in_train_and_val'])} patient(s) in both train and "
            "official val (harmless for the patient protocol, which carves validation "
            "from train; do not select models on official val)"
        )
    if report["layout"]["problems"]:
        lines.append(f"  layout problems: {len(report['layout']['problems'])} (see report.json)")
    banner = cleaning.leakage_banner(cl)
    return "\n".join(lines + ([banner] if banner else []))
