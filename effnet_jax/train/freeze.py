"""Freezing: regexes over '/'-joined parameter paths decide what never trains.

The same decision yields the model's ``frozen_norms`` so that a frozen BatchNorm
keeps its running statistics too (frozen means frozen).
"""

from __future__ import annotations

import re

import ml_collections
from flax import traverse_util

# Order of the network's top-level modules, for `freeze_until`.
_STEM = ("conv_stem", "bn1")
_HEAD = ("conv_head", "bn2")
_BLOCK = re.compile(r"^blocks_(\d+)_(\d+)$")
_UNTIL = re.compile(r"^blocks_(\d+)(?:_(\d+))?$")


def flat_paths(tree) -> dict:
    """``{'blocks_0_0/conv_dw/kernel': leaf, ...}``."""
    return traverse_util.flatten_dict(tree, sep="/")


def module_position(module: str) -> tuple[int, int]:
    """Where a top-level module sits in the forward pass (stem first, classifier last)."""
    if module in _STEM:
        return (-1, 0)
    m = _BLOCK.match(module)
    if m:
        return (int(m.group(1)), int(m.group(2)))
    if module in _HEAD:
        return (10_000, 0)
    return (10_001, 0)  # classifier


def until_position(boundary: str) -> tuple[int, int]:
    """Where ``boundary`` (``config.freeze_until``) sits, as ``module_position``; ValueError naming the key if malformed.

    Checked by ``validate_config`` too: a typo is refused before the data is prepared.
    """
    m = _UNTIL.match(str(boundary))
    if m:
        return (int(m.group(1)), int(m.group(2) or 0))
    if boundary in ("conv_head", "classifier"):
        return (10_000, 0) if boundary == "conv_head" else (10_001, 0)
    raise ValueError(
        f"config.freeze_until={boundary!r}: expected 'blocks_S', 'blocks_S_I', 'conv_head' or 'classifier'"
    )


def until_pattern(boundary: str, params) -> str:
    """A regex matching every top-level module before ``boundary``.

    ``boundary``: ``blocks_S`` (all of stages < S), ``blocks_S_I``, ``conv_head``
    (stem and every block) or ``classifier`` (everything but the classifier).
    """
    limit = until_position(boundary)
    modules = sorted({p.split("/")[0] for p in flat_paths(params)})
    before = [m for m in modules if module_position(m) < limit]
    if not before:
        raise ValueError(f"config.freeze_until={boundary!r} freezes nothing")
    return "^(" + "|".join(re.escape(m) for m in before) + ")/"


def freeze_patterns(config: ml_collections.ConfigDict, params) -> list[tuple[str, str]]:
    """``[(config key, regex), ...]`` from ``config.freeze`` and ``config.freeze_until``."""
    patterns = [(f"config.freeze[{i}]", p) for i, p in enumerate(config.get("freeze") or ())]
    if config.get("freeze_until"):
        patterns.append(("config.freeze_until", until_pattern(config.freeze_until, params)))
    return patterns


def frozen_mask(params, patterns: list[tuple[str, str]]):
    """A pytree of bools like ``params``: True where some pattern matches the path.

    A pattern that matches no parameter is a config error naming its key; it is
    almost always a typo that would otherwise silently train everything.
    """
    paths = flat_paths(params)
    frozen = {p: False for p in paths}
    for key, pattern in patterns:
        try:
            regex = re.compile(pattern)
        except re.error as e:
            raise ValueError(f"{key}={pattern!r} is not a valid regex: {e}") from None
        hits = [p for p in paths if regex.search(p)]
        if not hits:
            raise ValueError(
                f"{key}={pattern!r} matches no parameter; paths look like "
                f"{', '.join(list(paths)[:3])}, ..., {list(paths)[-1]}"
            )
        for p in hits:
            frozen[p] = True
    return traverse_util.unflatten_dict(frozen, sep="/")


def frozen_norms(mask) -> tuple[str, ...]:
    """Anchored regexes naming each BatchNorm with a frozen parameter, for ``create_model``."""
    norms = set()
    for path, is_frozen in flat_paths(mask).items():
        module = path.rsplit("/", 1)[0]
        if is_frozen and re.search(r"(^|/)bn\d+$", module):
            norms.add(module)
    return tuple(f"^{re.escape(n)}$" for n in sorted(norms))


def count(mask) -> tuple[int, int]:
    """(frozen, total) number of parameter tensors."""
    flags = list(flat_paths(mask).values())
    return sum(flags), len(flags)
