"""Default data configuration: every key the input pipeline reads, with its meaning."""

import ml_collections


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
  return c


def default_data_config() -> ml_collections.ConfigDict:
  """Return the data config with defaults; configs/ override keys, never add hidden ones."""
  c = ml_collections.ConfigDict()
  # Which data set: 'chest_xray' (Kermany folder or zip), 'pneumonia_mnist' (MedMNIST+ npz)
  # or 'synthetic' (tiny in-memory fake X-rays, no files needed; for debug runs and tests).
  c.name = 'synthetic'
  # Raw data: for chest_xray the folder holding {train,val,test}/{NORMAL,PNEUMONIA} (or a
  # parent of it, or a .zip of it); for pneumonia_mnist a folder holding the npz. None = not
  # given (pneumonia_mnist then downloads from Zenodo; chest_xray must already be prepared).
  c.manual_dir = ml_collections.config_dict.placeholder(str)
  # TFDS data dir where prepared array_record files live; None = TFDS default (~/tensorflow_datasets).
  c.data_dir = ml_collections.config_dict.placeholder(str)
  # Prepare the TFDS data set when it is missing (False: fail with a message saying how).
  c.prepare = True
  # 'patient': validation carved from official train by patient, official test stays test.
  # 'pooled': every image pooled, then stratified 60/20/20 train/validation/test (the paper's
  #           protocol); grouping for pooled is `pooled_group`.
  # pneumonia_mnist has no patient ids: 'patient' uses its shipped train/val/test as they are.
  # synthetic ignores every split key (its three splits are generated separately).
  c.split_protocol = 'patient'
  c.val_fraction = 0.1  # fraction of train's patients (stratified by label) that go to validation
  c.pooled_fractions = (0.6, 0.2, 0.2)  # train/validation/test fractions for split_protocol='pooled'
  # 'image': pooled splits at image level (as the paper; a patient may span splits);
  # 'patient': pooled splits keep every patient's images together.
  c.pooled_group = 'image'
  c.split_seed = 0  # seed of the split rules (independent of the training seed)
  # External validation: labelled folders from outside the training data, each holding
  # NORMAL/ and PNEUMONIA/. Evaluated beside validation as the splits 'external',
  # 'external_1', ...; never trained on (an overlap with the training data is refused).
  c.external = ()
  c.max_size = 512  # chest_xray: images stored so that the shorter side is at most this (aspect kept)
  c.on_bad_image = 'error'  # 'error' (stop, naming the file) or 'skip' (count and list in metadata)
  # chest_xray: an exclusion list (JSON or CSV of file + reason, written by `effnet-data clean`);
  # the builder leaves those files out and records counts before/after in the dataset info.
  # Its content names the prepared config (max512_excl<hash>), so a new list prepares anew.
  c.exclude_list = ml_collections.config_dict.placeholder(str)
  c.mnist_size = 224  # pneumonia_mnist image size: 28, 64, 128 or 224
  # Class balancing of the training stream: 'none', 'oversample' (minority drawn again until
  # classes are equal, fresh draw each epoch) or 'undersample' (majority subsampled each epoch).
  c.balance = 'none'
  c.augment = default_augment_config()
  # Evaluation: centre crop of this fraction of the shorter side, then resize (1.0 = whole image).
  c.center_crop = 1.0
  c.num_workers = 0  # grain worker processes (0 = load in the calling process)
  c.prefetch_buffer = 2  # batches buffered per worker (num_workers > 0)
  c.synthetic_examples = 256  # synthetic: training examples (validation and test get a quarter each)
  return c
