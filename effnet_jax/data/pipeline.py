"""The grain input pipeline: create_split() gives batches of one split.

    records (tfds.data_source / synthetic) -> shard -> order (epoch shuffle, balance)
      -> decode + resize once (MapDataset.map) -> batch -> iter (threads) -> mp_prefetch

Batches are dicts of numpy arrays, 'label' int32 (B,) (0 NORMAL, 1 PNEUMONIA) and
'mask' bool (B,) (True = real example) in both kinds, and:
  training: 'gray' uint8 (B, F, F), the whole frame resized once to F = training_frame()
    (larger than the model's size when zooming, so a zoomed view keeps its detail); the
    train step augments it, resamples it to the model's size and normalises it on the
    device (data/augment.py);
  evaluation: 'image' float32 (B, H, W, 3) normalised, and 'index' int64 (B,), the
    example's position in the whole split (-1 on padding rows).
decode_split() decodes a whole training shard the same way, for the resident path.
"""

import collections
import math
from collections.abc import Callable, Iterable

import grain
import numpy as np

from effnet_jax.data import flags as flags_lib
from effnet_jax.data import imaging, sampling, sources, transforms
from effnet_jax.labels import class_names


class _LoadExample:
    """Map one stream element (example, epoch, pos) to a dict of numpy arrays."""

    def __init__(
        self,
        reader,
        parts,
        records,
        labels,
        global_index,
        *,
        training,
        image_size,
        mean,
        std,
        center_crop,
        frame=None,
        equalize="none",
    ):
        self.reader = reader
        self.parts, self.records, self.labels = parts, records, labels
        self.global_index = global_index
        self.training = training
        self.size = int(image_size)
        self.frame = int(frame or image_size)  # training's frame side
        self.normalize = transforms.Normalizer(mean, std)
        self.center_crop = float(center_crop)
        # Validate the config here, where the caller sees it, not in a worker process.
        if not training and not 0.0 < self.center_crop <= 1.0:
            raise ValueError(f"data.center_crop={center_crop}: expected a fraction in (0, 1]")
        self.equalize = transforms.check_equalize(equalize)

    def __call__(self, element):
        # Eval examples leave here as uint8 grey + a 256x3 lookup table; _assemble expands
        # them straight into the float batch (one write per pixel, no per-image float array).
        example, _, _ = element
        if example < 0:  # eval padding row: no read, all zeros, masked out
            return {
                "gray": np.zeros((self.size, self.size), np.uint8),
                "table": _ZERO_TABLE,
                "label": np.int32(0),
                "mask": np.bool_(False),
                "index": np.int64(-1),
            }
        raw = self.reader.read_image(int(self.parts[example]), int(self.records[example]))
        label = np.int32(self.labels[example])
        if self.training:
            # The whole frame, resized once: the train step augments it on the device.
            gray = transforms.center_resize(self._decode(raw, self.frame, example), self.frame)
            gray = transforms.equalize(gray, self.equalize)
            return {"gray": gray, "label": label, "mask": np.bool_(True)}
        im = self._decode(raw, math.ceil(self.size / self.center_crop), example)
        gray = transforms.equalize(transforms.center_resize(im, self.size, self.center_crop), self.equalize)
        return {
            "gray": gray,
            "table": self.normalize.table(gray),
            "label": label,
            "mask": np.bool_(True),
            "index": np.int64(self.global_index[example]),
        }

    def _decode(self, raw, min_side: int, example: int):
        """``transforms.decode_gray``; data corrupt past the header the reader checked is a BadImageError naming the record."""
        try:
            return transforms.decode_gray(raw, min_side)
        except Exception as e:  # Pillow raises many types (OSError, SyntaxError, ValueError...)
            name = sources.record_name(self.reader, int(self.parts[example]), int(self.records[example]))
            raise imaging.pillow_error(e, name) from e


_ZERO_TABLE = np.zeros((256, 3), np.float32)


def _assemble(examples) -> dict:
    """Stack examples into a batch, expanding grey + table into float32 RGB images (eval) or keeping the grey."""
    if "table" not in examples[0]:
        return {
            "gray": np.stack([ex["gray"] for ex in examples]),
            "label": np.array([ex["label"] for ex in examples], np.int32),
            "mask": np.array([ex["mask"] for ex in examples], np.bool_),
        }
    h, w = examples[0]["gray"].shape
    image = np.empty((len(examples), h, w, 3), np.float32)
    for i, ex in enumerate(examples):
        np.take(ex["table"], ex["gray"], axis=0, out=image[i])
    batch = {
        "image": image,
        "label": np.array([ex["label"] for ex in examples], np.int32),
        "mask": np.array([ex["mask"] for ex in examples], np.bool_),
    }
    if "index" in examples[0]:
        batch["index"] = np.array([ex["index"] for ex in examples], np.int64)
    return batch


def _detach(batch: dict) -> dict:
    return {k: np.array(v, copy=True) for k, v in batch.items()}


def _shard(shard_index, shard_count):
    if shard_index is None or shard_count is None:
        import jax  # pylint: disable=g-import-not-at-top

        shard_index = jax.process_index() if shard_index is None else shard_index
        shard_count = jax.process_count() if shard_count is None else shard_count
    if not 0 <= shard_index < shard_count:
        raise ValueError(
            f"shard_index={shard_index}, shard_count={shard_count}: expected 0 <= shard_index < shard_count"
        )
    return int(shard_index), int(shard_count)


def create_split(
    data_config,
    split: str,
    *,
    training: bool,
    batch_size: int,
    image_size: int,
    mean,
    std,
    seed: int,
    shard_index: int | None = None,
    shard_count: int | None = None,
    frame: int | None = None,
) -> grain.IterDataset:
    """Build the grain dataset of batches for `split` ('train' | 'validation' | 'test' | 'external...').

    training=True: infinite stream, reshuffled every epoch, balanced per data.balance,
    not augmented (the train step does that), incomplete batches dropped. training=False: exactly one
    deterministic pass; the last batch is padded to batch_size with mask=False rows, and
    every shard yields the same number of batches (so multi-host eval stays in step).
    `batch_size` is per process. Each process reads the disjoint shard
    examples[shard_index::shard_count] (default: jax.process_index()/process_count()).
    `frame`: side of the training images (default training_frame()).
    iter() of the result has get_state()/set_state(); close() it when done.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size}: expected >= 1")
    shard_index, shard_count = _shard(shard_index, shard_count)
    if training and frame is None:
        frame = training_frame(data_config, split, image_size)
    sel, mine, load = _loader(data_config, split, shard_index, shard_count, training, image_size, mean, std, frame)
    if training:
        order = sampling.TrainOrder(sel.labels[mine], data_config.balance, seed, shard_index)
    else:
        per_shard = math.ceil(len(sel) / shard_count)
        order = sampling.EvalOrder(len(mine), math.ceil(per_shard / batch_size) * batch_size)
    # Batch on the MapDataset so a batch's examples do not depend on the worker count:
    # num_workers=0, 1 or 8 give identical batches for the same seed.
    ds = grain.MapDataset.source(order).map(load).batch(batch_size, drop_remainder=training, batch_fn=_assemble)
    num_workers = int(data_config.get("num_workers", 0))
    buffer = int(data_config.get("prefetch_buffer", 2))
    if num_workers > 0:
        flags_lib.ensure_absl_flags_parsed()
        # Inside each worker: one thread, small buffer; the workers are the parallelism.
        it = ds.to_iter_dataset(grain.ReadOptions(num_threads=1, prefetch_buffer_size=1))
        it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers, per_worker_buffer_size=buffer))
        # Copy each batch out of grain's shared memory in the parent: the caller may keep
        # batches as long as it likes, and nothing is left to unlink at interpreter exit.
        return it.map(_detach)
    # In process: a couple of threads overlap Pillow decoding (which releases the GIL).
    return ds.to_iter_dataset(grain.ReadOptions(num_threads=2, prefetch_buffer_size=buffer))


def _loader(data_config, split, shard_index, shard_count, training, image_size, mean, std, frame=None):
    """(selection, this shard's positions in it, the per-example map) of one split."""
    sel = sources.selection(data_config, split)
    reader = sources.reader(data_config, split)
    mine = np.arange(shard_index, len(sel), shard_count)
    # sel.part indexes sel.parts (the parts this split draws from); the reader numbers
    # all prepared parts, so translate.
    reader_part = np.array([reader.parts.index(p) for p in sel.parts], np.int32)[sel.part]
    load = _LoadExample(
        reader,
        reader_part[mine],
        sel.record[mine],
        sel.labels[mine],
        mine,
        training=training,
        image_size=image_size,
        mean=mean,
        std=std,
        center_crop=data_config.get("center_crop", 1.0),
        frame=frame,
        equalize=transforms.equalize_mode(data_config),
    )
    return sel, mine, load


# Training images whose sizes set the frame (evenly spaced over the split; headers only).
FRAME_PROBE = 16


def training_frame(data_config, split: str, image_size: int) -> int:
    """Side of the square frame training batches carry: transforms.frame_side for data.augment's zoom.

    The source side is the largest shorter side among a few of the split's images, so a
    set stored at the model's size is not enlarged. Every process probes the same images.
    """
    aug = data_config.get("augment")
    if aug is None or not aug.get("enabled", False) or not aug.get("scale_enabled", False):
        return int(image_size)
    area_min = float(aug.scale_min)
    if area_min >= 1.0:
        return transforms.frame_side(image_size, area_min)
    sel = sources.selection(data_config, split)
    if len(sel) == 0:
        return transforms.frame_side(image_size, area_min)
    reader = sources.reader(data_config, split)
    reader_part = [reader.parts.index(p) for p in sel.parts]
    probe = np.unique(np.linspace(0, len(sel) - 1, min(FRAME_PROBE, len(sel))).astype(np.int64))
    side = max(transforms.source_side(reader.read_image(reader_part[sel.part[i]], int(sel.record[i]))) for i in probe)
    return transforms.frame_side(image_size, area_min, side)


def decode_split(
    data_config,
    split: str,
    *,
    image_size: int,
    shard_index: int | None = None,
    shard_count: int | None = None,
    frame: int | None = None,
) -> dict:
    """Every example of this process's shard of ``split`` as the training batches carry it, in shard order.

    Returns {'gray': uint8 (N, F, F), 'label': int32 (N,)} (F = `frame`, default
    training_frame()): what the resident path keeps on
    the devices. Row j is the example a TrainOrder over the same shard calls j, so the
    resident and the grain path feed the same images in the same order.
    """
    shard_index, shard_count = _shard(shard_index, shard_count)
    frame = training_frame(data_config, split, image_size) if frame is None else int(frame)
    _, mine, load = _loader(
        data_config, split, shard_index, shard_count, True, image_size, (0.0,) * 3, (1.0,) * 3, frame
    )
    ds = grain.MapDataset.source(range(len(mine))).map(lambda j: load((j, 0, j))).batch(64, batch_fn=_assemble)
    # A few threads overlap Pillow decoding (which releases the GIL), as the grain path does.
    parts = list(ds.to_iter_dataset(grain.ReadOptions(num_threads=4, prefetch_buffer_size=8)))
    return {
        "gray": np.concatenate([p["gray"] for p in parts]) if parts else np.zeros((0, frame, frame), np.uint8),
        "label": np.concatenate([p["label"] for p in parts]) if parts else np.zeros((0,), np.int32),
    }


def split_info(data_config, split: str) -> dict:
    """Size, class counts and file names of a logical split (all shards together).

    file_names follow the split's order (the eval batches' 'index'); under the pooled
    protocol they are '<official split>/<file name>', since names can repeat across
    official splits. None for the synthetic source. patient_ids likewise (None where the
    data set has none: synthetic, PneumoniaMNIST).
    """
    sel = sources.selection(data_config, split)
    names = class_names(data_config)
    counts = np.bincount(sel.labels, minlength=len(names))
    return {
        "num_examples": int(len(sel)),
        "class_counts": [int(c) for c in counts],
        "class_names": list(names),
        "synthetic": data_config.name == "synthetic",
        "file_names": None if sel.file_names is None else list(sel.file_names),
        "patient_ids": None if sel.patient_ids is None else list(sel.patient_ids),
    }


def make_global_batch(local_batch: dict, sharding) -> dict:
    """Assemble each process's local batch into global jax.Arrays sharded by `sharding`.

    `sharding` is typically NamedSharding(mesh, PartitionSpec(batch_axes)); the leading
    dimension of every array is split over the processes in process order.
    """
    import jax  # pylint: disable=g-import-not-at-top

    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), local_batch)


def run_pass(
    batches: Iterable[dict], step: Callable[[dict], dict], on_batch: Callable[[int], None] | None = None
) -> dict[str, np.ndarray]:
    """Concatenates ``step(batch)``'s per-example arrays over ``batches``.

    ``step`` returns a dict of ``(B, ...)`` arrays that includes ``mask``; rows whose
    mask is False (padding of the last batch) are dropped. ``on_batch`` gets the
    number of real rows of each batch (progress bars).
    """
    out = collections.defaultdict(list)
    for batch in batches:
        rows = step(batch)
        keep = np.asarray(rows.pop("mask"), bool)
        for key, value in rows.items():
            out[key].append(np.asarray(value)[keep])
        if on_batch is not None:
            on_batch(int(keep.sum()))
    return {key: np.concatenate(values) for key, values in out.items()}
