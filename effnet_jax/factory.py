"""``create_model``: a module and its variables, random or from pretrained weights."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from effnet_jax.models.efficientnet import EfficientNet, build_model


def init_variables(model: EfficientNet, rng: jax.Array | int = 0, image_size: int | None = None) -> dict:
    """Initialises ``params`` and ``batch_stats`` (on a one-image batch, jitted)."""
    if isinstance(rng, int):
        rng = jax.random.PRNGKey(rng)
    size = image_size or model.variant.resolution
    dummy = jnp.zeros((1, size, size, 3), jnp.float32)
    variables = jax.jit(lambda r: model.init(r, dummy, train=False))(rng)
    # The zero "perturbations" that Grad-CAM differentiates against are not state.
    return {k: v for k, v in variables.items() if k in ("params", "batch_stats")}


def create_model(name: str, num_classes: int = 1000, pretrained: str | None = None, rng: jax.Array | int = 0,
                 **model_kwargs) -> tuple[EfficientNet, dict]:
    """Returns ``(model, variables)`` for a variant, optionally with pretrained weights.

    ``pretrained`` is None (random init), a local weight file (``.safetensors``,
    ``.pth``/``.bin``, Keras ``.h5``), a directory written by ``effnet-convert``, or a
    Hugging Face hub name such as ``timm/efficientnet_b0.ra_in1k``.
    """
    model = build_model(name, num_classes=num_classes, **model_kwargs)
    variables = init_variables(model, rng, image_size=64)
    if pretrained is not None:
        from effnet_jax.weights import load_pretrained

        variables = load_pretrained(model, variables, pretrained)
    return model, variables
