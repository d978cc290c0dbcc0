"""BatchNorm statistics re-estimated from a set of images: each layer's exact population mean and variance.

    model, {'params', 'batch_stats'}, images (N, S, S, 3) preprocessed as evaluation does
      -> the network cut at each Block's input into segments (stem, block, ..., block, head)
      -> per segment, over all images in batches: every norm's input moments (count, mean,
         sum of squared deviations; combined across batches in float64, Chan et al.'s update)
      -> blended with the source statistics by ``mix``; the segment's output over all images
         is the next segment's input

The statistics are those of training-mode BatchNorm with the whole set as one batch (Li et
al. 2016, AdaBN): a norm's input depends on the statistics of the norms before it, so each
norm is measured with every earlier norm already re-estimated. Inside a segment, pass k
makes its k-th norm exact; a pass that changes nothing (bitwise) ends it and its output,
computed with the final statistics, is cached for the next segment. Every norm normalises
by its (re-estimated) running statistics, never by a batch's own, so the batch size changes
only float rounding.

``mix`` blends the estimates with the source statistics, mean and variance each linearly
(Schneider et al. 2020): 1.0 replaces them, 0.0 keeps the source's bitwise.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn
from flax import traverse_util

from effnet_jax.models.batch_norm import BatchNorm
from effnet_jax.models.efficientnet import Block
from effnet_jax.models.ensemble import LogitEnsemble

log = logging.getLogger("effnet_jax.adapt")

_NORMS = (BatchNorm, nn.BatchNorm)


@dataclasses.dataclass(frozen=True)
class Moments:
    """Population moments of one norm's input channels: count of values, mean, sum of squared deviations (float64)."""

    count: float
    mean: np.ndarray
    m2: np.ndarray

    def merge(self, other: Moments) -> Moments:
        """The moments of both sets together (Chan, Golub and LeVeque's pairwise update)."""
        total = self.count + other.count
        delta = other.mean - self.mean
        return Moments(
            total,
            self.mean + delta * (other.count / total),
            self.m2 + other.m2 + delta * delta * (self.count * other.count / total),
        )

    @property
    def var(self) -> np.ndarray:
        """Population (biased) variance, as BatchNorm computes it."""
        return self.m2 / self.count


@dataclasses.dataclass(frozen=True)
class Adapted:
    """Re-estimated statistics (the source's tree and dtypes) and the passes over the images it took."""

    batch_stats: dict
    passes: int  # segment passes, each over every image; a full forward pass is about four
    layers: int


class _SegmentDone(Exception):
    """Raised inside a traced forward pass once the segment's output exists: nothing after it is traced."""


def _is_call(context, kind) -> bool:
    return isinstance(context.module, kind) and context.method_name == "__call__"


def count_segments(model, variables: dict, image_shape: tuple) -> int:
    """Segments of ``model`` between consecutive cuts (the input, each Block's input, the head): blocks + 2."""
    calls = [0]

    def count(next_fun, args, kwargs, context):
        calls[0] += _is_call(context, Block)
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(count):
        jax.eval_shape(
            lambda v, x: model.apply(v, x, train=False), variables, jax.ShapeDtypeStruct(image_shape, jnp.float32)
        )
    if not calls[0]:
        raise TypeError(f"{type(model).__name__}: no EfficientNet Block called; not a network this adapts")
    return calls[0] + 2


def bytes_per_image(model, variables: dict, image_size: int) -> int:
    """Host memory ``adapt_batch_stats`` holds per image at its peak: the image and the cuts on either side of a segment.

    Every image's activation at the cut being measured stays in memory (the input of the
    segment, and its output twice while the batches' outputs are joined): for EfficientNet-B7
    at 600 px the stem's output alone is 23 MB an image. ``variables`` may be abstract.
    """
    cuts = []

    def record(next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        if _is_call(context, Block):
            cuts.append((args[0], out))
        return out

    image = jax.ShapeDtypeStruct((1, image_size, image_size, 3), jnp.float32)
    with nn.intercept_methods(record):
        jax.eval_shape(lambda v, x: model.apply(v, x, train=False), variables, image)

    def size(x) -> int:
        return int(np.prod(x.shape[1:])) * np.dtype(x.dtype).itemsize

    image_bytes = size(image)
    # Segment 0 reads the images; each later one a block's input, and the head the last block's output.
    edges = [(image, cuts[0][0])] if cuts else []
    edges += [(block_in, block_out) for block_in, block_out in cuts]
    peak = max([size(a) + 2 * size(b) for a, b in edges] + [image_bytes])
    return image_bytes + peak


@functools.lru_cache(maxsize=512)  # one compiled program per segment, model and batch shape, reused across runs
def _segment_fn(model, segment: int, segments: int, image_shape: tuple) -> Callable:
    """jit fn(variables, x, weight) -> ({norm path: (count, mean, m2)}, the segment's output or None).

    Segment 0 takes the images to the first block's input (the stem), segment k the input
    of block k-1 to its output, the last one the last block's output through the head.
    Blocks before the segment are skipped (its input ``x`` is their cached output) and
    tracing stops after it, so the compiled program holds the segment alone. ``weight``
    (B,) is 1 for an image and 0 for a padding row of the last batch; each norm's moments
    are taken over the real rows of its input, as the forward pass computes it with the
    statistics in ``variables``.
    """
    last_block = segments - 3

    @jax.jit
    def run(variables, x, weight):
        moments, found, state = {}, {}, {"block": 0, "active": segment == 0}

        def intercept(next_fun, args, kwargs, context):
            if _is_call(context, _NORMS) and state["active"]:
                value = jnp.asarray(args[0]).astype(jnp.float32)
                w = weight.reshape((-1,) + (1,) * (value.ndim - 1))
                count = jnp.sum(weight) * np.prod(value.shape[1:-1])
                axes = tuple(range(value.ndim - 1))
                mean = jnp.sum(value * w, axes) / count
                m2 = jnp.sum(w * jnp.square(value - mean), axes)
                moments[tuple(context.module.scope.path)] = (count, mean, m2)
            if not _is_call(context, Block):
                return next_fun(*args, **kwargs)
            block, state["block"] = state["block"], state["block"] + 1
            if segment == 0:  # the stem's output is the first block's input
                found["out"] = args[0]
                raise _SegmentDone
            if segment == segments - 1:  # the head, from the last block's cached output
                if block == last_block:
                    state["active"] = True
                    return x
                return args[0]  # skipped: its output is never used
            if block < segment - 1:
                return args[0]
            state["active"] = True
            found["out"] = next_fun(x, *args[1:], **kwargs)
            raise _SegmentDone

        images = x if segment == 0 else jnp.zeros((x.shape[0],) + tuple(image_shape[1:]), jnp.float32)
        with nn.intercept_methods(intercept):
            try:
                model.apply(variables, images, train=False)
            except _SegmentDone:
                pass
        return moments, found.get("out")

    return run


def _over_batches(run: Callable, variables: dict, x: np.ndarray, batch_size: int):
    """``run`` over ``x`` in batches of ``batch_size`` (the last one padded): merged moments, concatenated outputs."""
    total: dict[tuple, Moments] = {}
    outs = []
    n = len(x)
    for start in range(0, n, batch_size):
        chunk = x[start : start + batch_size]
        padded = np.zeros((batch_size,) + x.shape[1:], x.dtype)
        padded[: len(chunk)] = chunk
        weight = np.zeros((batch_size,), np.float32)
        weight[: len(chunk)] = 1.0
        moments, out = jax.device_get(run(variables, padded, weight))
        for path, (count, mean, m2) in moments.items():
            batch = Moments(float(count), np.asarray(mean, np.float64), np.asarray(m2, np.float64))
            total[path] = batch if path not in total else total[path].merge(batch)
        if out is not None:
            outs.append(np.asarray(out)[: len(chunk)])
    return total, (np.concatenate(outs) if outs else None)


def _blend(moments: dict[tuple, Moments], source: dict, mix: float) -> dict:
    """``{(path..., 'mean'|'var'): array}`` in the source's dtypes: ``mix`` of the measured, the rest the source's."""
    out = {}
    for path, m in moments.items():
        for name, measured in (("mean", m.mean), ("var", m.var)):
            old = source[path + (name,)]
            out[path + (name,)] = (mix * measured + (1.0 - mix) * old.astype(np.float64)).astype(old.dtype)
    return out


def adapt_batch_stats(model, variables: dict, images: np.ndarray, batch_size: int = 32, mix: float = 1.0) -> Adapted:
    """``variables``' batch statistics re-estimated on ``images`` (preprocessed as evaluation does), blended by ``mix``.

    ``model`` is one network (a ``LogitEnsemble``'s members are adapted one by one).
    ``images`` are taken in the order given; the statistics do not depend on it, nor on
    ``batch_size``, beyond float rounding.
    """
    if not 0.0 <= mix <= 1.0:
        raise ValueError(f"mix={mix!r}: expected a fraction in [0, 1] (1 replaces the statistics, 0 keeps them)")
    if len(images) == 0:
        raise ValueError("no images to estimate BatchNorm statistics from")
    if isinstance(model, LogitEnsemble):
        raise TypeError(
            "adapt_batch_stats takes one network: adapt each member of an ensemble (adaptation.adapted_state)"
        )
    batch_size = max(1, min(int(batch_size), len(images)))
    source = traverse_util.flatten_dict(jax.tree.map(np.asarray, variables["batch_stats"]))
    image_shape = (batch_size,) + tuple(images.shape[1:])
    segments = count_segments(model, variables, image_shape)
    # The weights go to the device once, not with every batch of every pass.
    weights = jax.device_put({k: v for k, v in variables.items() if k != "batch_stats"})
    current, x, passes, seen = dict(source), np.asarray(images, np.float32), 0, set()
    for segment in range(segments):
        run = _segment_fn(model, segment, segments, image_shape)
        for k in range(len(source) + 1):
            stats = {**weights, "batch_stats": jax.device_put(traverse_util.unflatten_dict(current))}
            moments, out = _over_batches(run, stats, x, batch_size)
            measured = _blend(moments, source, mix)
            unchanged = all(np.array_equal(value, current[key]) for key, value in measured.items())
            current.update(measured)
            seen.update(moments)
            passes += 1
            # Pass k made the k-th norm exact: the head's output is not needed once its norms are.
            if unchanged or (segment == segments - 1 and k + 1 == len(moments)):
                break
        log.debug("segment %d of %d: %d norms, %d passes", segment + 1, segments, len(moments), k + 1)
        x = out
    missing = {key[:-1] for key in source} - seen
    if missing:
        raise ValueError(f"no input seen for BatchNorm layer(s) {sorted('/'.join(p) for p in missing)[:3]}")
    return Adapted(traverse_util.unflatten_dict(current), passes, len(seen))
