"""effnet-train --config=configs/tpu_b4.py --workdir=$HOME/effnet_b4 --config.data.manual_dir=DIR

EfficientNet-B4 at 380 px in bf16 on a Cloud TPU VM (v4-8 or v5e-8: 8 chips), a
global batch of 256 split over all of them by jit over the 'data' mesh; run the same
command on every host of a larger slice. TF-ported ImageNet weights from the hub.
Results: not yet measured (no record).
"""

from effnet_jax.train import config as default


def get_config():
    """B4 at 380, bf16, batch 256, SGD-Nesterov with warmup and cosine, EMA."""
    c = default.get_config()
    c.model.name = "tf_efficientnet_b4"
    c.model.pretrained = "timm/tf_efficientnet_b4.in1k"
    c.image_size = 380
    c.dtype = "bfloat16"
    c.data.balance = "oversample"
    c.data.num_workers = 32
    c.batch_size = 256
    c.eval_batch_size = 512
    c.num_epochs = 30.0
    c.optimizer.name = "sgd"
    c.optimizer.learning_rate = 0.05
    c.schedule.warmup_epochs = 2.0
    c.label_smoothing = 0.1
    c.ema_decay = 0.9998
    c.eval_every_steps = 100
    c.checkpoint_every_steps = 100
    return c
