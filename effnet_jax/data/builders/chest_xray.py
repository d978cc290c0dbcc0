"""TFDS builder for the Kermany chest X-ray images (the "chest_xray" folder or its zip)."""

import tensorflow_datasets as tfds

from effnet_jax.data import imaging
from effnet_jax.data.builders import base
from effnet_jax.data import kermany

ON_BAD_IMAGE = ('error', 'skip')

_DESCRIPTION = """\
Pediatric chest X-rays (Kermany et al., Cell 2018; Mendeley Data doi:10.17632/rscbjbr9sj.2,
CC BY 4.0), NORMAL vs PNEUMONIA. Images are stored grayscale, downscaled once so the
shorter side is at most `max_size` pixels (aspect kept), as JPEG.
"""

_MANUAL = """\
Point data.manual_dir at the chest_xray folder ({train,val,test}/{NORMAL,PNEUMONIA}/*.jpeg),
a folder above it, or its zip (Kaggle chest-xray-pneumonia.zip, Mendeley ChestXRay2017.zip).
"""


class ChestXrayConfig(tfds.core.BuilderConfig):
  """Storage size and bad-image policy (both change what is written, so both name the config)."""

  def __init__(self, *, max_size: int = 512, on_bad_image: str = 'error', **kwargs):
    if on_bad_image not in ON_BAD_IMAGE:
      raise ValueError(f'data.on_bad_image={on_bad_image!r}: expected one of {ON_BAD_IMAGE}')
    if int(max_size) < 8:
      raise ValueError(f'data.max_size={max_size}: expected an image side >= 8 pixels')
    name = f'max{int(max_size)}' + ('_skipbad' if on_bad_image == 'skip' else '')
    super().__init__(name=name, description=f'shorter side <= {max_size}, bad images: '
                     f'{on_bad_image}', **kwargs)
    self.max_size = int(max_size)
    self.on_bad_image = on_bad_image


class ChestXray(base.Builder):
  """Kermany chest X-rays: image, label, pathogen, patient id and file name per example."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'First version.'}
  MANUAL_DOWNLOAD_INSTRUCTIONS = _MANUAL
  BUILDER_CONFIGS = [ChestXrayConfig()]

  def __init__(self, *, raw_path=None, **kwargs):
    # raw_path may be a zip file, which TFDS's manual_dir (a folder) cannot express.
    self._raw_path = raw_path
    super().__init__(**kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        description=_DESCRIPTION,
        features=tfds.features.FeaturesDict({
            'image': tfds.features.Image(shape=(None, None, 1), encoding_format='jpeg'),
            'label': tfds.features.ClassLabel(names=list(kermany.CLASSES)),
            'pathogen': tfds.features.ClassLabel(names=list(kermany.PATHOGENS)),
            'patient_id': tfds.features.Text(),
            'file_name': tfds.features.Text(),
        }),
        supervised_keys=('image', 'label'),
        homepage='https://data.mendeley.com/datasets/rscbjbr9sj/2',
        citation='Kermany et al., Cell 172(5):1122-1131, 2018.',
        metadata=tfds.core.MetadataDict(),
        # Records in generation order (sorted paths / npz order), so record i is easy to trace.
        disable_shuffling=True,
    )

  def _split_generators(self, dl_manager):
    raw = self._raw_path if self._raw_path is not None else dl_manager.manual_dir
    layout = kermany.scan(raw)
    meta = self.info.metadata
    meta.update({'source': layout.source, 'max_size': self.builder_config.max_size,
                 'on_bad_image': self.builder_config.on_bad_image,
                 'ignored': list(layout.ignored), 'skipped': [], 'num_skipped': 0})
    self._report(layout.problems, meta)
    self._layout = layout
    return {split: self._generate_examples(layout, split) for split in layout.files}

  def _report(self, problems, meta):
    """Raise on bad input (on_bad_image='error') or record it as skipped."""
    if not problems:
      return
    if self.builder_config.on_bad_image == 'error':
      listing = '\n  '.join(problems)
      raise imaging.BadImageError(
          f'{len(problems)} bad input file(s) or folder(s) (set data.on_bad_image=skip to '
          f'skip and list them):\n  {listing}')
    meta['skipped'] = meta['skipped'] + list(problems)
    meta['num_skipped'] = len(meta['skipped'])

  def _generate_examples(self, layout, split):
    written, bad = 0, []
    for cls, rel in layout.files[split]:
      shown = f'{layout.source}:{rel}' if layout.zip_path else f'{layout.source}/{rel}'
      try:
        data, _ = imaging.load_for_storage(layout.read(rel), shown, self.builder_config.max_size)
      except imaging.BadImageError as e:
        bad.append(str(e))  # keep going: one run reports every bad file of the split
        continue
      file_name = rel.rsplit('/', 1)[-1]
      patient, pathogen = kermany.parse_name(file_name, cls)
      written += 1
      yield rel, {'image': data, 'label': cls, 'pathogen': pathogen,
                  'patient_id': patient, 'file_name': file_name}
    # With on_bad_image='error' this raises, and TFDS discards the partial output.
    self._report(bad, self.info.metadata)
    if not written:
      raise imaging.BadImageError(f'{layout.source}: split {split!r} has no usable image left '
                                  'after skipping bad files')
