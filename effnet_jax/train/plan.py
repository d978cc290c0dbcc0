"""``effnet-train --dry_run``: the resolved config, the data found and what a run would write, nothing written.

Reads only: data that is not prepared yet is described from its raw folder (and left
unprepared), and the workdir is only looked at.
"""

from __future__ import annotations

import os

import ml_collections

from effnet_jax.data import external, pipeline, prepare
from effnet_jax.labels import class_names
from effnet_jax.train import loop

WRITTEN = "config.json, run.json, metrics.jsonl, checkpoints/, tensorboard/, MODEL_CARD.md"


def _counts(info: dict) -> str:
    per = ", ".join(f"{c} {n:,}" for c, n in zip(info["class_names"], info["class_counts"]))
    return f"{info['num_examples']:,} images ({per})"


def _raw_counts(data) -> list[str]:
    from effnet_jax.data import folders, kermany

    if data.name == folders.NAME:
        layout = folders.scan(data)
    else:
        layout = kermany.scan(os.path.expanduser(data.manual_dir))
    layout.close()
    lines = []
    for split, entries in layout.files.items():
        per = {c: 0 for c in class_names(data)}
        for cls, _ in entries:
            per[cls] += 1
        lines.append(f"  {split}/: {len(entries):,} images (" + ", ".join(f"{c} {n:,}" for c, n in per.items()) + ")")
    return lines


def describe(config: ml_collections.ConfigDict, workdir: str) -> str:
    """What ``effnet-train --config=... --workdir=workdir`` would do, as text; prepares and writes nothing."""
    config = loop.resolve_data(config)
    data = config.data
    lines = ["effnet-train --dry_run: nothing was written.", "", "Config (resolved):", str(config).rstrip(), ""]
    probe = ml_collections.ConfigDict(data.to_dict())
    probe.prepare = False  # read what is there; never prepare
    try:
        infos = {"train": pipeline.split_info(probe, "train")}
    except FileNotFoundError:
        infos = None
    lines.append(
        f"Data: data.name={data.name!r}" + (f", data.manual_dir={data.manual_dir!r}" if data.manual_dir else "")
    )
    if infos is None:
        where = data.get("data_dir") or "~/tensorflow_datasets"
        prepare.check_data_dir(os.path.expanduser(where))  # as the run would refuse it, before it prepares
        if data.name in ("chest_xray", "folder") and data.manual_dir:
            lines.append(f"  not prepared yet: the run would prepare it once into {where}, from:")
            lines += _raw_counts(data)
        else:
            lines.append(f"  not prepared yet: the run would fetch and prepare it once into {where}")
    else:
        for split in ("validation", "test"):
            try:
                infos[split] = pipeline.split_info(probe, split)
            except (KeyError, ValueError):
                continue
        for split, info in infos.items():
            lines.append(f"  {split}: {_counts(info)}")
        if "test" not in infos:
            lines.append("  test: none (effnet-eval then scores the validation split)")
    for split in external.split_names(data):
        lines.append(
            f"  {split}: {external.folder_of(data, split)}, {_counts(pipeline.split_info(probe, split))} (never trained on)"
        )
    if infos is not None:
        total, per_epoch = loop.num_steps(config, infos["train"])
        lines.append(
            f"Training: {total} steps ({total / per_epoch:.2f} epochs of {per_epoch} steps, batch {config.batch_size}), "
            f"evaluated every {loop.eval_every(config, per_epoch) or total} steps and at the end"
        )
    resumed = os.path.isdir(os.path.join(workdir, "checkpoints"))
    also = "" if infos is not None else "; and the prepared data set"
    lines.append(f"Would write: {workdir}/ ({'resuming the run there: ' if resumed else 'a new run: '}{WRITTEN}{also})")
    return "\n".join(lines)
