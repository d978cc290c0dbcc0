"""effnet-train --config=configs/debug.py --workdir=/tmp/effnet_debug

Tiny and fast: the main job end to end in under 2 minutes on a CPU, with no data at
hand. Without a data dir it trains on the small synthetic set made on the fly (every
log line and metrics record says 'synthetic'); give it real data with
--config.data.manual_dir=../shared/data/chest_xray. Random init, so the numbers
only show the machinery works.
Results: README.md, Results, row `configs/debug.py` (synthetic data).
"""

from configs import default


def get_config():
    """EfficientNet-Lite0 at 64 px, random init, 40 steps, evaluated and checkpointed twice."""
    c = default.get_config()
    c.model.name = "efficientnet_lite0"
    c.model.drop_path_rate = 0.0
    c.image_size = 64
    c.data_fallback = "synthetic"
    c.data.synthetic_examples = 128
    c.batch_size = 16
    c.eval_batch_size = 32
    c.num_train_steps = 40
    c.optimizer.learning_rate = 2e-3
    c.schedule.warmup_epochs = 0.5
    c.log_every_steps = 5
    c.eval_every_steps = 20
    c.checkpoint_every_steps = 20
    c.keep_checkpoints = 2
    c.ema_decay = 0.9
    return c
