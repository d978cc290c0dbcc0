"""effnet-data report: every number on a planted tree, from a folder, a zip and prepared data."""

import json

import cleaning_fixtures as cf
import data_fixtures as fx
import pytest
from PIL import Image

from effnet_jax.cli import data as cli
from effnet_jax.data import exclusions, prepare

FIGURES = ["class_balance.png", "sizes.png", "intensity.png", "samples.png"]


def _report(data_dir, out, *extra):
    assert (
        cli.main(["report", "--data_dir", str(data_dir), "--out", str(out), "--no_progress", "--samples", "2", *extra])
        == 0
    )
    return json.loads((out / "report.json").read_text())


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    return cf.write(tmp_path_factory.mktemp("raw") / "chest_xray")


@pytest.fixture(scope="module")
def rep(raw, tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    return out, _report(raw, out)


def test_counts_patients_and_pathogens_per_split_and_class(rep):
    _, r = rep
    train = r["splits"]["train"]["classes"]
    assert list(r["splits"]) == ["train", "val", "test"]
    assert (train["NORMAL"]["images"], train["NORMAL"]["patients"]) == (8, 7)
    assert (train["PNEUMONIA"]["images"], train["PNEUMONIA"]["patients"]) == (7, 6)
    assert train["PNEUMONIA"]["pathogens"] == {"bacteria": 5, "virus": 2}
    assert train["NORMAL"]["pathogens"] == {"none": 8}
    assert train["NORMAL"]["images_per_patient_histogram"] == {"1": 6, "2": 1}
    assert train["NORMAL"]["images_per_patient"]["max"] == 2
    assert r["splits"]["test"]["classes"]["PNEUMONIA"]["images"] == 2


def test_imbalance_and_balanced_class_weights(rep):
    _, r = rep
    train = r["splits"]["train"]
    assert train["imbalance"] == {"majority": "NORMAL", "ratio": round(8 / 7, 4)}
    assert train["class_weights"] == {"NORMAL": round(15 / 16, 6), "PNEUMONIA": round(15 / 14, 6)}
    # After cleaning train keeps 3 NORMAL and 2 PNEUMONIA: 5 / (2 * n).
    assert r["cleaning"]["class_weights_train_after"] == {"NORMAL": round(5 / 6, 6), "PNEUMONIA": 1.25}


def test_image_properties_modes_depths_sizes(rep):
    _, r = rep
    p = r["image_properties"]
    assert (p["readable"], p["unreadable"], p["size_kind"]) == (19, 1, "original")
    assert p["modes"] == {"L": 19} and p["bit_depths"] == {"8": 19}
    assert p["formats"] == {"JPEG": 18, "PNG": 1}
    assert (p["width"]["min"], p["width"]["max"], p["height"]["min"]) == (80, 240, 72)
    assert p["distinct_sizes"] == 3  # 96x96, the 80x80 near copy, the 240x72 strip
    hist = p["intensity_histograms"]
    assert sorted(hist) == ["NORMAL", "PNEUMONIA"] and len(hist["NORMAL"]) == 256
    assert abs(sum(hist["NORMAL"]) - 1) < 1e-4


def test_report_carries_the_cleaning_findings_and_counts(rep):
    _, r = rep
    cl = r["cleaning"]
    assert {e["file"]: e["reason"] for e in cl["excluded"]} == cf.EXPECTED
    assert cl["counts_before"] == cf.COUNTS_BEFORE and cl["counts_after"] == cf.COUNTS_AFTER


def test_figures_are_written_as_png(rep):
    out, r = rep
    assert r["figures"] == FIGURES
    for name in FIGURES:
        with Image.open(out / name) as im:
            assert im.format == "PNG" and min(im.size) >= 200, name


def test_summary_names_counts_weights_and_leakage(raw, tmp_path, capsys):
    _report(raw, tmp_path)
    text = capsys.readouterr().out
    assert "train NORMAL 8 (7 patients)  PNEUMONIA 7 (6 patients; bacteria 5, virus 2)" in text
    assert "imbalance 1.14:1" in text
    assert "LEAKAGE" in text and "patient person4" in text


def test_report_from_the_zip_matches_the_folder(raw, rep, tmp_path):
    _, folder = rep
    z = _report(fx.zip_tree(raw, tmp_path / "chest-xray.zip"), tmp_path / "out")
    assert z["splits"] == folder["splits"]
    assert z["cleaning"]["excluded"] != [] and (
        [(e["file"], e["reason"]) for e in z["cleaning"]["excluded"]]
        == [(e["file"], e["reason"]) for e in folder["cleaning"]["excluded"]]
    )


def test_report_with_a_given_list_counts_what_remains(raw, tmp_path):
    listed = exclusions.write(
        tmp_path / "list.csv",
        [
            {"file": "train/NORMAL/IM-0005-0001.jpeg", "reason": "unreadable"},
            {"file": "train/NORMAL/nothere.jpeg", "reason": "by hand"},
        ],
    )
    r = _report(raw, tmp_path / "out", "--exclude_list", str(listed))
    ex = r["exclusion_list"]
    assert ex["num_entries"] == 2 and ex["not_found"] == ["train/NORMAL/nothere.jpeg"]
    assert ex["counts_after"]["train"] == {"NORMAL": 7, "PNEUMONIA": 7}


def test_report_on_a_prepared_data_set_uses_its_recorded_counts(raw, tmp_path):
    listed = exclusions.write(tmp_path / "list.json", [{"file": k, "reason": v} for k, v in cf.EXPECTED.items()])
    data_dir = tmp_path / "tfds"
    prepare.ensure_prepared(
        prepare.BuilderFactory(name="chest_xray", manual_dir=str(raw), data_dir=str(data_dir), exclude_list=str(listed))
    )
    r = _report(data_dir, tmp_path / "out")
    assert r["kind"] == "prepared" and r["image_properties"]["size_kind"] == "stored"
    assert r["prepared"]["counts_before_exclusion"] == cf.COUNTS_BEFORE
    assert r["prepared"]["counts_stored"] == cf.COUNTS_AFTER
    assert r["prepared"]["num_excluded"] == 10
    # The stored records are what cleaning kept, so scanning them finds nothing more.
    assert r["cleaning"]["excluded"] == []


def test_a_missing_data_dir_names_the_flag(tmp_path, capsys):
    assert cli.main(["report", "--data_dir", str(tmp_path / "nowhere"), "--out", str(tmp_path)]) == 2
    assert f"--data_dir {tmp_path / 'nowhere'}: does not exist" in capsys.readouterr().err


def test_a_folder_without_the_layout_is_an_error_naming_it(tmp_path, capsys):
    (tmp_path / "photos").mkdir()
    assert cli.main(["clean", "--data_dir", str(tmp_path / "photos"), "--out", str(tmp_path)]) == 2
    assert f"{tmp_path / 'photos'}: found no train/ folder" in capsys.readouterr().err


# ---------------------------------------------------------------- the shared Kermany data


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    if not fx.SHARED_CHEST_XRAY.is_dir():
        pytest.skip(f"{fx.SHARED_CHEST_XRAY} not present")
    out = tmp_path_factory.mktemp("shared_report")
    return _report(fx.SHARED_CHEST_XRAY, out)  # about 15 s


def test_shared_data_report_has_the_known_counts(shared):
    s = shared["splits"]
    assert [s["train"]["classes"][c]["images"] for c in ("NORMAL", "PNEUMONIA")] == [1341, 3875]
    assert [s["val"]["classes"][c]["images"] for c in ("NORMAL", "PNEUMONIA")] == [8, 8]
    assert s["train"]["classes"]["PNEUMONIA"]["pathogens"] == {"bacteria": 2530, "virus": 1345}
    assert s["train"]["classes"]["PNEUMONIA"]["patients"] == 1635
    assert s["train"]["classes"]["PNEUMONIA"]["patients_with_both_pathogens"] == 808
    assert s["train"]["class_weights"] == {"NORMAL": round(5216 / 2682, 6), "PNEUMONIA": round(5216 / 7750, 6)}
    assert shared["image_properties"]["modes"] == {"RGB": 5232}  # the shared copies are RGB JPEGs


def test_shared_data_has_24_groups_of_exact_duplicates_and_no_leakage(shared):
    cl = shared["cleaning"]
    assert cl["by_reason"] == {"exact_duplicate": 26}
    groups = cl["duplicate_groups"]
    assert len(groups) == 24 and {g["kind"] for g in groups} == {"exact"}
    assert all(len(g["patients"]) == 1 for g in groups)  # every copy is the same child's file
    assert cl["counts_after"] == {"train": {"NORMAL": 1340, "PNEUMONIA": 3850}, "val": {"NORMAL": 8, "PNEUMONIA": 8}}
    assert cl["leakage"] == {"images": [], "patients": []}


def test_black_border_fraction_per_class(tmp_path):
    import numpy as np  # pylint: disable=g-import-not-at-top

    bordered = np.full((40, 40), 128, np.uint8)
    bordered[:, :10] = 0  # a quarter of the film is black border
    plain = np.full((40, 40), 128, np.uint8)
    png = lambda a, seed: fx.encode(Image.fromarray((a + (a > 0) * seed).astype(np.uint8)), "PNG")
    root = fx.write_tree(
        tmp_path / "raw",
        {
            "train/NORMAL/IM-0001-0001.png": png(bordered, 1),
            "train/NORMAL/IM-0002-0001.png": png(bordered, 2),
            "train/PNEUMONIA/person1_virus_1.png": png(plain, 3),
        },
    )
    per_class = _report(root, tmp_path / "out")["image_properties"]["per_class"]
    assert per_class["NORMAL"]["black_fraction"] == 0.25
    assert per_class["PNEUMONIA"]["black_fraction"] == 0.0


def test_patients_with_bacteria_and_virus_files_are_counted(tmp_path):
    root = fx.write_tree(
        tmp_path / "raw",
        {
            "train/NORMAL/IM-0001-0001.jpeg": cf.jpeg(cf.smooth(1)),
            "train/PNEUMONIA/person1_bacteria_1.jpeg": cf.jpeg(cf.smooth(2)),
            "train/PNEUMONIA/person1_virus_2.jpeg": cf.jpeg(cf.smooth(3)),
            "train/PNEUMONIA/person2_virus_3.jpeg": cf.jpeg(cf.smooth(4)),
        },
    )
    pneumonia = _report(root, tmp_path / "out")["splits"]["train"]["classes"]["PNEUMONIA"]
    assert pneumonia["patients_with_both_pathogens"] == 1
    assert (pneumonia["patients"], pneumonia["pathogens"]) == (2, {"bacteria": 1, "virus": 2})
