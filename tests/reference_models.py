"""Reference models (timm, Keras) with non-trivial BatchNorm statistics, for parity tests.

Fresh BatchNorm layers have mean 0 / var 1 statistics, which hide layout bugs and
give near-zero logits. Random statistics make deep variants numerically chaotic,
so the running statistics are instead accumulated in train mode from the very
batch that is then evaluated: activations stay normalised and fp32 stays exact.
"""

from __future__ import annotations

import numpy as np


def timm_reference(name: str, images_nchw: np.ndarray, seed: int = 0):
    """Returns ``(timm_model, eval_logits)`` with BN statistics taken from ``images_nchw``."""
    import timm
    import torch

    torch.manual_seed(seed)
    model = timm.create_model(name, pretrained=False)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = 1.0  # running statistics := this batch's statistics
            torch.nn.init.uniform_(m.weight, 0.5, 1.5)
            torch.nn.init.uniform_(m.bias, -0.5, 0.5)
    x = torch.from_numpy(images_nchw)
    model.train()
    with torch.no_grad():
        model(x)
    model.eval()
    with torch.no_grad():
        logits = model(x).numpy()
    return model, logits


def random_images(n: int, size: int, seed: int = 0) -> np.ndarray:
    """Normalised-looking NHWC float32 images."""
    return np.random.default_rng(seed).standard_normal((n, size, size, 3)).astype(np.float32)


def relative_error(out: np.ndarray, ref: np.ndarray) -> float:
    return float(np.abs(out - ref).max() / np.abs(ref).max())
