"""The module a run's config and record describe, and the variables inference uses from its state.

Shared by training (``effnet_jax.train``) and everything that reads a run back (``Run.model()``).
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import ml_collections

from effnet_jax.labels import class_names
from effnet_jax.models import EfficientNet, build_model
from effnet_jax.models.ensemble import LogitEnsemble

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def num_classes(config: ml_collections.ConfigDict) -> int:
    """Output units: one per class (``data.class_names``) for a softmax head, 1 for a sigmoid head (``config.loss``)."""
    return 1 if config.loss == "sigmoid_bce" else len(class_names(config.get("data")))


def model_kwargs(config: ml_collections.ConfigDict, frozen_norms=(), bn_axis_name=None) -> dict:
    """The keyword arguments of ``factory.create_model`` that a config sets."""
    if config.dtype not in DTYPES:
        raise ValueError(f"config.dtype={config.dtype!r}: expected one of {sorted(DTYPES)}")
    return dict(
        drop_rate=config.model.drop_rate,
        drop_path_rate=config.model.drop_path_rate,
        frozen_norms=tuple(frozen_norms),
        bn_axis_name=bn_axis_name,
        depthwise_impl=config.model.get("depthwise_impl", "auto"),
        dtype=DTYPES[config.dtype],
    )


def model_for_run(
    config: ml_collections.ConfigDict, run, frozen_norms=(), bn_axis_name=None
) -> EfficientNet | LogitEnsemble:
    """The module a run trains and evaluates, normalising inputs with ``run``'s mean/std; no variables.

    ``run`` is the run record (``runs.record.RunRecord``): the weights' normalisation
    it trained with, which the variant's default need not be (a Keras ``.h5`` file). A
    seed ensemble's run (``ensemble_size``) gets a ``LogitEnsemble`` of that architecture.
    """
    model = build_model(
        config.model.name, num_classes=num_classes(config), **model_kwargs(config, frozen_norms, bn_axis_name)
    )
    model = model.clone(variant=dataclasses.replace(model.variant, mean=tuple(run.mean), std=tuple(run.std)))
    size = ensemble_size(config)
    return LogitEnsemble(model, size) if size else model


# The most runs one soup or seed ensemble combines: real ones have a handful. A run read back
# claiming more is refused (runs.checkpoints), since an ensemble's weights are stacked by it.
MAX_MEMBERS = 64


def ensemble_size(config: ml_collections.ConfigDict) -> int | None:
    """Members of a run that is a seed ensemble (its config's ``soup.combine`` is 'logits'), else None."""
    soup = config.get("soup")
    if isinstance(soup, ml_collections.ConfigDict) and soup.get("combine", "weights") == "logits":
        members = soup.get("members")
        if not isinstance(members, (list, tuple)) or not 2 <= len(members) <= MAX_MEMBERS:
            raise ValueError(
                f"config.soup.members: {type(members).__name__} of {len(members) if hasattr(members, '__len__') else '?'}"
                f" entries; expected a list of 2 to {MAX_MEMBERS} member runs"
            )
        return len(members)
    return None


def inference_variables(state_like, use_ema: bool = True) -> dict:
    """``{'params', 'batch_stats'}`` to evaluate with: the EMA copy when there is one."""
    get = state_like.get if isinstance(state_like, dict) else lambda k: getattr(state_like, k)
    if use_ema and get("ema_params") is not None:
        return {"params": get("ema_params"), "batch_stats": get("ema_batch_stats")}
    return {"params": get("params"), "batch_stats": get("batch_stats")}
