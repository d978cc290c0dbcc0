"""Hostile inputs, round 13: what the earlier rounds left named but open.

A data set zip listing a member twice (the weights reader alone refused it before); a downloaded
run's machine or code line of megabytes copied into a results record.
"""

import warnings
import zipfile

import pytest
from data_fixtures import GOOD_TREE, jpeg, write_tree, zip_tree
from helpers import hand_made_run

from effnet_jax.cli import results as results_cli
from effnet_jax.data import kermany


def test_a_data_set_zip_listing_an_image_twice_is_refused_naming_it(tmp_path):
    # Before: both entries were scanned, and zipfile read the last one for each: one X-ray counted
    # twice, the other never read (an unzip tool keeps one or the other).
    folder = write_tree(tmp_path / "tree", GOOD_TREE)
    twice = "chest_xray/train/NORMAL/IM-0001-0001.jpeg"
    path = zip_tree(folder, tmp_path / "chest_xray.zip")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # zipfile: "Duplicate name"
        with zipfile.ZipFile(path, "a") as zf:
            zf.writestr(twice, jpeg(99))
    with pytest.raises(
        kermany.LayoutError,
        match=f"^{path}: the zip lists '{twice}' twice; which of them a data set zip means is unknown",
    ):
        kermany.scan(path)


@pytest.mark.parametrize("key, flag", [("machine", "--machine"), ("code", "--commit")])
def test_a_run_line_of_megabytes_is_not_copied_into_a_results_record(tmp_path, key, flag):
    # Before: effnet-results record copied a downloaded run's 'machine' or 'code' of any length
    # into the record, and every table rendered from it.
    line = {"step": 3, "split": "run", "machine": "cpu", "code": "abc1234", key: "x" * 5_000_000}
    run = hand_made_run(tmp_path, {}, metrics=[{"step": 1, "split": "run", key: "short"}, line])
    with pytest.raises(ValueError) as e:
        results_cli._last_run_line(run, key)
    assert str(e.value) == (
        f"{tmp_path}/metrics.jsonl: the run's {key} is 5,000,000 characters, more than the 300 a trainer "
        f"writes; say which with {flag}"
    )
    assert results_cli._last_run_line(hand_made_run(tmp_path, {}, metrics=[line | {key: "y" * 300}]), key) == "y" * 300
