"""effnet-train --config=configs/default.py --workdir=/tmp/effnet_default

Every configuration key of effnet-train, with its default and meaning; the other
configs start from it. Reached: not yet measured (a reference, not a recipe).

Override any key on the command line: --config.optimizer.learning_rate=3e-4.
"""

import ml_collections

from effnet_jax.data.config import default_data_config


def get_config() -> ml_collections.ConfigDict:
    """The defaults; experiment configs call this and change what they need."""
    c = ml_collections.ConfigDict()

    # -- model ---------------------------------------------------------------------------------
    c.model = ml_collections.ConfigDict()
    c.model.name = "efficientnet_b0"  # a variant of effnet_jax.list_variants() (timm names)
    # Pretrained weights: None (random init), a .safetensors/.pth/.h5 file, an effnet-convert
    # output directory, or a hub name such as 'timm/efficientnet_b0.ra_in1k'.
    c.model.pretrained = ml_collections.config_dict.placeholder(str)
    c.model.drop_rate = ml_collections.config_dict.placeholder(float)  # head dropout; None = variant's
    c.model.drop_path_rate = 0.2  # stochastic depth, ramped linearly over the blocks
    # Depthwise convolution: 'auto' (shifted slices on CPU, native elsewhere), 'native' or
    # 'shifts'. 'native' compiles much faster on CPU; 'shifts' runs faster there.
    # ('shifts_autodiff': the slices with JAX's own backward, for benchmarks.)
    c.model.depthwise_impl = "auto"
    c.model.zero_head = True  # start the classifier at zero (loss ln 2), as big_vision fine-tunes
    c.image_size = ml_collections.config_dict.placeholder(int)  # None = the variant's resolution
    c.dtype = "float32"  # compute dtype: 'float32' or 'bfloat16' (params and BN stats stay float32)

    # -- data ----------------------------------------------------------------------------------
    c.data = default_data_config()  # see effnet_jax/data/config.py for its keys
    # With data.name='auto': the Kermany chest_xray builder when data.manual_dir is given,
    # otherwise this data set ('pneumonia_mnist', downloaded on first use, or 'synthetic').
    c.data.name = "auto"
    c.data_fallback = "pneumonia_mnist"
    c.batch_size = 32  # global training batch, split over all devices (must divide evenly)
    c.eval_batch_size = 64  # global eval batch (must divide evenly over devices)

    # -- loss ----------------------------------------------------------------------------------
    c.loss = "softmax_ce"  # 'softmax_ce' (2 logits) or 'sigmoid_bce' (1 logit)
    c.label_smoothing = 0.0
    # 'none', 'balanced' (n / (2 * count_c) from the training split's class counts) or 'W0,W1'.
    c.class_weights = "none"

    # -- optimization --------------------------------------------------------------------------
    c.num_epochs = 10.0  # length of training in epochs of the training split...
    c.num_train_steps = -1  # ...unless this is > 0 (then it wins)
    c.optimizer = ml_collections.ConfigDict()
    c.optimizer.name = "adamw"  # 'adamw', 'adam', 'sgd' (momentum/nesterov) or 'rmsprop' (TF-style)
    c.optimizer.learning_rate = 1e-3  # peak learning rate (absolute; not scaled by batch size)
    c.optimizer.b1 = 0.9  # adam(w)
    c.optimizer.b2 = 0.999  # adam(w)
    c.optimizer.eps = 1e-8  # adam(w) and rmsprop (TF EfficientNet used 1e-3 for rmsprop)
    c.optimizer.weight_decay = 1e-5  # never applied to BatchNorm parameters or biases
    c.optimizer.momentum = 0.9  # sgd and rmsprop
    c.optimizer.nesterov = True  # sgd
    c.optimizer.rmsprop_decay = 0.9  # rmsprop's moving-average decay of squared gradients
    c.optimizer.grad_clip_norm = 0.0  # clip the global gradient norm to this; 0 = off
    c.optimizer.grad_accum_steps = 1  # accumulate this many batches per update (optax.MultiSteps)
    c.schedule = ml_collections.ConfigDict()
    c.schedule.name = "cosine"  # 'cosine', 'step' or 'constant', each after a linear warmup
    c.schedule.warmup_epochs = 1.0
    c.schedule.min_lr_ratio = 0.01  # cosine: final learning rate as a fraction of the peak
    c.schedule.decay_epochs = 2.4  # step: decay every this many epochs...
    c.schedule.decay_rate = 0.97  # ...by this factor (the TF EfficientNet recipe)
    c.ema_decay = 0.0  # EMA of params and BN statistics (evaluated instead of the raw weights); 0 = off

    # -- freezing ------------------------------------------------------------------------------
    # Regexes over '/'-joined parameter paths (e.g. '^blocks_[0-2]_', 'bn\\d/'); every match is
    # frozen: no updates, no optimizer state, and its BatchNorm keeps its running statistics.
    # A pattern matching nothing is an error.
    c.freeze = ()
    # Convenience: freeze everything before this module: 'blocks_S', 'blocks_S_I', 'conv_head'
    # (stem and all blocks) or 'classifier' (all but the classifier). '' = off.
    c.freeze_until = ""

    # -- devices -------------------------------------------------------------------------------
    c.parallelism = "jit"  # 'jit' (jax.jit over a 'data' mesh) or 'pmap'
    c.num_devices = 0  # use the first this many devices (0 = all; single-process debugging)

    # -- loop, evaluation, checkpoints ---------------------------------------------------------
    c.seed = 0  # model init, dropout and data order
    c.log_every_steps = 10  # train metrics (JSON lines + TensorBoard) every this many steps
    c.eval_every_steps = 200  # validation every this many steps (and at the end); 0 = only at the end
    c.checkpoint_every_steps = 200  # save every this many steps (and at the end and after each eval)
    c.keep_checkpoints = 3  # keep the last this many checkpoints, plus the best
    c.best_metric = "auc"  # validation metric that picks the best checkpoint ('' = none)
    c.best_mode = "max"  # 'max' or 'min' for best_metric
    c.early_stopping = ml_collections.ConfigDict()
    c.early_stopping.metric = ""  # validation metric to watch ('' = no early stopping), e.g. 'loss'
    c.early_stopping.mode = "min"  # 'min' or 'max'
    c.early_stopping.patience = 5  # evaluations without improvement before stopping
    c.early_stopping.min_delta = 0.0  # smallest change that counts as an improvement
    c.stop_after_steps = -1  # end this run early at this step (schedule unchanged); resume later; -1 = off
    c.async_checkpointing = True
    c.progress_bar = True  # tqdm bar on stderr (step, loss, img/s, ETA)
    # JAX's persistent compilation cache: effnet-train (and effnet-eval / effnet-predict, which
    # read it from the run's config.json) store compiled steps here, so a resume or another run
    # with the same model, shapes and devices skips the compile. '' = off.
    c.compilation_cache_dir = "~/.cache/effnet_jax/jax_cache"
    return c
