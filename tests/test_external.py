"""External validation folders: layout, bounds, no overlap with training data, evaluation order."""

import logging
import os

import numpy as np
import pytest
from data_fixtures import GOOD_TREE, jpeg, write_tree

from effnet_jax.data import external, pipeline, sources
from effnet_jax.metrics import classification as metrics
from effnet_jax.train import config as data_config_lib


def _external_tree(root, normal=3, pneumonia=2, seed=100):
    files = {f"NORMAL/n{i}.jpeg": jpeg(seed + i) for i in range(normal)}
    files.update({f"PNEUMONIA/p{i}.jpeg": jpeg(seed + 50 + i) for i in range(pneumonia)})
    return write_tree(root, files)


def _config(tmp_path, externals, manual_dir=None):
    c = data_config_lib.default_data_config()
    c.name = "chest_xray"
    c.manual_dir = str(manual_dir or write_tree(tmp_path / "chest_xray", GOOD_TREE))
    c.data_dir = str(tmp_path / "tfds")
    c.external = tuple(str(e) for e in externals)
    return c


def test_split_names_follow_the_config_order(tmp_path):
    c = _config(tmp_path, [tmp_path / "a", tmp_path / "b", tmp_path / "c"])
    assert external.split_names(c) == ["external", "external_1", "external_2"]
    assert external.folder_of(c, "external_2") == tmp_path / "c"
    assert external.folder_of(c, f"folder:{tmp_path}/x") == tmp_path / "x"
    with pytest.raises(external.ExternalDataError, match="data.external has 3 folder"):
        external.folder_of(c, "external_3")


def test_external_split_has_exact_labels_and_names_and_one_eval_pass(tmp_path):
    ext = _external_tree(tmp_path / "ext", normal=3, pneumonia=2)
    c = _config(tmp_path, [ext])
    info = pipeline.split_info(c, "external")
    assert info["num_examples"] == 5 and info["class_counts"] == [3, 2]
    assert info["file_names"] == [
        "NORMAL/n0.jpeg",
        "NORMAL/n1.jpeg",
        "NORMAL/n2.jpeg",
        "PNEUMONIA/p0.jpeg",
        "PNEUMONIA/p1.jpeg",
    ]
    ds = pipeline.create_split(
        c,
        "external",
        training=False,
        batch_size=4,
        image_size=16,
        mean=(0.5,) * 3,
        std=(0.5,) * 3,
        seed=0,
        shard_index=0,
        shard_count=1,
    )
    batches = list(ds)
    assert len(batches) == 2
    mask = np.concatenate([b["mask"] for b in batches])
    labels = np.concatenate([b["label"] for b in batches])[mask]
    index = np.concatenate([b["index"] for b in batches])[mask]
    assert labels.tolist() == [0, 0, 0, 1, 1] and index.tolist() == [0, 1, 2, 3, 4]


def test_any_labelled_folder_is_a_split(tmp_path):
    ext = _external_tree(tmp_path / "elsewhere", normal=1, pneumonia=1)
    c = _config(tmp_path, [])
    assert pipeline.split_info(c, f"folder:{ext}")["class_counts"] == [1, 1]


def test_missing_class_folder_names_the_folder(tmp_path):
    write_tree(tmp_path / "ext", {"NORMAL/a.jpeg": jpeg(1), "pneumonia/b.jpeg": jpeg(2)})
    c = _config(tmp_path, [tmp_path / "ext"])
    with pytest.raises(external.ExternalDataError, match=r"ext: missing PNEUMONIA/.*found folders"):
        pipeline.split_info(c, "external")


def test_links_fifos_and_oversized_files_follow_the_bad_image_policy(tmp_path, monkeypatch):
    ext = _external_tree(tmp_path / "ext", normal=2, pneumonia=2)
    os.symlink(ext / "NORMAL" / "loop.jpeg", ext / "NORMAL" / "loop.jpeg")  # a link to itself: ELOOP
    os.symlink(tmp_path / "nowhere.jpeg", ext / "NORMAL" / "dangling.jpeg")
    os.mkfifo(ext / "PNEUMONIA" / "fifo.jpeg")
    monkeypatch.setattr(external, "MAX_FILE_BYTES", 2000)
    (ext / "PNEUMONIA" / "huge.jpeg").write_bytes(b"\xff" * 2001)
    c = _config(tmp_path, [ext])
    with pytest.raises(external.ExternalDataError, match="dangling.jpeg: unreadable"):
        external.scan(c, "external")
    c.on_bad_image = "skip"
    meta, paths = external.scan(c, "external")
    assert meta.file_names == ["NORMAL/n0.jpeg", "NORMAL/n1.jpeg", "PNEUMONIA/p0.jpeg", "PNEUMONIA/p1.jpeg"]


def test_empty_class_warns_but_evaluates(tmp_path, caplog):
    write_tree(tmp_path / "ext", {"NORMAL/a.jpeg": jpeg(1), "PNEUMONIA/": b""})
    c = _config(tmp_path, [tmp_path / "ext"])
    with caplog.at_level(logging.WARNING):
        assert pipeline.split_info(c, "external")["class_counts"] == [1, 0]
    assert "PNEUMONIA/ has no images" in caplog.text


def _check(c):
    external.check_disjoint(c, sources.reader(c, "train"), sources.selection(c, "train"))


def test_external_folder_inside_the_training_data_is_refused(tmp_path):
    manual = write_tree(tmp_path / "chest_xray", GOOD_TREE)
    c = _config(tmp_path, [manual / "test"], manual_dir=manual)
    with pytest.raises(external.ExternalDataError, match=r"data.external\[0\].*overlaps data.manual_dir"):
        _check(c)


def test_external_image_identical_to_a_training_image_is_refused(tmp_path):
    ext = _external_tree(tmp_path / "ext")
    c = _config(tmp_path, [ext])
    _check(c)  # disjoint: passes
    leaked = tmp_path / "leaky"
    _external_tree(leaked)
    (leaked / "NORMAL" / "copy.jpeg").write_bytes(GOOD_TREE["train/NORMAL/IM-0001-0002.jpeg"]())
    c = _config(tmp_path, [ext, leaked], manual_dir=c.manual_dir)
    with pytest.raises(
        external.ExternalDataError,
        match=r"data.external\[1\].*copy.jpeg is byte-identical to "
        r"the training image IM-0001-0002.jpeg",
    ):
        _check(c)


@pytest.mark.parametrize("min_sens", [0.95, 0.8, 1.0])
def test_sensitivity_threshold_is_the_most_specific_rule_that_keeps_sensitivity(min_sens):
    rng = np.random.default_rng(0)
    labels = np.r_[np.zeros(50, int), np.ones(40, int)]
    probs = np.r_[rng.uniform(0, 0.7, 50), rng.uniform(0.3, 1, 40)]
    t = metrics.sensitivity_threshold(labels, probs, min_sens)
    assert np.mean(probs[labels == 1] >= t) >= min_sens
    higher = np.sort(probs[labels == 1])
    above = higher[higher > t]
    if above.size:  # the next candidate threshold up would lose sensitivity
        assert np.mean(probs[labels == 1] >= above[0]) < min_sens


def test_external_split_has_patient_ids_from_kermany_names(tmp_path):
    files = {
        "NORMAL/IM-0001-0001.jpeg": jpeg(1),
        "NORMAL/IM-0001-0002.jpeg": jpeg(2),
        "NORMAL/NORMAL2-IM-0007-0001.jpeg": jpeg(3),
        "PNEUMONIA/person3_bacteria_10.jpeg": jpeg(4),
        "PNEUMONIA/person3_virus_11.jpeg": jpeg(5),
        "PNEUMONIA/scan.jpeg": jpeg(6),
        "NORMAL/scan.jpeg": jpeg(7),
    }
    c = _config(tmp_path, [write_tree(tmp_path / "ext", files)])
    info = pipeline.split_info(c, "external")
    ids = dict(zip(info["file_names"], info["patient_ids"]))
    # Bootstrap intervals resample these whole; unknown names are a patient each, per class.
    assert ids == {
        "NORMAL/IM-0001-0001.jpeg": "NORMAL/IM-0001",
        "NORMAL/IM-0001-0002.jpeg": "NORMAL/IM-0001",
        "NORMAL/NORMAL2-IM-0007-0001.jpeg": "NORMAL/NORMAL2-IM-0007",
        "NORMAL/scan.jpeg": "NORMAL/scan",
        "PNEUMONIA/person3_bacteria_10.jpeg": "PNEUMONIA/person3",
        "PNEUMONIA/person3_virus_11.jpeg": "PNEUMONIA/person3",
        "PNEUMONIA/scan.jpeg": "PNEUMONIA/scan",
    }
