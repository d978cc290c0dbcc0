"""Converted timm weights give timm's logits (eval mode, non-trivial BN statistics)."""

import jax
import numpy as np
import pytest
import torch
from reference_models import random_images, relative_error, timm_reference

import effnet_jax

# PyTorch-trained (symmetric padding), TF-ported (SAME padding), Lite (no SE, ReLU6), and a deep variant.
VARIANTS = ["efficientnet_b0", "tf_efficientnet_b0", "efficientnet_lite0", "tf_efficientnet_b3"]


@pytest.mark.parametrize("name", VARIANTS)
def test_logits_match_timm(name, tmp_path):
    images = random_images(4, 64)
    reference_model, reference = timm_reference(name, images.transpose(0, 3, 1, 2))
    weights = tmp_path / f"{name}.pth"
    torch.save(reference_model.state_dict(), weights)
    # The deep variant is here for its conversion (26 blocks, widths and depths scaled): its
    # depthwise layers use the native convolution, which compiles in a fraction of the time of
    # CPU's shifted slices (those are compared with timm on the three B0-sized networks).
    impl = "native" if name == "tf_efficientnet_b3" else "auto"
    model, variables = effnet_jax.create_model(name, pretrained=str(weights), depthwise_impl=impl)
    logits = np.asarray(jax.jit(model.apply)(variables, images))
    assert np.abs(reference).max() > 0.5  # the comparison is not between near-zero logits
    assert relative_error(logits, reference) <= 1e-4


def test_native_depthwise_matches_timm_too(tmp_path):
    images = random_images(2, 64, seed=1)
    reference_model, reference = timm_reference("efficientnet_b0", images.transpose(0, 3, 1, 2))
    weights = tmp_path / "b0.pth"
    torch.save(reference_model.state_dict(), weights)
    model, variables = effnet_jax.create_model("efficientnet_b0", pretrained=str(weights), depthwise_impl="native")
    logits = np.asarray(jax.jit(model.apply)(variables, images))
    assert relative_error(logits, reference) <= 1e-4


def test_safetensors_file_loads_like_pth(tmp_path):
    from safetensors.torch import save_file

    images = random_images(2, 64, seed=2)
    reference_model, reference = timm_reference("efficientnet_lite0", images.transpose(0, 3, 1, 2))
    path = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in reference_model.state_dict().items()}, str(path))
    model, variables = effnet_jax.create_model("efficientnet_lite0", pretrained=str(path))
    logits = np.asarray(jax.jit(model.apply)(variables, images))
    assert relative_error(logits, reference) <= 1e-4
