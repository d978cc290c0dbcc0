"""Hostile inputs, round 13: what the earlier rounds left named but open.

A data set zip listing a member twice (the weights reader alone refused it before).
"""

import warnings
import zipfile

import pytest
from data_fixtures import GOOD_TREE, jpeg, write_tree, zip_tree

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
