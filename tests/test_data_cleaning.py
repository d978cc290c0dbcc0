"""Cleaning on a planted tree: what is excluded and why, leakage, the list file, the builder."""

import json

import cleaning_fixtures as cf
import data_fixtures as fx
import numpy as np
import pytest
from PIL import Image

from effnet_jax.cli import data as cli
from effnet_jax.data import exclusions, imaging, prepare
from effnet_jax.data.eda import cleaning, hashing, scan


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    root = cf.write(tmp_path_factory.mktemp("raw") / "chest_xray")
    inventory = scan.scan_raw(root, progress=False)
    return root, inventory, cleaning.find(inventory)


# ---------------------------------------------------------------- fingerprints


def test_pixel_hash_is_the_same_for_the_same_pixels_in_another_container():
    data = cf.jpeg(cf.smooth(1))
    as_png = cf.decoded(fx.encode(cf.decoded(data), "PNG"))
    assert hashing.pixel_hash(cf.decoded(data)) == hashing.pixel_hash(as_png)
    brighter = Image.fromarray(np.asarray(cf.decoded(data)) // 2 + 1)
    assert hashing.pixel_hash(cf.decoded(data)) != hashing.pixel_hash(brighter)


def test_phash_puts_a_resized_brightened_copy_within_the_threshold_and_others_far_beyond():
    data = cf.jpeg(cf.smooth(4))
    original = hashing.phash(cf.decoded(data))
    assert hashing.hamming(original, hashing.phash(cf.decoded(cf.near_copy(data)))) <= 12
    for seed in (5, 6, 7):
        assert hashing.hamming(original, hashing.phash(cf.smooth(seed))) > 3 * hashing.NEAR_THRESHOLD


def test_close_pairs_finds_exactly_the_pairs_within_the_threshold():
    hashes = ["00" * 32, "01" + "00" * 31, "ff" * 32, "03" + "00" * 31]
    assert hashing.close_pairs(hashes, 2, chunk=2) == [(0, 1, 1), (0, 3, 2), (1, 3, 1)]


# ---------------------------------------------------------------- findings


def test_each_planted_problem_is_excluded_with_its_reason_and_nothing_else(planted):
    _, _, found = planted
    assert {e["file"]: e["reason"] for e in found["excluded"]} == cf.EXPECTED
    assert found["num_excluded"] == 10


def test_counts_before_and_after_cleaning(planted):
    _, _, found = planted
    assert found["counts_before"] == cf.COUNTS_BEFORE
    assert found["counts_after"] == cf.COUNTS_AFTER


def test_duplicates_keep_the_first_copy_and_name_it(planted):
    _, _, found = planted
    detail = {e["file"]: e["detail"] for e in found["excluded"]}
    assert detail["train/NORMAL/IM-0001-0002.png"] == "same pixels as train/NORMAL/IM-0001-0001.jpeg"
    assert detail["train/PNEUMONIA/person1_bacteria_2.jpeg"].endswith(
        "pHash bits from train/PNEUMONIA/person1_bacteria_1.jpeg"
    )
    kinds = sorted((g["kind"], tuple(g["files"])) for g in found["duplicate_groups"])
    assert kinds == [
        ("exact", ("test/PNEUMONIA/person30_bacteria_9.jpeg", "train/PNEUMONIA/person3_bacteria_4.jpeg")),
        ("exact", ("train/NORMAL/IM-0001-0001.jpeg", "train/NORMAL/IM-0001-0002.png")),
        ("exact", ("train/NORMAL/IM-0006-0001.jpeg", "train/PNEUMONIA/person6_bacteria_7.jpeg")),
        ("near", ("train/PNEUMONIA/person1_bacteria_1.jpeg", "train/PNEUMONIA/person1_bacteria_2.jpeg")),
    ]


def test_leakage_lists_the_test_copy_and_the_shared_patient_and_keeps_test(planted):
    _, _, found = planted
    assert found["leakage"]["images"] == [
        {
            "file": "train/PNEUMONIA/person3_bacteria_4.jpeg",
            "test_file": "test/PNEUMONIA/person30_bacteria_9.jpeg",
            "kind": "exact",
        }
    ]
    assert found["leakage"]["patients"] == [{"patient": "person4", "files": ["train/PNEUMONIA/person4_virus_5.jpeg"]}]
    assert not any(e["split"] == "test" for e in found["excluded"])
    banner = cleaning.leakage_banner(found)
    assert "LEAKAGE" in banner and "person4" in banner and "person30_bacteria_9" in banner


def test_patient_leakage_report_only_lists_the_patient_without_excluding(planted):
    _, inventory, _ = planted
    found = cleaning.find(inventory, cleaning.Thresholds(patient_leakage="report"))
    reasons = {e["file"]: e["reason"] for e in found["excluded"]}
    assert "train/PNEUMONIA/person4_virus_5.jpeg" not in reasons
    assert [p["patient"] for p in found["leakage"]["patients"]] == ["person4"]
    assert len(reasons) == 9


def test_a_zero_near_threshold_finds_only_exact_duplicates(planted):
    _, inventory, _ = planted
    found = cleaning.find(inventory, cleaning.Thresholds(near_bits=0))
    assert "train/PNEUMONIA/person1_bacteria_2.jpeg" not in {e["file"] for e in found["excluded"]}


def test_a_tree_without_problems_has_no_findings(tmp_path):
    tree = {
        k: v
        for k, v in cf.build_tree().items()
        if k.split("/")[-1]
        in (
            "IM-0002-0001.jpeg",
            "IM-0003-0001.jpeg",
            "person2_virus_3.jpeg",
            "IM-0100-0001.jpeg",
            "person100_virus_1.jpeg",
        )
    }
    found = cleaning.find(scan.scan_raw(fx.write_tree(tmp_path / "raw", tree), progress=False))
    assert found["excluded"] == [] and found["duplicate_groups"] == []
    assert cleaning.leakage_banner(found) is None


def test_bad_threshold_flags_name_themselves():
    with pytest.raises(ValueError, match="--patient_leakage"):
        cleaning.Thresholds(patient_leakage="ignore")
    with pytest.raises(ValueError, match="--near_bits"):
        cleaning.Thresholds(near_bits=200)


# ---------------------------------------------------------------- the list file


@pytest.mark.parametrize("suffix", ["json", "csv"])
def test_exclusion_list_round_trips_as_json_and_csv(planted, tmp_path, suffix):
    _, _, found = planted
    path = exclusions.write(tmp_path / f"list.{suffix}", found["excluded"])
    assert exclusions.read(path) == cf.EXPECTED


def test_exclusion_list_keys_ignore_how_the_folder_was_reached():
    assert exclusions.file_key("chest_xray/train/NORMAL/a.jpeg") == "train/NORMAL/a.jpeg"
    assert exclusions.file_key("/data/x/chest_xray/val/PNEUMONIA/b.jpeg") == "val/PNEUMONIA/b.jpeg"


def test_unreadable_exclusion_lists_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="data.exclude_list"):
        exclusions.read(tmp_path / "missing.json")
    (tmp_path / "other.json").write_text('{"excluded": []}')
    with pytest.raises(ValueError, match="other.json.*format"):
        exclusions.read(tmp_path / "other.json")
    (tmp_path / "bad.csv").write_text("path,why\na,b\n")
    with pytest.raises(ValueError, match="bad.csv.*file,reason"):
        exclusions.read(tmp_path / "bad.csv")


# ---------------------------------------------------------------- the builder honours it


@pytest.fixture(scope="module")
def cleaned(planted, tmp_path_factory):
    """`effnet-data clean` on the planted tree, then preparing with its list."""
    root, _, _ = planted
    out = tmp_path_factory.mktemp("clean")
    assert cli.main(["clean", "--data_dir", str(root), "--out", str(out), "--no_progress"]) == 0
    data_dir = tmp_path_factory.mktemp("tfds")
    factory = prepare.BuilderFactory(
        name="chest_xray", manual_dir=str(root), data_dir=str(data_dir), exclude_list=str(out / "exclusions.json")
    )
    prepare.ensure_prepared(factory)
    return out, factory, factory()  # a fresh builder reads the info back from disk


def test_clean_writes_the_list_the_csv_and_all_findings(cleaned):
    out, _, _ = cleaned
    assert exclusions.read(out / "exclusions.json") == cf.EXPECTED
    assert exclusions.read(out / "exclusions.csv") == cf.EXPECTED
    doc = json.loads((out / "exclusions.json").read_text())
    assert doc["counts_before"] == cf.COUNTS_BEFORE and doc["counts_after"] == cf.COUNTS_AFTER
    assert json.loads((out / "cleaning.json").read_text())["leakage"]["patients"][0]["patient"] == "person4"


def test_builder_leaves_out_the_listed_files_even_the_truncated_one(cleaned):
    _, _, builder = cleaned
    metas = prepare.read_part_metadata(builder)
    kept = {s: sorted(m.file_names) for s, m in metas.items()}
    assert kept["train"] == [
        "IM-0001-0001.jpeg",
        "IM-0002-0001.jpeg",
        "IM-0003-0001.jpeg",
        "person1_bacteria_1.jpeg",
        "person2_virus_3.jpeg",
    ]
    assert {s: len(v) for s, v in kept.items()} == {"train": 5, "val": 2, "test": 3}


def test_dataset_info_records_counts_before_and_after_and_the_list(cleaned):
    out, _, builder = cleaned
    meta = builder.info.metadata
    assert meta["counts_before_exclusion"] == cf.COUNTS_BEFORE
    assert meta["counts"] == cf.COUNTS_AFTER
    assert meta["num_excluded"] == 10 and meta["exclusions_not_found"] == []
    assert meta["exclude_list"] == str(out / "exclusions.json")
    assert "train/NORMAL/IM-0005-0001.jpeg: unreadable" in meta["excluded"]


def test_the_list_content_names_the_prepared_config(cleaned):
    _, _, builder = cleaned
    expected = "max512_excl" + exclusions.fingerprint(cf.EXPECTED)
    assert builder.builder_config.name == expected


def test_without_the_list_the_truncated_file_still_stops_preparation(planted, tmp_path):
    root, _, _ = planted
    with pytest.raises(imaging.BadImageError, match="IM-0005-0001.jpeg"):
        prepare.ensure_prepared(prepare.BuilderFactory(name="chest_xray", manual_dir=str(root), data_dir=str(tmp_path)))


def test_list_entries_that_match_no_file_are_recorded(planted, tmp_path):
    root, _, _ = planted
    listed = exclusions.write(
        tmp_path / "list.csv",
        [
            {"file": "train/NORMAL/IM-0005-0001.jpeg", "reason": "unreadable"},
            {"file": "train/NORMAL/IM-0004-0001.jpeg", "reason": "blank"},
            {"file": "train/NORMAL/IM-0006-0001.jpeg", "reason": "label_conflict"},
            {"file": "train/PNEUMONIA/person6_bacteria_7.jpeg", "reason": "label_conflict"},
            {"file": "train/NORMAL/gone.jpeg", "reason": "by hand"},
        ],
    )
    builder = prepare.ensure_prepared(
        prepare.BuilderFactory(
            name="chest_xray", manual_dir=str(root), data_dir=str(tmp_path / "tfds"), exclude_list=str(listed)
        )
    )
    assert builder.info.metadata["exclusions_not_found"] == ["train/NORMAL/gone.jpeg"]
    assert builder.info.metadata["counts"]["train"] == {"NORMAL": 5, "PNEUMONIA": 6}


def test_fail_on_leakage_sets_the_exit_status(planted, tmp_path):
    root, _, _ = planted
    argv = ["clean", "--data_dir", str(root), "--out", str(tmp_path), "--no_progress"]
    assert cli.main(argv + ["--fail_on_leakage"]) == cli.LEAKAGE_EXIT


def test_the_data_config_key_reaches_the_builder(planted, cleaned, tmp_path):
    from effnet_jax.data import pipeline  # pylint: disable=g-import-not-at-top
    from effnet_jax.train.config import default_data_config  # pylint: disable=g-import-not-at-top

    root, _, _ = planted
    out, _, _ = cleaned
    cfg = default_data_config()
    cfg.name, cfg.manual_dir, cfg.data_dir = "chest_xray", str(root), str(tmp_path)
    cfg.exclude_list = str(out / "exclusions.json")
    sizes = {s: pipeline.split_info(cfg, s)["num_examples"] for s in ("train", "validation", "test")}
    assert sizes["train"] + sizes["validation"] == 5 and sizes["test"] == 3
