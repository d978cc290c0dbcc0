"""Links to files in image folders are read only when they lead inside the folder (docs/untrusted-inputs.md).

A downloaded folder holding ``train/NORMAL/x.png -> /home/user/private.png`` used to be read
(and a real image there copied into the prepared data set). Each reader that walks a
folder is checked here: a link to another file inside is read; a link to a real image
outside is refused naming the link (or skipped and listed with ``data.on_bad_image=skip``);
``data.follow_links=True`` / ``--follow_links`` reads it. Nothing is trained or compiled.
"""

import os

import data_fixtures as fx
import ml_collections
import pytest
from absl import flags
from helpers import tiny_config

from effnet_jax import limits
from effnet_jax.data import external, folders, imaging, kermany, prepare
from effnet_jax.train import config as config_lib

OUTSIDE_MESSAGE = "outside the folder"


@pytest.fixture
def private_image(tmp_path):
    """A real PNG outside every folder the tests walk: what a planted link points at."""
    path = tmp_path / "home" / "private.png"
    path.parent.mkdir()
    path.write_bytes(fx.encode(fx.xray(99), "PNG"))
    return path


def _link(link, target):
    os.symlink(target, link)
    return str(link)


# --- data preparation: chest_xray folder -------------------------------------------------------------


@pytest.fixture
def linked_chest_xray(tmp_path, private_image):
    """GOOD_TREE plus a link to a sibling file (inside) and a link to ``private_image`` (outside)."""
    root = fx.write_tree(tmp_path / "chest_xray", fx.GOOD_TREE)
    _link(root / "train/NORMAL/IM-0500-0001.jpeg", "IM-0001-0001.jpeg")
    _link(root / "train/NORMAL/IM-0600-0001.png", private_image)
    return root


def _prepare(raw, data_dir, name="chest_xray", **kw):
    return prepare.ensure_prepared(
        prepare.BuilderFactory(name=name, manual_dir=str(raw), data_dir=str(data_dir), max_size=36, **kw)
    )


def test_layout_reads_a_link_inside_and_refuses_one_outside_naming_it(linked_chest_xray):
    layout = kermany.scan(linked_chest_xray)
    assert (
        layout.read("train/NORMAL/IM-0500-0001.jpeg")
        == (linked_chest_xray / "train/NORMAL/IM-0001-0001.jpeg").read_bytes()
    )
    with pytest.raises(imaging.BadImageError) as e:
        layout.read("train/NORMAL/IM-0600-0001.png")
    message = str(e.value)
    assert message.startswith(f"{linked_chest_xray}/train/NORMAL/IM-0600-0001.png: a link to ")
    assert OUTSIDE_MESSAGE in message and "data.follow_links=True" in message
    assert layout.links_outside() == ["train/NORMAL/IM-0600-0001.png"]
    followed = kermany.scan(linked_chest_xray, follow_links=True)
    assert followed.read("train/NORMAL/IM-0600-0001.png").startswith(b"\x89PNG")


def test_preparing_refuses_a_link_out_names_it_skips_it_or_follows_it_when_asked(linked_chest_xray, tmp_path):
    good = sum(fx.GOOD_COUNTS["train"])
    with pytest.raises(imaging.BadImageError, match=r"IM-0600-0001.png: a link to .*private.png, outside the folder"):
        _prepare(linked_chest_xray, tmp_path / "error")
    skipped = _prepare(linked_chest_xray, tmp_path / "skip", on_bad_image="skip")
    assert skipped.info.splits["train"].num_examples == good + 1  # the link inside is read
    (reason,) = skipped.info.metadata["skipped"]
    assert "IM-0600-0001.png: a link to" in reason and OUTSIDE_MESSAGE in reason
    followed = _prepare(linked_chest_xray, tmp_path / "follow", follow_links=True)
    assert followed.info.splits["train"].num_examples == good + 2
    assert followed.info.metadata["follow_links"] is True


def test_a_set_prepared_from_links_out_says_how_to_use_it_again(linked_chest_xray, tmp_path):
    _prepare(linked_chest_xray, tmp_path / "tfds", follow_links=True)
    with pytest.raises(prepare.StalePreparedDataError, match=r"1 of its files are links leading outside the folder"):
        _prepare(linked_chest_xray, tmp_path / "tfds")
    _prepare(linked_chest_xray, tmp_path / "tfds", follow_links=True)  # as prepared: reused


def test_a_zip_found_in_the_folder_that_links_out_is_refused(tmp_path):
    elsewhere = fx.zip_tree(fx.write_tree(tmp_path / "tree", fx.GOOD_TREE), tmp_path / "elsewhere.zip")
    (tmp_path / "download").mkdir()
    _link(tmp_path / "download" / "data.zip", elsewhere)
    with pytest.raises(kermany.LayoutError, match=r"data.zip: a link to .*elsewhere.zip, outside the folder"):
        kermany.scan(tmp_path / "download")
    assert kermany.scan(tmp_path / "download", follow_links=True).zip_path == str(tmp_path / "download" / "data.zip")


# --- data preparation: a folder task --------------------------------------------------------------


@pytest.fixture
def linked_task(tmp_path, private_image):
    root = tmp_path / "task"
    for cls in ("CAT", "DOG"):
        (root / "train" / cls).mkdir(parents=True)
        for i in range(3):
            (root / "train" / cls / f"{cls.lower()}{i}.png").write_bytes(fx.encode(fx.xray(i + 10 * len(cls)), "PNG"))
    _link(root / "train/CAT/inside.png", "cat0.png")
    _link(root / "train/DOG/outside.png", private_image)
    return root


def test_a_folder_task_reads_links_inside_only_unless_asked(linked_task, tmp_path):
    layout = folders.scan({"manual_dir": str(linked_task)})
    assert layout.read("train/CAT/inside.png") == (linked_task / "train/CAT/cat0.png").read_bytes()
    with pytest.raises(imaging.BadImageError, match=r"train/DOG/outside.png: a link to .*private.png, outside"):
        layout.read("train/DOG/outside.png")
    assert folders.scan({"manual_dir": str(linked_task), "follow_links": True}).read("train/DOG/outside.png")
    skipped = _prepare(linked_task, tmp_path / "skip", name="folder", on_bad_image="skip")
    assert skipped.info.splits["train"].num_examples == 7
    assert [s for s in skipped.info.metadata["skipped"] if "outside.png: a link to" in s]
    followed = _prepare(linked_task, tmp_path / "follow", name="folder", follow_links=True)
    assert followed.info.splits["train"].num_examples == 8


# --- external folders ------------------------------------------------------------------------------


@pytest.fixture
def linked_external(tmp_path, private_image):
    files = {f"NORMAL/n{i}.jpeg": fx.jpeg(100 + i) for i in range(2)}
    files.update({f"PNEUMONIA/p{i}.jpeg": fx.jpeg(150 + i) for i in range(2)})
    ext = fx.write_tree(tmp_path / "ext", files)
    _link(ext / "NORMAL/n_inside.jpeg", "n0.jpeg")
    _link(ext / "PNEUMONIA/p_outside.png", private_image)
    return ext


def _external_config(tmp_path, ext, **keys):
    c = config_lib.default_data_config()
    c.name = "chest_xray"
    c.manual_dir = str(fx.write_tree(tmp_path / "chest_xray", fx.GOOD_TREE))
    c.data_dir = str(tmp_path / "tfds")
    c.external = (str(ext),)
    for key, value in keys.items():
        c[key] = value
    return c


def test_an_external_folder_refuses_skips_or_follows_a_link_out(linked_external, tmp_path):
    c = _external_config(tmp_path, linked_external)
    with pytest.raises(external.ExternalDataError, match=r"p_outside.png: a link to .*private.png, outside the folder"):
        external.scan(c, "external")
    c.on_bad_image = "skip"
    meta, _ = external.scan(c, "external")
    assert "NORMAL/n_inside.jpeg" in meta.file_names and "PNEUMONIA/p_outside.png" not in meta.file_names
    c.follow_links = True
    meta, paths = external.scan(c, "external")
    assert "PNEUMONIA/p_outside.png" in meta.file_names
    reader = external.reader(c, "external")
    assert reader.folder is None and reader.read_image(0, meta.file_names.index("PNEUMONIA/p_outside.png"))


def test_an_external_link_turned_outward_after_the_scan_is_not_read(linked_external, tmp_path, private_image):
    c = _external_config(tmp_path, linked_external, on_bad_image="skip")
    meta, _ = external.scan(c, "external")
    reader = external.reader(c, "external")
    index = meta.file_names.index("NORMAL/n_inside.jpeg")
    assert reader.read_image(0, index) == (linked_external / "NORMAL/n0.jpeg").read_bytes()
    os.remove(linked_external / "NORMAL/n_inside.jpeg")
    _link(linked_external / "NORMAL/n_inside.jpeg", private_image)
    with pytest.raises(external.ExternalDataError, match=r"n_inside.jpeg: a link to .*private.png, outside"):
        reader.read_image(0, index)


# --- effnet-predict and effnet-adapt: folders and patterns -----------------------------------------


@pytest.fixture
def scans(tmp_path, private_image):
    folder = tmp_path / "scans"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.png").write_bytes(fx.encode(fx.xray(1), "PNG"))
    (folder / "sub" / "b.png").write_bytes(fx.encode(fx.xray(2), "PNG"))
    _link(folder / "inside.png", "a.png")
    _link(folder / "outside.png", private_image)
    return folder


def _preprocess():
    from effnet_jax.inference.prediction import Preprocessor

    return Preprocessor(image_size=16, mean=(0.5,) * 3, std=(0.25,) * 3, max_size=32)


def _read_all(paths):
    """{file name: None when read, else the error} through effnet-predict's reader."""
    from effnet_jax.inference.prediction import ImageReadError

    pre, out = _preprocess(), {}
    for path in paths:
        try:
            pre(path)
            out[os.path.basename(path)] = None
        except ImageReadError as e:
            out[os.path.basename(path)] = str(e)
    return out


@pytest.mark.parametrize("pattern", [False, True], ids=["folder", "glob"])
def test_predict_refuses_a_link_out_found_in_a_folder_or_by_a_pattern(scans, pattern):
    from effnet_jax.inference.inputs import expand_inputs

    item = f"{scans}/*.png" if pattern else str(scans)
    read = _read_all(expand_inputs([item]))
    assert read["a.png"] is None and read["inside.png"] is None
    assert read["outside.png"].startswith(f"{scans}/outside.png: a link to ")
    assert OUTSIDE_MESSAGE in read["outside.png"] and "pass --follow_links" in read["outside.png"]
    assert set(_read_all(expand_inputs([item], follow_links=True)).values()) == {None}


def test_predict_reads_a_link_named_on_the_command_line_as_named(scans):
    from effnet_jax.inference.inputs import expand_inputs

    assert _read_all(expand_inputs([str(scans / "outside.png")])) == {"outside.png": None}


def test_a_pattern_through_a_linked_folder_stays_inside_the_folder_it_searches(tmp_path, private_image):
    from effnet_jax.inference.inputs import expand_inputs

    (tmp_path / "scans").mkdir()
    _link(tmp_path / "scans" / "elsewhere", private_image.parent)
    read = _read_all(expand_inputs([f"{tmp_path}/scans/*/*.png"]))
    assert OUTSIDE_MESSAGE in read["private.png"]
    assert _read_all(expand_inputs([f"{tmp_path}/scans/elsewhere/*.png"])) == {"private.png": None}  # named


def test_the_exported_models_reader_refuses_a_link_out_too(scans):
    from effnet_jax.inference.inputs import expand_inputs
    from effnet_jax.serving.model import ImageInputError, read_image

    outside = [p for p in expand_inputs([str(scans)]) if p.endswith("outside.png")]
    with pytest.raises(ImageInputError, match=r"outside.png: a link to .*private.png, outside the folder"):
        read_image(outside[0])


def test_effnet_predict_passes_follow_links_to_the_folder_walk(scans, monkeypatch):
    from effnet_jax.cli import predict as predict_cli
    from effnet_jax.serving.model import ImageInputError, read_image

    def walked(*args):
        fv = flags.FlagValues()
        predict_cli.define_flags(fv)
        fv(["effnet-predict", "--exported=unused", *args, str(scans)])
        monkeypatch.setattr(predict_cli, "FLAGS", fv)
        seen = {}
        monkeypatch.setattr(predict_cli, "_main_exported", lambda paths: seen.setdefault("paths", paths) and 0)
        predict_cli.main(["effnet-predict", str(scans)])
        return next(p for p in seen["paths"] if p.endswith("outside.png"))

    with pytest.raises(ImageInputError, match="pass --follow_links"):
        read_image(walked())
    assert read_image(walked("--follow_links")).startswith(b"\x89PNG")


def test_adapt_skips_a_link_out_unless_asked(scans):
    from effnet_jax.inference.adaptation import read_site_images

    site = read_site_images(str(scans), _preprocess())
    assert sorted(site.files) == ["a.png", "inside.png", "sub/b.png"]
    (skipped,) = site.skipped
    assert skipped.startswith(f"{scans}/outside.png: a link to ") and "pass --follow_links" in skipped
    followed = read_site_images(str(scans), _preprocess(), follow_links=True)
    assert "outside.png" in followed.files and not followed.skipped


def test_effnet_adapt_passes_follow_links(scans, tmp_path, monkeypatch):
    from effnet_jax.cli import adapt as adapt_cli
    from effnet_jax.inference import adaptation

    seen = {}

    def fake_adapt_run(*args, **kwargs):
        seen.update(kwargs)
        raise adaptation.AdaptError("stop here")

    monkeypatch.setattr(adaptation, "adapt_run", fake_adapt_run)
    for args, expected in (([], False), (["--follow_links"], True)):
        fv = flags.FlagValues()
        adapt_cli.define_flags(fv)
        fv(["effnet-adapt", "--workdir=run", f"--images={scans}", f"--out={tmp_path / 'new'}", *args])
        monkeypatch.setattr(adapt_cli, "FLAGS", fv)
        assert adapt_cli.main(["effnet-adapt"]) == 1
        assert seen["follow_links"] is expected


# --- effnet-data report / clean ---------------------------------------------------------------------


def test_eda_scan_lists_a_link_out_as_unreadable_unless_asked(linked_chest_xray, tmp_path):
    from effnet_jax.data.eda import scan

    errors = {i.key: i.error for i in scan.scan_raw(linked_chest_xray, progress=False).images}
    assert errors["train/NORMAL/IM-0500-0001.jpeg"] is None
    assert "IM-0600-0001.png: a link to" in errors["train/NORMAL/IM-0600-0001.png"]
    assert OUTSIDE_MESSAGE in errors["train/NORMAL/IM-0600-0001.png"]
    followed = scan.scan_raw(linked_chest_xray, progress=False, follow_links=True)
    assert all(i.error is None for i in followed.images)


def test_effnet_data_clean_takes_follow_links(linked_chest_xray, tmp_path):
    import json

    from effnet_jax.cli import data as data_cli

    def unreadable(*args):
        out = tmp_path / f"clean{len(args)}"
        assert data_cli.main(["clean", f"--data_dir={linked_chest_xray}", f"--out={out}", "--no_progress", *args]) == 0
        excluded = json.loads((out / "cleaning.json").read_text())["excluded"]
        return {e["file"] for e in excluded if e["reason"] == "unreadable"}

    assert unreadable() == {"train/NORMAL/IM-0600-0001.png"}
    assert unreadable("--follow_links") == set()


# --- the shared check ---------------------------------------------------------------------------------


def test_a_folder_on_the_way_that_links_out_is_outside(tmp_path, private_image):
    (tmp_path / "data").mkdir()
    _link(tmp_path / "data" / "sub", private_image.parent)
    with pytest.raises(limits.LinkOutsideError, match="sub/private.png: a link to .*private.png"):
        limits.open_in_folder(tmp_path / "data" / "sub" / "private.png", tmp_path / "data", "say so")


def test_a_file_that_turns_out_to_be_elsewhere_once_open_is_refused(tmp_path, private_image, monkeypatch):
    # The swap between the check and the open, simulated: /proc says the open file lies outside.
    (tmp_path / "data").mkdir()
    inside = tmp_path / "data" / "x.png"
    inside.write_bytes(b"x")
    with limits.open_in_folder(inside, tmp_path / "data", "say so") as f:
        assert f.read() == b"x"
    monkeypatch.setattr(limits, "_opened_path", lambda fd: str(private_image))
    with pytest.raises(limits.LinkOutsideError, match=f"x.png: a link to {private_image}"):
        limits.open_in_folder(inside, tmp_path / "data", "say so")


def test_loops_and_dangling_links_keep_their_errors(tmp_path):
    (tmp_path / "data").mkdir()
    _link(tmp_path / "data" / "loop.png", "loop.png")
    _link(tmp_path / "data" / "gone.png", tmp_path / "nowhere.png")
    for name in ("loop.png", "gone.png"):
        with pytest.raises(OSError):
            limits.open_in_folder(tmp_path / "data" / name, tmp_path / "data", "say so")


# --- the config key -----------------------------------------------------------------------------------


def test_data_follow_links_defaults_to_false_and_must_be_a_bool():
    config = tiny_config()
    assert config.data.follow_links is False
    config_lib.validate_config(config)
    data = config.data.to_dict()
    data["follow_links"] = "yes"
    config.data = ml_collections.ConfigDict(data)
    with pytest.raises(ValueError, match=r"config.data.follow_links='yes': expected True or False"):
        config_lib.validate_config(config)
