"""effnet-train --config=configs/debug_synthetic.py --workdir=/tmp/effnet_debug_synthetic

The debug loop with nothing real in it, for tests and quick checks of the machinery: a
random-init Lite0 at 64 px on the small synthetic set made on the fly (every log line and
metrics record says 'synthetic'). Its numbers only show that the code runs.
Results: no record (synthetic data and random init measure nothing).
"""

from effnet_jax.train.config import sibling_config

debug = sibling_config(__file__, "debug")


def get_config():
    """EfficientNet-Lite0 at 64 px, random init, synthetic data, 40 steps, evaluated and checkpointed twice."""
    c = debug.get_config()
    c.model.name = "efficientnet_lite0"
    c.model.pretrained = None
    c.image_size = 64
    c.data_fallback = "synthetic"
    c.data.synthetic_examples = 128
    c.num_train_steps = 40
    c.class_weights = "none"  # the machinery's plain path; debug.py's recipe choices are for real data
    c.optimizer.learning_rate = 2e-3
    c.log_every_steps = 5
    c.eval_every_epochs = 0.0  # in steps (tests shorten runs through eval_every_steps)
    c.eval_every_steps = 20
    c.checkpoint_every_steps = 20
    c.ema_decay = 0.9
    return c
