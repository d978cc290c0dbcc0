"""effnet-train --config=configs/pneumonia_b2_paper.py --workdir=/tmp/effnet_b2_paper --config.data.manual_dir=DIR

The paper's recipe: EfficientNet-B2 (TF-ported ImageNet weights) at 128 px, every
image pooled and split 60/20/20 (stratified, image level, as the paper did), Adam,
class weights against the 1:3 imbalance, rotation/shift/zoom/flip augmentation,
early stopping on validation loss, the first layers frozen.
Results: not yet measured (no record).
"""

from effnet_jax.train import config as default


def get_config():
    """B2 at 128, stem and stages 0-1 frozen, Adam 1e-4, balanced class weights, up to 30 epochs."""
    c = default.get_config()
    c.model.name = "tf_efficientnet_b2"
    c.model.pretrained = "timm/tf_efficientnet_b2.in1k"
    c.model.drop_path_rate = 0.0
    c.image_size = 128
    c.data.split_protocol = "pooled"
    a = c.data.augment
    a.rotation_enabled, a.rotation = True, 15.0
    a.translate_enabled, a.translate = True, 0.1
    a.scale_enabled, a.scale_min, a.scale_max = True, 0.8, 1.0
    a.hflip_enabled, a.hflip = True, 0.5
    a.brightness_enabled = False
    a.contrast_enabled = False
    c.class_weights = "balanced"
    c.freeze_until = "blocks_2"
    c.num_epochs = 30.0
    c.optimizer.name = "adam"
    c.optimizer.learning_rate = 1e-4
    c.optimizer.weight_decay = 0.0
    c.schedule.name = "constant"
    c.schedule.warmup_epochs = 0.0
    c.eval_every_steps = 100
    c.checkpoint_every_steps = 100
    c.best_metric = "loss"
    c.best_mode = "min"
    c.early_stopping.metric = "loss"
    return c
