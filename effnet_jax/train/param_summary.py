"""What a run trains, in parameters (not tensors): total, trainable and frozen, per stage of the network.

Stages are the model's own sections, named as ``features_only`` names them: ``stem``
(conv_stem, bn1), ``stage_S`` (every ``blocks_S_*``), ``head`` (conv_head, bn2) and
``classifier``.
"""

from __future__ import annotations

import dataclasses
import math
import re

from flax import traverse_util

_STEM, _HEAD = ("conv_stem", "bn1"), ("conv_head", "bn2")
_BLOCK = re.compile(r"^blocks_(\d+)_\d+$")


@dataclasses.dataclass(frozen=True)
class StageCount:
    """Parameter counts (scalars) of one stage."""

    name: str
    total: int
    frozen: int

    @property
    def trainable(self) -> int:
        return self.total - self.frozen


def stage_of(module: str) -> str:
    """The stage of a top-level module: 'stem', 'stage_S', 'head', or the module's own name."""
    if module in _STEM:
        return "stem"
    if module in _HEAD:
        return "head"
    m = _BLOCK.match(module)
    return f"stage_{m.group(1)}" if m else module


def _order(name: str) -> tuple:
    if name == "stem":
        return (0, 0)
    if name.startswith("stage_") and name[6:].isdigit():
        return (1, int(name[6:]))
    return (2, 0) if name == "head" else (3, 0) if name == "classifier" else (4, name)


def count_parameters(params, frozen_mask) -> list[StageCount]:
    """Per-stage counts in forward order, then a last entry named 'total'."""
    sizes = traverse_util.flatten_dict(params, sep="/")
    frozen = traverse_util.flatten_dict(frozen_mask, sep="/")
    totals: dict[str, list[int]] = {}
    for path, leaf in sizes.items():
        n = math.prod(leaf.shape)
        entry = totals.setdefault(stage_of(path.split("/")[0]), [0, 0])
        entry[0] += n
        entry[1] += n if frozen[path] else 0
    stages = [StageCount(name, *totals[name]) for name in sorted(totals, key=_order)]
    return stages + [StageCount("total", sum(s.total for s in stages), sum(s.frozen for s in stages))]


def describe(counts: list[StageCount]) -> str:
    """A small table: one row per stage (trainable, frozen), the totals first."""
    total = counts[-1]
    width = max(len(s.name) for s in counts)
    lines = [f"parameters: {total.total:,} total, {total.trainable:,} trainable, {total.frozen:,} frozen"]
    lines += [f"  {s.name:<{width}} {s.trainable:>11,} trainable {s.frozen:>11,} frozen" for s in counts[:-1]]
    return "\n".join(lines)
