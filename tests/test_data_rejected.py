"""effnet-data rejected: the training images every run rejects, as an exclusion list the builder reads."""

import csv
import json

import pytest

from effnet_jax.cli import data as data_cli
from effnet_jax.data import exclusions

FILES = {  # name: (label, probability of PNEUMONIA in run A, in run B)
    "IM-1.jpeg": (0, 0.97, 0.98),  # NORMAL called PNEUMONIA by both: rejected
    "IM-2.jpeg": (0, 0.95, 0.50),  # one run unsure: kept
    "IM-3.jpeg": (0, 0.01, 0.02),  # agreed: kept
    "person1_virus_1.jpeg": (1, 0.02, 0.05),  # PNEUMONIA called NORMAL by both: rejected
    "person2_bacteria_2.jpeg": (1, 0.09, 0.10),  # B gives its label exactly 0.10: kept
    "person3_bacteria_3.jpeg": (1, 0.99, 0.98),
}


def _report(folder, column, rows=None):
    folder.mkdir(parents=True)
    rows = rows or [(name, label, probs[column]) for name, (label, *probs) in FILES.items()]
    with open(folder / "predictions.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["index", "file", "label", "prob_pneumonia", "prob_uncalibrated"])
        for i, (name, label, p) in enumerate(rows):
            w.writerow([i, name, label, p, p])
    return str(folder)


@pytest.fixture
def layout(tmp_path):
    raw = tmp_path / "chest_xray"
    for name, (label, *_) in FILES.items():
        folder = raw / "train" / ("PNEUMONIA" if label else "NORMAL")
        folder.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(b"x")
    return raw, _report(tmp_path / "a", 0), _report(tmp_path / "b", 1)


def test_lists_exactly_the_images_every_run_rejects_in_the_builders_format(layout, tmp_path, capsys):
    raw, a, b = layout
    out = tmp_path / "out"
    argv = ["rejected", f"--data_dir={raw}", f"--reports={a},{b}", f"--out={out}"]
    assert data_cli.main(argv) == 0
    assert exclusions.read(out / "exclusions.json") == {
        "train/NORMAL/IM-1.jpeg": "label_rejected",
        "train/PNEUMONIA/person1_virus_1.jpeg": "label_rejected",
    }
    assert exclusions.read(out / "exclusions.csv") == exclusions.read(out / "exclusions.json")
    doc = json.loads((out / "exclusions.json").read_text())
    assert doc["max_prob"] == 0.1 and doc["runs"] == 2
    assert doc["excluded"][0]["detail"] == "probability of its label: 0.030, 0.020"
    assert "2 of 6 training images rejected by all 2 run(s) (NORMAL 1, PNEUMONIA 1)" in capsys.readouterr().out
    # One run alone rejects more; a stricter bound fewer.
    assert data_cli.main(["rejected", f"--data_dir={raw}", f"--reports={a}", f"--out={out}"]) == 0
    assert len(exclusions.read(out / "exclusions.json")) == 4
    assert data_cli.main([*argv, "--max_prob=0.04"]) == 0
    assert list(exclusions.read(out / "exclusions.json")) == ["train/NORMAL/IM-1.jpeg"]


@pytest.mark.parametrize(
    "rows, message",
    [
        ([("../../etc/passwd", 0, 0.9)], "is not a plain file name"),
        ([("IM-1.jpeg", 0, 1.5)], "expected 0 or 1 / [0, 1]"),
        ([("IM-1.jpeg", 2, 0.5)], "expected 0 or 1 / [0, 1]"),
        ([("IM-1.jpeg", 0, "nan")], "expected 0 or 1 / [0, 1]"),
        ([("IM-1.jpeg", 0, "x")], "row 1: label '0' / prob 'x'"),
        ([("IM-1.jpeg", 0, 0.9), ("IM-1.jpeg", 0, 0.9)], "IM-1.jpeg appears twice"),
        ([("IM-1.jpeg", 1, 0.0)], "the reports give it different labels"),
    ],
)
def test_bad_reports_are_refused_naming_the_file_and_nothing_is_written(layout, tmp_path, capsys, rows, message):
    raw, a, _ = layout
    bad = _report(tmp_path / "bad", 0, rows)
    out = tmp_path / "out"
    assert data_cli.main(["rejected", f"--data_dir={raw}", f"--reports={a},{bad}", f"--out={out}"]) == 2
    err = capsys.readouterr().err
    assert message in err
    assert not out.exists()


def test_a_listed_image_missing_from_the_data_is_an_error(layout, tmp_path, capsys):
    raw, _, _ = layout
    other = _report(tmp_path / "other", 0, [("IM-9.jpeg", 0, 0.99)])
    assert data_cli.main(["rejected", f"--data_dir={raw}", f"--reports={other}", f"--out={tmp_path / 'out'}"]) == 2
    assert "IM-9.jpeg: not in" in capsys.readouterr().err


def test_missing_reports_layout_and_bound_are_clear_errors(layout, tmp_path, capsys):
    raw, a, _ = layout
    out = tmp_path / "out"
    cases = [
        ([f"--data_dir={raw}", f"--reports={tmp_path / 'none'}"], "predictions.csv: no such file"),
        ([f"--data_dir={raw}"], "--reports: expected at least one"),
        ([f"--data_dir={raw}", f"--reports={a}", "--max_prob=0.7"], "--max_prob=0.7: expected a probability"),
        ([f"--data_dir={tmp_path / 'a'}", f"--reports={a}"], "expected NORMAL and PNEUMONIA folders"),
    ]
    for flags, message in cases:
        assert data_cli.main(["rejected", *flags, f"--out={out}"]) == 2, flags
        assert message in capsys.readouterr().err
    assert not out.exists()


def test_the_packaged_list_is_installed_and_names_real_training_images():
    import data_fixtures as fx

    path = exclusions.packaged("chest_xray_rejected")
    listed = exclusions.read(path)
    assert exclusions.read("packaged:chest_xray_rejected") == listed  # the form configs use
    assert len(listed) == 54 and set(listed.values()) == {"label_rejected"}
    assert all(key.startswith(("train/NORMAL/", "train/PNEUMONIA/")) for key in listed)
    if fx.SHARED_CHEST_XRAY.is_dir():  # every entry names a file of the real data (CI has it)
        assert all((fx.SHARED_CHEST_XRAY / key).is_file() for key in listed)


@pytest.mark.parametrize("name", ["no_such_list", "../lists/chest_xray_rejected", ""])
def test_unknown_or_path_like_packaged_names_are_refused(name):
    with pytest.raises((FileNotFoundError, ValueError), match=repr(name)):
        exclusions.packaged(name)
    with pytest.raises((FileNotFoundError, ValueError), match=repr(name)):
        exclusions.read(f"packaged:{name}")
