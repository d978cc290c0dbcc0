"""A run adapted to a deployment site's unlabeled images, written as a new run (the library behind effnet-adapt).

    source run (runs.open) + a folder of the site's images (labels never read)
      -> the images read and preprocessed as effnet-predict reads them (the run's image size,
         normalisation, centre crop and storage size; unreadable files skipped, each named)
      -> every BatchNorm layer's statistics re-estimated on them (inference.batchnorm_stats),
         for the run's own checkpoint and, in a soup or seed ensemble, for every member
         under WORKDIR/members/ too
      -> NEWRUN: the source's config, run record, metrics records and calibration, the adapted
         checkpoint at the source's step, and adapted.json (source, images, their count and
         the SHA-256 of their sorted list, mix)

The metrics records and calibration are the source's, so the operating threshold (fitted on
the labelled external split when the source was trained) and the temperature carry over;
choosing a threshold for the adapted model needs labels: effnet-eval on a labelled split
of NEWRUN does it as for any run. Everything else about the run (weights, optimizer state,
data iterator state) is copied bitwise.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import logging
import os
import time

import jax
import ml_collections
import numpy as np
from etils import epath

from effnet_jax import limits, runs
from effnet_jax.inference.batchnorm_stats import adapt_batch_stats, bytes_per_image
from effnet_jax.inference.inputs import images_in_folder
from effnet_jax.inference.prediction import ImageReadError, Preprocessor
from effnet_jax.models.efficientnet import variable_shapes
from effnet_jax.output_files import open_output, write_text
from effnet_jax.runs import checkpoints as checkpoint_lib
from effnet_jax.runs import layout as layout_lib
from effnet_jax.runs import record as run_record
from effnet_jax.runs.calibration import read_calibration, write_calibration
from effnet_jax.runs.layout import Layout, absolute
from effnet_jax.runs.metrics_log import read_metrics
from effnet_jax.runs.writer import MetricWriter

log = logging.getLogger("effnet_jax.adapt")

# Held in memory as the model's float32 input: about 0.6 MB an image at 224 px.
DEFAULT_MAX_IMAGES = 2000
# (weights, their statistics) adapted together: inference uses the EMA pair when a run kept one.
_PAIRS = (("params", "batch_stats"), ("ema_params", "ema_batch_stats"))
_WEIGHTS = tuple(name for pair in _PAIRS for name in pair)


class AdaptError(ValueError):
    """Input effnet-adapt refuses (the folder, NEWRUN, the flags); the message names it and what was expected."""


@dataclasses.dataclass(frozen=True)
class SiteImages:
    """The site's images as the model sees them, and which files they came from."""

    folder: str
    files: tuple[str, ...]  # paths relative to ``folder``, sorted, of the images used
    images: np.ndarray  # (N, S, S, 3) float32
    skipped: tuple[str, ...]  # one line per file that could not be read
    found: int  # image files under the folder (before --max_images)

    @property
    def sha256(self) -> str:
        """SHA-256 of the sorted relative paths used, one per line: which images, wherever the folder sits."""
        return hashlib.sha256("".join(f"{name}\n" for name in self.files).encode()).hexdigest()


def read_site_images(
    folder: str,
    preprocess: Preprocessor,
    max_images: int | None = None,
    follow_links: bool = False,
    bytes_each: int = 0,
) -> SiteImages:
    """Every image file under ``folder`` (recursively; sub-folder names are not read as labels), preprocessed.

    More than ``max_images`` files: a fixed random choice of that many (seed 0, from the
    sorted list, so the choice does not depend on how the folder lists them). A link leading
    outside ``folder`` is skipped like an unreadable image unless ``follow_links``.
    ``bytes_each``: the memory adapting takes per image (``batchnorm_stats.bytes_per_image``);
    more images than the machine's available memory holds are refused before any is read.
    """
    if not os.path.isdir(folder):
        raise AdaptError(f"--images={folder}: no such folder (expected a folder of the site's images)")
    paths = sorted(images_in_folder(folder, follow_links), key=lambda p: os.path.relpath(p, folder))
    if not paths:
        raise AdaptError(f"--images={folder}: no image files in it (looked for .jpeg, .png, ... recursively)")
    found = len(paths)
    if max_images is not None and found > max_images:
        keep = np.random.default_rng(0).choice(found, max_images, replace=False)
        paths = [paths[i] for i in sorted(keep)]
    _check_memory(folder, len(paths), preprocess.image_size, bytes_each)
    used, images, skipped = [], [], []
    for path in paths:
        try:
            images.append(preprocess(path)[0])
        except ImageReadError as e:
            skipped.append(str(e))
            log.warning("skipped: %s", e)
            continue
        used.append(os.path.relpath(path, folder))
    if not images:
        raise AdaptError(f"--images={folder}: none of its {len(paths)} image files could be read (first: {skipped[0]})")
    return SiteImages(absolute(folder), tuple(used), np.stack(images), tuple(skipped), found)


def _check_memory(folder: str, count: int, image_size: int, bytes_each: int) -> None:
    """Refuses (AdaptError naming --max_images) ``count`` images whose adaptation would not fit the available memory.

    The images and every image's activations at a cut are held at once: a run of 600 px
    (or a downloaded run.json saying 2048) with the default 2000 images needs tens to
    hundreds of GB, which would otherwise end in swap or the OOM killer after minutes.
    """
    free = limits.available_memory()
    needed = count * bytes_each
    if free is None or needed <= free:
        return
    fit = free // bytes_each
    advice = f"pass --max_images={fit} or fewer" if fit else "not even one image fits; free memory first"
    raise AdaptError(
        f"--images={folder}: {count:,} images at {image_size} px would hold {needed:,} bytes while their statistics "
        f"are measured ({bytes_each:,} an image), more than the {free:,} bytes this machine has available; {advice}"
    )


def check_out(workdir: str, out: str) -> None:
    """Refuses an ``out`` that is the source run, lies inside it, or exists and is not empty."""
    source, target = os.path.realpath(workdir), os.path.realpath(out)
    if target == source:
        raise AdaptError(f"--out={out} is the source run --workdir={workdir}: the adapted run needs a new folder")
    if os.path.commonpath([source, target]) == source:
        raise AdaptError(f"--out={out} is inside the source run {workdir}: choose a folder outside it")
    if os.path.lexists(out) and (not os.path.isdir(out) or os.listdir(out)):
        raise AdaptError(f"--out={out} exists and is not an empty folder: choose a new one")
    # Made only once the work is done: a path that cannot become a folder is refused now, not then.
    where = os.path.abspath(out)
    while not os.path.lexists(where):
        where = os.path.dirname(where)
    if not os.path.isdir(where):
        raise AdaptError(f"--out={out}: cannot be made, {where} is not a folder")
    if not os.access(where, os.W_OK | os.X_OK):
        raise AdaptError(f"--out={out}: cannot be made, no permission to write in {where}")


def _check_state(run: runs.Run, state: dict) -> None:
    """A ValueError naming the checkpoint when ``state`` lacks a variable of the run's model, or holds NaN or inf."""
    where = f"{checkpoint_lib.checkpoint_dir(run.workdir)}/{run.step}"
    if not run.ensemble_size:
        checkpoint_lib.check_state_variables(where, state, run.config)
        return
    # A seed ensemble's members are stacked on axis 0: each is checked as the one network they share.
    network = run.config.to_dict()
    network.pop("soup")
    network = ml_collections.ConfigDict(network)
    for i in range(run.ensemble_size):
        member = {k: state[k] for k in _WEIGHTS if isinstance(state.get(k), dict)}
        member = jax.tree.map(lambda x, i=i: np.asarray(x)[i], member)
        checkpoint_lib.check_state_variables(f"{where} (member {i})", member, network)


def _digest(tree: dict) -> str:
    h = hashlib.sha256()
    for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
        h.update(jax.tree_util.keystr(path).encode())
        h.update(np.ascontiguousarray(np.asarray(leaf)).tobytes())
    return h.hexdigest()


def adapted_state(run: runs.Run, state: dict, site: SiteImages, batch_size: int, mix: float, cache: dict) -> dict:
    """``state`` with each (weights, statistics) pair's statistics re-estimated on ``site``; all else as it was.

    ``cache`` maps a digest of (weights, statistics, mix) to statistics already computed, so a
    seed ensemble's members, adapted inside the ensemble, are not adapted again as runs.
    """
    model = run.model()
    members = getattr(model, "size", None)
    out = dict(state)
    for weights, stats in _PAIRS:
        if not state.get(weights):
            continue
        parts = [(state[weights], state[stats])]
        if members:
            parts = [jax.tree.map(lambda x, i=i: x[i], parts[0]) for i in range(members)]
        adapted = []
        for params, batch_stats in parts:
            key = (_digest({"p": params, "s": batch_stats}), mix, site.sha256)
            if key not in cache:
                variables = {"params": params, "batch_stats": batch_stats}
                cache[key] = adapt_batch_stats(
                    getattr(model, "member", model), variables, site.images, batch_size, mix
                ).batch_stats
            adapted.append(cache[key])
        out[stats] = jax.tree.map(lambda *xs: np.stack(xs), *adapted) if members else adapted[0]
    return out


def _write_run(
    run: runs.Run, out: str, state: dict, record: dict, members: dict[str, str], written_by: str = "effnet-adapt"
) -> None:
    """``out`` as a run directory: ``run``'s files, ``state`` as its checkpoint at ``run.step``, adapted.json."""
    source, layout = Layout(run.workdir), Layout(out)
    epath.Path(out).mkdir(parents=True, exist_ok=True)
    config = run.config
    if run.soup is not None:
        config = _moved_members(config, members)
    write_text(layout.config, config.to_json_best_effort(indent=2))
    run_record.write(out, run.record)
    calibration = read_calibration(source)  # checked as the run reads it, not copied byte for byte
    if calibration is not None:
        write_calibration(layout, calibration)
    if run.soup is not None:
        soup = json.loads(json.dumps(run.soup))
        for entry in soup.get("members", []):
            entry["workdir"] = members.get(entry.get("workdir"), entry.get("workdir"))
        write_text(layout.soup, json.dumps(soup, indent=2) + "\n")
    select = config.get("select_split") or "validation"
    chosen = next((r for r in run.records(select) if r.get("step") == run.step), None)
    data_state = checkpoint_lib.read_data_state(run.workdir, run.step)
    checkpoint_lib.write_checkpoint(out, run.step, state, data_state, config, chosen, run=run.record)
    # The source's records: how these weights were trained and chosen (its operating threshold
    # is read from them), then one saying what changed.
    with open_output(layout.metrics, "w") as f:
        for r in read_metrics(run.workdir):
            f.write(json.dumps(r) + "\n")
    writer = MetricWriter(out, extra={"data": run.training_data or str(config.data.get("name", ""))})
    try:
        writer.write(run.step, "adapt", {k: v for k, v in record.items() if isinstance(v, (int, float, str))})
    finally:
        writer.close()
    write_text(layout.adapted, json.dumps(record, indent=2) + "\n")
    log.info("%s: wrote %s (step %d)", written_by, out, run.step)


def _moved_members(config, members: dict[str, str]):
    """The config with ``soup.members`` pointing at the adapted members where they were adapted."""
    config = ml_collections.ConfigDict(config.to_dict())
    if config.get("soup") is not None:
        config.soup.members = [members.get(m, m) for m in config.soup.members]
    return config


def _member_runs(run: runs.Run) -> list[tuple[int, runs.Run]]:
    """``(seed, Run)`` of each member under the source's members/ folder, at the step the soup took it."""
    if run.soup is None:
        return []
    found = []
    # Entries are type-checked by runs.open. Only members in the run's own members/seed_<S>/
    # are adapted; one reached through a link is refused: soup.json and members/ come with a
    # downloaded run, and nothing outside the run may be read (nor copied into NEWRUN from there).
    top = os.path.realpath(run.workdir)
    for entry in run.soup.get("members", []):
        path, seed = entry["workdir"], entry.get("seed")
        if seed is None or "://" in path or absolute(path) != run.layout.member(seed):
            continue
        if os.path.realpath(path) != os.path.join(top, layout_lib.MEMBERS, f"seed_{seed}"):
            raise AdaptError(
                f"{run.layout.soup}: member {path} resolves to {os.path.realpath(path)}, outside the run "
                f"{run.workdir} (a link); refusing to read through it"
            )
        if any(seed == other for other, _ in found):
            raise AdaptError(
                f"{run.layout.soup}: member seed {seed} is listed twice; a soup's members are distinct runs"
            )
        member = runs.open(path, entry["step"])
        if member.soup is not None:
            raise AdaptError(f"{run.layout.soup}: member {path} is itself a soup; a soup's members are runs")
        found.append((seed, member))
    return found


def adapt_run(
    workdir: str,
    images: str,
    out: str,
    checkpoint: str | int = "best",
    max_images: int | None = DEFAULT_MAX_IMAGES,
    batch_size: int = 32,
    mix: float = 1.0,
    follow_links: bool = False,
) -> dict:
    """Writes ``out``: the run in ``workdir`` with its BatchNorm statistics re-estimated on ``images``; returns adapted.json.

    ``follow_links`` reads links to files under ``images`` wherever they point (``--follow_links``).

    Every check (``out``, ``mix``, the run, the images) comes before anything is written;
    nothing is written outside ``out`` and the source run is left as it was.
    """
    started = time.time()
    if not 0.0 <= mix <= 1.0:
        raise AdaptError(f"--mix={mix}: expected a fraction in [0, 1] (1 replaces the statistics, 0 keeps them)")
    if batch_size < 1:
        raise AdaptError(f"--batch_size={batch_size}: expected a positive number of images")
    if max_images is not None and max_images < 1:
        raise AdaptError(f"--max_images={max_images}: expected a positive number of images")
    check_out(workdir, out)
    run = runs.open(workdir, checkpoint)
    preprocess = Preprocessor.for_run(run)
    try:  # every batch is padded to batch_size images: refused before the images are read
        limits.padded_batch_size(batch_size, preprocess.image_size)
    except ValueError as e:
        raise AdaptError(f"--{e}") from None
    network = getattr(run.model(), "member", run.model())
    bytes_each = bytes_per_image(network, variable_shapes(network), preprocess.image_size)
    # Every state is checked before anything is written: a member's flaw must not leave NEWRUN half made.
    members = _member_runs(run)
    for member in [m for _, m in members] + [run]:
        _check_state(member, checkpoint_lib.read_state(member.workdir, member.step))
    site = read_site_images(images, preprocess, max_images, follow_links, bytes_each)
    log.info(
        "%d images of %s (%d files found, %d skipped); re-estimating BatchNorm statistics, mix %g",
        len(site.files),
        site.folder,
        site.found,
        len(site.skipped),
        mix,
    )
    out = absolute(out)
    cache: dict = {}
    record = {
        "source": run.workdir,
        "source_checkpoint": str(checkpoint),
        "step": int(run.step),
        "images": site.folder,
        "images_used": len(site.files),
        "images_found": site.found,
        "images_skipped": len(site.skipped),
        "files_sha256": site.sha256,
        "mix": float(mix),
        "batch_size": int(batch_size),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    moved = {m.workdir: Layout(out).member(seed) for seed, m in members}
    # Members first, then the run itself: a soup's own statistics, or an ensemble's stacked
    # copy of its members' (found in the cache).
    for seed, member in members:
        state = checkpoint_lib.read_state(member.workdir, member.step)
        log.info("member seed %d (%s, step %d)", seed, member.workdir, member.step)
        adapted = adapted_state(member, state, site, batch_size, mix, cache)
        member_record = {**record, "source": member.workdir, "step": int(member.step)}
        _write_run(member, moved[member.workdir], adapted, member_record, {})
    state = checkpoint_lib.read_state(run.workdir, run.step)
    adapted = adapted_state(run, state, site, batch_size, mix, cache)
    record["members_adapted"] = sorted(moved.values())
    record["seconds"] = round(time.time() - started, 1)
    _write_run(run, out, adapted, record, moved)
    return record
