"""A small deterministic fake chest X-ray set that needs no files (debug runs and tests).

Every image is computed from (split, index) alone, so the set is identical on every
machine and in every worker process. NORMAL images are two dark lung fields on a
brighter body; PNEUMONIA images add bright patchy opacities inside the lungs, so a
model can learn the difference in a few hundred steps.
"""

import numpy as np

SIZE = 64  # stored side length; the pipeline resizes to the model's resolution
SPLIT_IDS = {"train": 0, "validation": 1, "test": 2}


def split_sizes(num_train: int) -> dict[str, int]:
    """Number of examples per synthetic split (validation and test get a quarter of train)."""
    if num_train < 4:
        raise ValueError(f"data.synthetic_examples={num_train}: expected at least 4")
    return {"train": num_train, "validation": max(num_train // 4, 4), "test": max(num_train // 4, 4)}


def label_of(index: int) -> int:
    """Class of the example: one in four is NORMAL (0), like the real data's imbalance."""
    return 0 if index % 4 == 0 else 1


def labels(num: int) -> np.ndarray:
    """Labels of the first `num` examples of any synthetic split."""
    return np.array([label_of(i) for i in range(num)], dtype=np.int32)


_yy, _xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32) / (SIZE - 1)


def _lung_mask(cx: float) -> np.ndarray:
    return (((_xx - cx) / 0.17) ** 2 + ((_yy - 0.5) / 0.33) ** 2) <= 1.0


_LUNGS = _lung_mask(0.3) | _lung_mask(0.7)


def image(split: str, index: int) -> np.ndarray:
    """The (SIZE, SIZE) uint8 grayscale image of example `index` of `split`."""
    rng = np.random.default_rng([SPLIT_IDS[split], index, 7])
    img = 170.0 + 25.0 * rng.standard_normal((SIZE, SIZE)) * 0.3
    img = np.where(_LUNGS, 60.0, img)
    if label_of(index) == 1:
        # Opacities: a few bright Gaussian blobs centred inside a lung field.
        for _ in range(3):
            cx = rng.choice([0.3, 0.7]) + rng.uniform(-0.08, 0.08)
            cy = rng.uniform(0.3, 0.7)
            r = rng.uniform(0.06, 0.12)
            img += 110.0 * np.exp(-(((_xx - cx) ** 2 + (_yy - cy) ** 2) / (2 * r * r)))
    img += 12.0 * rng.standard_normal((SIZE, SIZE))
    return np.clip(img, 0, 255).astype(np.uint8)
