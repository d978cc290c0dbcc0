"""effnet-train --config=configs/pneumonia_b0.py --workdir=/tmp/effnet_b0 --config.data.manual_dir=DIR

The full recipe for one GPU: EfficientNet-B0 at 224 from timm's ImageNet weights
(downloaded from the Hugging Face hub), AdamW with warmup and cosine, label
smoothing, stochastic depth, EMA, bf16 compute. Data: the Kermany chest_xray
builder when --config.data.manual_dir is given, otherwise PneumoniaMNIST at 224 px
(downloaded on first use).
Results: not yet measured (no record).
"""

from effnet_jax.train import config as default


def get_config():
    """B0 at 224, nothing frozen, 20 epochs, batch 64, balanced sampling."""
    c = default.get_config()
    c.model.pretrained = "timm/efficientnet_b0.ra_in1k"
    c.image_size = 224
    c.dtype = "bfloat16"
    c.data.balance = "oversample"
    c.data.num_workers = 8
    c.batch_size = 64
    c.eval_batch_size = 128
    c.num_epochs = 20.0
    c.optimizer.learning_rate = 5e-4
    c.optimizer.weight_decay = 5e-2
    c.optimizer.grad_clip_norm = 1.0
    c.label_smoothing = 0.1
    c.ema_decay = 0.999
    c.log_every_steps = 20
    return c
