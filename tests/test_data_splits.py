"""Split rules: validation carved by patient, pooled 60/20/20, seeded and disjoint."""

import numpy as np
import pytest

from effnet_jax.data import splits


def _metas(seed=0):
    """Official-like parts: train has patients with 1-4 images each; labels 1:3."""
    rng = np.random.default_rng(seed)

    def part(prefix, n_patients):
        labels, pids = [], []
        for p in range(n_patients):
            label = int(p % 4 != 0)
            for _ in range(rng.integers(1, 5)):
                labels.append(label)
                pids.append(f"{prefix}{p}")
        return splits.PartMeta(np.array(labels, np.int32), pids, [f"{i}.jpeg" for i in range(len(labels))])

    return {"train": part("p", 200), "val": part("v", 4), "test": part("t", 40)}


def _keys(sel):
    return set(zip(sel.part.tolist(), sel.record.tolist()))


def test_stratified_group_split_keeps_groups_whole_and_hits_fractions():
    labels = np.repeat([0, 1], [300, 900])
    groups = np.arange(1200) // 3  # 400 groups of 3 images
    bucket = splits.stratified_group_split(labels, groups, (0.6, 0.2, 0.2), seed=0)
    for g in range(400):
        assert len(set(bucket[groups == g])) == 1
    for label, n in ((0, 300), (1, 900)):
        counts = np.bincount(bucket[labels == label], minlength=3)
        np.testing.assert_allclose(counts / n, [0.6, 0.2, 0.2], atol=3 / n)


def test_stratified_group_split_is_seeded():
    labels, groups = np.repeat([0, 1], 50), np.arange(100)
    a = splits.stratified_group_split(labels, groups, (0.9, 0.1), seed=1)
    b = splits.stratified_group_split(labels, groups, (0.9, 0.1), seed=1)
    c = splits.stratified_group_split(labels, groups, (0.9, 0.1), seed=2)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_patient_protocol_carves_validation_from_train_without_shared_patients():
    metas = _metas()
    kw = dict(protocol="patient", val_fraction=0.1, seed=0)
    train = splits.select(metas, "train", **kw)
    val = splits.select(metas, "validation", **kw)
    assert not _keys(train) & _keys(val)
    assert len(train) + len(val) == len(metas["train"].labels)
    assert set(train.patient_ids).isdisjoint(val.patient_ids)
    assert set(train.parts) == {"train"} and set(val.parts) == {"train"}
    assert abs(len(val) / len(metas["train"].labels) - 0.1) < 0.02
    assert set(val.labels.tolist()) == {0, 1}


def test_patient_protocol_keeps_the_official_test_split():
    metas = _metas()
    test = splits.select(metas, "test", protocol="patient", val_fraction=0.1)
    assert test.parts == ("test",)
    np.testing.assert_array_equal(test.record, np.arange(len(metas["test"].labels)))


def test_missing_test_split_says_what_to_do_instead():
    metas = {k: v for k, v in _metas().items() if k != "test"}
    with pytest.raises(ValueError, match="split_protocol='pooled'"):
        splits.select(metas, "test", protocol="patient", val_fraction=0.1)


@pytest.mark.parametrize("group", ["image", "patient"])
def test_pooled_protocol_is_a_disjoint_60_20_20_cover_of_every_part(group):
    metas = _metas()
    total = sum(len(m.labels) for m in metas.values())
    sel = {
        s: splits.select(metas, s, protocol="pooled", val_fraction=0.1, pooled_group=group, seed=3)
        for s in splits.SPLITS
    }
    keys = [_keys(s) for s in sel.values()]
    assert sum(len(k) for k in keys) == total and len(set.union(*keys)) == total
    for s, frac in zip(splits.SPLITS, (0.6, 0.2, 0.2)):
        assert abs(len(sel[s]) / total - frac) < 0.03, s
    if group == "patient":
        assert set(sel["train"].patient_ids).isdisjoint(sel["test"].patient_ids)


def test_shipped_validation_part_is_used_when_not_carving():
    metas = _metas()
    val = splits.select(metas, "validation", protocol="patient", val_fraction=0.1, carve_validation=False)
    assert val.parts == ("val",) and len(val) == len(metas["val"].labels)


def test_bad_protocol_and_fraction_name_the_config_key():
    with pytest.raises(ValueError, match="data.split_protocol"):
        splits.select(_metas(), "train", protocol="random", val_fraction=0.1)
    with pytest.raises(ValueError, match="data.val_fraction"):
        splits.select(_metas(), "train", protocol="patient", val_fraction=1.5)


def test_pooled_file_names_say_which_official_split_they_came_from():
    sel = splits.select(_metas(), "test", protocol="pooled", val_fraction=0.1, seed=0)
    assert {name.split("/")[0] for name in sel.file_names} == {"train", "val", "test"}


def test_official_val_is_the_val_part_as_is_under_the_patient_protocol_only():
    metas = _metas()
    sel = splits.select(metas, "official_val", protocol="patient", val_fraction=0.1)
    assert sel.parts == ("val",) and len(sel) == len(metas["val"].labels)
    np.testing.assert_array_equal(sel.labels, metas["val"].labels)
    with pytest.raises(ValueError, match="pooled into"):
        splits.select(metas, "official_val", protocol="pooled", val_fraction=0.1)
    with pytest.raises(ValueError, match="use split='validation'"):
        splits.select(metas, "official_val", protocol="patient", val_fraction=0.1, carve_validation=False)
    with pytest.raises(ValueError, match="only the parts"):
        splits.select({"train": metas["train"]}, "official_val", protocol="patient", val_fraction=0.1)
