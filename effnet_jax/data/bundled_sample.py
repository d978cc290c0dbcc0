"""The sample of real chest X-rays shipped inside the package: ``data.name='sample'``.

300 images of the Kermany training set (Kermany et al., Mendeley Data v2,
doi:10.17632/rscbjbr9sj.2, CC BY 4.0; credit and changes in ``sample/ATTRIBUTION.md``),
downscaled to 144 px grayscale JPEG, in two parts that share no patient:

    sample/train/{NORMAL,PNEUMONIA}/       100 + 100 images
    sample/validation/{NORMAL,PNEUMONIA}/   50 +  50 images

Enough for the debug config to fine-tune the ImageNet Lite0 weights into a model that
tells the classes apart in minutes on a CPU, with no data download and no TFDS
preparation. ``tools/make_sample.py`` wrote it from ``chest_xray/train``.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

from effnet_jax.data import kermany
from effnet_jax.data import splits as splits_lib
from effnet_jax.labels import CLASS_NAMES

FOLDER = Path(__file__).with_name("sample")
PARTS = ("train", "validation")
# Our own files, but bound every read anyway: a file this large is not one of them.
_MAX_FILE_BYTES = 1 << 20


class SampleReader:
    """Reads the JPEG bytes of the bundled images (picklable for grain workers)."""

    def __init__(self, paths: dict[str, tuple[str, ...]]):
        self.parts = tuple(paths)
        self._paths = tuple(paths[p] for p in self.parts)

    def read_image(self, part: int, index: int) -> bytes:
        path = self._paths[part][int(index)]
        with open(path, "rb") as f:
            data = f.read(_MAX_FILE_BYTES + 1)
        if len(data) > _MAX_FILE_BYTES:
            raise ValueError(f"{path}: over {_MAX_FILE_BYTES} bytes, not an image of the bundled sample")
        return data

    def record_name(self, part: int, index: int) -> str:
        return self._paths[part][int(index)]


@functools.lru_cache(maxsize=2)
def catalog(folder: str = str(FOLDER)) -> tuple[dict[str, splits_lib.PartMeta], SampleReader]:
    """Labels, patient ids and file names of each part, in sorted file order, and a reader."""
    root = Path(folder)
    metas, paths = {}, {}
    for part in PARTS:
        labels, patients, names, files = [], [], [], []
        for label, cls in enumerate(CLASS_NAMES):
            directory = root / part / cls
            if not directory.is_dir():
                raise FileNotFoundError(
                    f"{directory}: the bundled sample is missing (a package built without its data files?)"
                )
            for path in sorted(directory.glob("*.jpeg")):
                labels.append(label)
                patients.append(kermany.parse_name(path.name, cls)[0])
                names.append(f"{cls}/{path.name}")
                files.append(str(path))
        metas[part] = splits_lib.PartMeta(np.asarray(labels, np.int32), patients, names)
        paths[part] = tuple(files)
    return metas, SampleReader(paths)
