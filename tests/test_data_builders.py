"""TFDS builders on small trees the tests write: counts, features, conversions, bad input."""

import data_fixtures as fx
import numpy as np
import pytest
from PIL import Image

from effnet_jax.data import imaging, kermany, prepare
from effnet_jax.data.builders import pneumonia_mnist


def _prepare(raw, data_dir, **kw):
    factory = prepare.BuilderFactory(name="chest_xray", manual_dir=str(raw), data_dir=str(data_dir), **kw)
    return prepare.ensure_prepared(factory)


def _records(builder, split):
    import io

    from tensorflow_datasets.core import decode

    source = builder.as_data_source(split, decoders={"image": decode.SkipDecoding()})
    out = []
    for r in source:
        out.append(
            {
                **r,
                "image": np.asarray(Image.open(io.BytesIO(r["image"]))),
                "file_name": r["file_name"].decode(),
                "patient_id": r["patient_id"].decode(),
            }
        )
    return out


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    root = fx.write_tree(tmp_path_factory.mktemp("raw") / "chest_xray", fx.GOOD_TREE)
    data_dir = tmp_path_factory.mktemp("tfds")
    builder = _prepare(root, data_dir, max_size=36)
    builder.data_root = data_dir  # for tests that go through the config
    return root, builder


def test_prepares_every_split_with_exact_class_counts(good):
    _, builder = good
    metas = prepare.read_part_metadata(builder)
    assert sorted(metas) == ["test", "train", "val"]
    for split, counts in fx.GOOD_COUNTS.items():
        assert np.bincount(metas[split].labels, minlength=2).tolist() == counts


def test_features_parse_patient_pathogen_and_file_name(good):
    _, builder = good
    recs = {r["file_name"]: r for r in _records(builder, "train")}
    assert len(recs) == 11
    assert recs["NORMAL2-IM-0003-0001.jpeg"]["patient_id"] == "NORMAL2-IM-0003"
    assert recs["IM-0001-0002.jpeg"]["patient_id"] == "IM-0001"
    assert recs["person2_virus_3.jpeg"]["patient_id"] == "person2"
    pathogen = builder.info.features["pathogen"].names
    assert pathogen[recs["person2_virus_3.jpeg"]["pathogen"]] == "virus"
    assert pathogen[recs["person1_bacteria_2.jpeg"]["pathogen"]] == "bacteria"
    assert pathogen[recs["IM-0001-0001.jpeg"]["pathogen"]] == "none"
    label = builder.info.features["label"].names
    assert label[recs["person4_virus_5.png"]["label"]] == "PNEUMONIA"


def test_images_are_grayscale_with_shorter_side_capped_and_aspect_kept(good):
    _, builder = good
    recs = {r["file_name"]: r["image"] for r in _records(builder, "train")}
    for name, image in recs.items():
        assert image.ndim == 2 and image.dtype == np.uint8, name
    assert recs["IM-0002-0001.jpeg"].shape == (36, 48)  # 64x48 -> shorter side 36, aspect 4:3
    assert recs["IM-0001-0001.jpeg"].shape == (32, 40)  # already small: kept as is


def test_16bit_image_is_stretched_to_the_full_8bit_range(good):
    _, builder = good
    image = {r["file_name"]: r["image"] for r in _records(builder, "train")}["IM-0004-0001.png"]
    assert image.min() <= 3 and image.max() >= 252  # JPEG storage wobbles the extremes slightly


@pytest.mark.parametrize("mode", ["RGBA", "CMYK", "P", "I;16", "RGB", "1", "LA"])
def test_odd_modes_convert_to_8bit_gray(mode):
    gray = fx.xray(0)
    if mode == "I;16":
        im = Image.fromarray(np.asarray(gray).astype(np.uint16) * 257)
    else:
        im = gray.convert(mode)
    out = imaging.to_gray(im)
    assert out.mode == "L" and out.size == gray.size
    if mode in ("RGBA", "RGB", "I;16", "LA", "P"):
        assert np.abs(np.asarray(out, int) - np.asarray(gray, int)).max() <= 1


def test_zip_gives_the_same_records_as_the_folder(good, tmp_path):
    root, builder = good
    zipped = fx.zip_tree(
        root,
        tmp_path / "chest-xray-pneumonia.zip",
        extra={
            "__MACOSX/chest_xray/._IM-0001-0001.jpeg": b"junk",
            "chest_xray/train/NORMAL/.DS_Store": b"junk",
            "chest_xray/chest_xray/train/NORMAL/IM-0001-0001.jpeg": fx.jpeg(1),
        },
    )  # Kaggle's copy
    from_zip = _prepare(zipped, tmp_path / "tfds", max_size=36)
    for split in ("train", "val", "test"):
        a, b = _records(builder, split), _records(from_zip, split)
        assert [r["file_name"] for r in a] == [r["file_name"] for r in b]
        for x, y in zip(a, b):
            np.testing.assert_array_equal(x["image"], y["image"])
    ignored = from_zip.info.metadata["ignored"]
    assert any("__MACOSX" in p for p in ignored) and any(".DS_Store" in p for p in ignored)
    assert any("nested copy" in p for p in ignored)


BAD_FILES = {
    "corrupt": ("train/NORMAL/IM-0009-0001.jpeg", b"\xff\xd8\xff\xe0 not really a jpeg"),
    "truncated": ("train/PNEUMONIA/person9_virus_9.jpeg", fx.jpeg(30, size=(64, 64))[:300]),
    "not_image": ("train/PNEUMONIA/notes.txt", b"radiologist notes"),
    "stray_folder": ("train/PNEUMONIA/extra/", None),
    "stray_class": ("train/COVID/", None),
}


@pytest.mark.parametrize("kind", sorted(BAD_FILES))
def test_bad_input_stops_preparation_naming_the_path(kind, tmp_path):
    rel, content = BAD_FILES[kind]
    root = fx.write_tree(tmp_path / "raw", {**fx.GOOD_TREE, rel: content})
    with pytest.raises(imaging.BadImageError, match="on_bad_image") as err:
        _prepare(root, tmp_path / "tfds")
    assert str(root / rel.rstrip("/")) in str(err.value)


def test_skip_policy_skips_bad_input_and_lists_it_in_dataset_info(tmp_path):
    bad = {rel: content for rel, content in BAD_FILES.values()}
    root = fx.write_tree(tmp_path / "raw", {**fx.GOOD_TREE, **bad})
    _prepare(root, tmp_path / "tfds", on_bad_image="skip")
    # A fresh builder reads the info back from disk: the list survives preparation.
    builder = _prepare(root, tmp_path / "tfds", on_bad_image="skip")
    assert builder.builder_config.name == "max512_skipbad"
    skipped = builder.info.metadata["skipped"]
    assert builder.info.metadata["num_skipped"] == len(bad) == len(skipped)
    for rel in bad:
        assert sum(str(root / rel.rstrip("/")) in s for s in skipped) == 1, rel
    metas = prepare.read_part_metadata(builder)
    assert np.bincount(metas["train"].labels).tolist() == fx.GOOD_COUNTS["train"]


def test_missing_class_folder_is_an_error_naming_it(tmp_path):
    tree = {k: v for k, v in fx.GOOD_TREE.items() if not k.startswith("val/PNEUMONIA")}
    root = fx.write_tree(tmp_path / "raw", tree)
    with pytest.raises(kermany.LayoutError, match=str(root / "val" / "PNEUMONIA")):
        _prepare(root, tmp_path / "tfds")


def test_empty_split_is_an_error_naming_it(tmp_path):
    tree = {k: v for k, v in fx.GOOD_TREE.items() if not k.startswith("test/")}
    root = fx.write_tree(tmp_path / "raw", {**tree, "test/NORMAL/": None, "test/PNEUMONIA/": None})
    with pytest.raises(kermany.LayoutError, match="empty split"):
        _prepare(root, tmp_path / "tfds")


def test_missing_raw_folder_names_the_config_key(tmp_path):
    with pytest.raises(kermany.LayoutError, match="data.manual_dir"):
        _prepare(tmp_path / "nowhere", tmp_path / "tfds")


# ---------------------------------------------------------------- PneumoniaMNIST


def _mnist(raw, data_dir, size=28):
    return prepare.ensure_prepared(
        prepare.BuilderFactory(name="pneumonia_mnist", manual_dir=str(raw), data_dir=str(data_dir), mnist_size=size)
    )


def test_pneumonia_mnist_from_a_local_npz_keeps_pixels_labels_and_order(tmp_path):
    arrays = fx.write_mnist_npz(tmp_path / "raw" / "pneumoniamnist_64.npz", size=64)
    builder = _mnist(tmp_path / "raw", tmp_path / "tfds", size=64)
    metas = prepare.read_part_metadata(builder)
    for split in ("train", "val", "test"):
        np.testing.assert_array_equal(metas[split].labels, arrays[f"{split}_labels"][:, 0])
        images = np.stack([r["image"] for r in _records_mnist(builder, split)])
        np.testing.assert_array_equal(images, arrays[f"{split}_images"])  # PNG: lossless


def _records_mnist(builder, split):
    import io

    from tensorflow_datasets.core import decode

    source = builder.as_data_source(split, decoders={"image": decode.SkipDecoding()})
    return [{"image": np.asarray(Image.open(io.BytesIO(r["image"])))} for r in source]


def test_pneumonia_mnist_offline_fails_with_a_clear_message(tmp_path, monkeypatch):
    # Port 9 on localhost refuses at once: the same path as having no network.
    monkeypatch.setattr(pneumonia_mnist, "RECORD", "http://127.0.0.1:9/records/10519652")
    with pytest.raises(RuntimeError, match="Offline.*pneumoniamnist_128.npz"):
        _mnist(tmp_path / "empty", tmp_path / "tfds", size=128)


def test_pneumonia_mnist_npz_of_the_wrong_size_names_file_and_key(tmp_path):
    fx.write_mnist_npz(tmp_path / "raw" / "pneumoniamnist.npz", size=32)
    with pytest.raises(ValueError, match=r"pneumoniamnist.npz.*train_images.*mnist_size=28"):
        _mnist(tmp_path / "raw", tmp_path / "tfds", size=28)


def test_pneumonia_mnist_rejects_unknown_sizes():
    with pytest.raises(ValueError, match="data.mnist_size=100"):
        pneumonia_mnist.config_for(100)


def test_pipeline_reads_prepared_fixture_images_in_split_order(good):
    from effnet_jax.data import pipeline
    from effnet_jax.train.config import default_data_config

    root, builder = good
    cfg = default_data_config()
    cfg.name, cfg.manual_dir, cfg.data_dir, cfg.max_size = ("chest_xray", str(root), str(builder.data_root), 36)
    info = pipeline.split_info(cfg, "test")
    assert info["file_names"] == ["IM-0200-0001.jpeg", "IM-0201-0001.jpeg", "person200_bacteria_1.jpeg"]
    assert info["patient_ids"] == ["IM-0200", "IM-0201", "person200"]  # what bootstrap intervals resample by
    assert info["class_counts"] == [2, 1] and not info["synthetic"]
    batches = list(
        pipeline.create_split(
            cfg,
            "test",
            training=False,
            batch_size=2,
            image_size=32,
            mean=(0.0,) * 3,
            std=(1.0,) * 3,
            seed=0,
            shard_index=0,
            shard_count=1,
        )
    )
    assert [b["label"].tolist() for b in batches] == [[0, 0], [1, 0]]
    assert [b["mask"].tolist() for b in batches] == [[True, True], [True, False]]
    # mean 0, std 1: pixels come out in [0, 1], replicated over the 3 channels.
    image = batches[0]["image"][0]
    assert 0.0 <= image.min() and image.max() <= 1.0
    np.testing.assert_array_equal(image[..., 0], image[..., 2])


def test_error_policy_lists_every_bad_image_of_a_split_at_once(tmp_path):
    bad = {
        "train/NORMAL/IM-0009-0001.jpeg": BAD_FILES["corrupt"][1],
        "train/PNEUMONIA/person9_virus_9.jpeg": BAD_FILES["truncated"][1],
        "train/PNEUMONIA/notes.txt": BAD_FILES["not_image"][1],
    }
    root = fx.write_tree(tmp_path / "raw", {**fx.GOOD_TREE, **bad})
    with pytest.raises(imaging.BadImageError, match="^3 bad input") as err:
        _prepare(root, tmp_path / "tfds")
    for rel in bad:
        assert str(root / rel) in str(err.value)
    assert "not an image" in str(err.value) and "truncated" in str(err.value)


def test_pneumonia_mnist_through_the_pipeline_uses_its_own_splits_and_pixels(tmp_path):
    from effnet_jax.data import pipeline
    from effnet_jax.train.config import default_data_config

    arrays = fx.write_mnist_npz(tmp_path / "raw" / "pneumoniamnist.npz", size=28)
    cfg = default_data_config()
    cfg.name, cfg.mnist_size = "pneumonia_mnist", 28
    cfg.manual_dir, cfg.data_dir = str(tmp_path / "raw"), str(tmp_path / "tfds")
    info = pipeline.split_info(cfg, "validation")
    assert info["num_examples"] == 4 and info["class_counts"] == [2, 2]
    assert info["file_names"] == ["val_00000", "val_00001", "val_00002", "val_00003"]
    batch = next(
        iter(
            pipeline.create_split(
                cfg,
                "validation",
                training=False,
                batch_size=4,
                image_size=28,
                mean=(0.0,) * 3,
                std=(1.0,) * 3,
                seed=0,
                shard_index=0,
                shard_count=1,
            )
        )
    )
    np.testing.assert_allclose(batch["image"][..., 1], arrays["val_images"] / 255.0, atol=1e-6)
    np.testing.assert_array_equal(batch["label"], arrays["val_labels"][:, 0])


def test_layout_is_found_beside_another_data_set_with_a_train_folder(tmp_path):
    # Mendeley's full archive: CellData/{OCT,chest_xray}/{train,test}/...; OCT has NORMAL too.
    fx.write_tree(
        tmp_path / "CellData" / "OCT",
        {"train/NORMAL/NORMAL-1-1.jpeg": fx.jpeg(0), "train/CNV/CNV-1-1.jpeg": fx.jpeg(1)},
    )
    fx.write_tree(tmp_path / "CellData" / "chest_xray", fx.GOOD_TREE)
    layout = kermany.scan(tmp_path)
    assert {split: len(files) for split, files in layout.files.items()} == {"train": 11, "val": 2, "test": 3}
    assert any("OCT: outside the data folder" in p for p in layout.ignored)
    assert layout.problems == []


def test_two_processes_preparing_the_same_set_at_once_both_get_it_prepared_once(tmp_path):
    """The second waits on the first's preparation lock, then reads what the first wrote."""
    import subprocess
    import sys

    root = fx.write_tree(tmp_path / "raw" / "chest_xray", fx.GOOD_TREE)
    data_dir = tmp_path / "tfds"
    script = (
        "import sys\n"
        "from effnet_jax.data import prepare\n"
        "f = prepare.BuilderFactory(name='chest_xray', manual_dir=sys.argv[1], data_dir=sys.argv[2], max_size=36)\n"
        "b = prepare.ensure_prepared(f)\n"
        "print(sum(len(m.labels) for m in prepare.read_part_metadata(b).values()))\n"
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script, str(root), str(data_dir)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=300) for p in procs]
    total = sum(sum(counts) for counts in fx.GOOD_COUNTS.values())
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err
        assert out.split() == [str(total)]
    # One prepared version, no leftovers of a second preparation beside it.
    versions = [p for p in (data_dir / "chest_xray").rglob("dataset_info.json")]
    assert len(versions) == 1, versions


def test_a_builder_made_while_another_process_prepared_the_set_is_made_again(tmp_path, monkeypatch):
    """A builder made before the set existed holds no split info, even once the set is there."""
    root = fx.write_tree(tmp_path / "raw" / "chest_xray", fx.GOOD_TREE)
    factory = prepare.BuilderFactory(
        name="chest_xray", manual_dir=str(root), data_dir=str(tmp_path / "tfds"), max_size=36
    )
    stale = factory()  # made while the other process has not finished
    prepare.ensure_prepared(factory)  # the other process finishes
    assert stale.is_prepared() and not stale.info.splits
    made, real = [stale], prepare.BuilderFactory.__call__
    monkeypatch.setattr(prepare.BuilderFactory, "__call__", lambda self: made.pop() if made else real(self))
    builder = prepare.ensure_prepared(factory)
    total = sum(sum(counts) for counts in fx.GOOD_COUNTS.values())
    assert sum(len(m.labels) for m in prepare.read_part_metadata(builder).values()) == total
