"""The grain input pipeline: create_split() gives batches of normalised images for one split.

    records (tfds.data_source / synthetic) -> shard -> order (epoch shuffle, balance)
      -> decode + augment (MapDataset.map) -> batch -> iter (threads) -> mp_prefetch

Batches are dicts of numpy arrays:
  'image' float32 (B, H, W, 3) normalised, 'label' int32 (B,) (0 NORMAL, 1 PNEUMONIA),
  'mask' bool (B,) (True = real example); eval batches also carry 'index' int64 (B,),
  the example's position in the whole split (-1 on padding rows).
"""

import collections
import math
from collections.abc import Callable, Iterable

import grain
import numpy as np

from effnet_jax.data import flags as flags_lib
from effnet_jax.data import sampling, sources, transforms
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
        seed,
        shard_index,
        augment,
        center_crop,
    ):
        self.reader = reader
        self.parts, self.records, self.labels = parts, records, labels
        self.global_index = global_index
        self.training = training
        self.size = int(image_size)
        self.normalize = transforms.Normalizer(mean, std)
        self.seed, self.shard_index = int(seed), int(shard_index)
        self.augment = augment
        self.center_crop = float(center_crop)
        # Validate the config here, where the caller sees it, not in a worker process.
        if training:
            transforms.draw_params(augment, np.random.default_rng(0))
        elif not 0.0 < self.center_crop <= 1.0:
            raise ValueError(f"data.center_crop={center_crop}: expected a fraction in (0, 1]")

    def __call__(self, element):
        # Examples leave here as uint8 grey + a 256x3 lookup table; _assemble expands them
        # straight into the float batch (one write per pixel, no per-image float array).
        example, epoch, pos = element
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
            rng = np.random.default_rng([self.seed, self.shard_index, epoch, pos])
            params = transforms.draw_params(self.augment, rng)
            im = transforms.decode_gray(raw, math.ceil(self.size / math.sqrt(params.area)))
            gray = transforms.warp(im, params, self.size)
            table = self.normalize.table(gray, params.brightness, params.contrast, params.gamma, params.clip)
            return {"gray": gray, "table": table, "label": label, "mask": np.bool_(True)}
        im = transforms.decode_gray(raw, math.ceil(self.size / self.center_crop))
        gray = transforms.center_resize(im, self.size, self.center_crop)
        return {
            "gray": gray,
            "table": self.normalize.table(gray),
            "label": label,
            "mask": np.bool_(True),
            "index": np.int64(self.global_index[example]),
        }


_ZERO_TABLE = np.zeros((256, 3), np.float32)


def _assemble(examples) -> dict:
    """Stack examples into a batch, expanding grey + table into the float32 RGB images."""
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
) -> grain.IterDataset:
    """Build the grain dataset of batches for `split` ('train' | 'validation' | 'test' | 'external...').

    training=True: infinite stream, reshuffled every epoch, balanced per data.balance,
    augmented per data.augment, incomplete batches dropped. training=False: exactly one
    deterministic pass; the last batch is padded to batch_size with mask=False rows, and
    every shard yields the same number of batches (so multi-host eval stays in step).
    `batch_size` is per process. Each process reads the disjoint shard
    examples[shard_index::shard_count] (default: jax.process_index()/process_count()).
    iter() of the result has get_state()/set_state(); close() it when done.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size}: expected >= 1")
    shard_index, shard_count = _shard(shard_index, shard_count)
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
        seed=seed,
        shard_index=shard_index,
        augment=data_config.augment,
        center_crop=data_config.get("center_crop", 1.0),
    )
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
