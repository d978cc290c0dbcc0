"""Hostile inputs, round 11: a metric name, table cells, linked data folders, what soups and preparation write.

Each case failed before the fix it names: ``config.best_metric=nosuch`` trained until the first
evaluation and then failed with a KeyError; a ``\\r`` or escape code in a results record reached
the rendered Markdown table raw; a data folder behind a link was "no train/ folder"; a
PneumoniaMNIST npz and a prepared set's ``dataset_info.json`` were read through links out of
their folder (and the npz download's ``.partial`` written through one); a ``.lock`` link planted
in a workdir had its target truncated by effnet-train and effnet-soup, and effnet-data prepare
wrote the whole prepared set through a link planted in ``data.data_dir``.
"""

import json
import os
import urllib.request

import data_fixtures as fx
import pytest
from data_fixtures import GOOD_TREE, write_tree
from helpers import run_module

from effnet_jax.cli import data as data_cli
from effnet_jax.data import folders, kermany, prepare
from effnet_jax.data.builders import pneumonia_mnist
from effnet_jax.data.eda import scan
from effnet_jax.labels import CLASS_NAMES
from effnet_jax.output_files import UnsafeOutputError
from effnet_jax.reporting import results_tables as rt
from effnet_jax.reporting import run_summary
from effnet_jax.runs.lock import WorkdirLock
from effnet_jax.train.config import get_config, validate_config

VICTIM_TEXT = "not yours\n"


def _victim(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir(exist_ok=True)
    victim = outside / "victim.txt"
    victim.write_text(VICTIM_TEXT)
    return victim


# --- 1. a best_metric that evaluation never logs -------------------------------------------------


def test_an_unknown_best_metric_is_refused_before_training_naming_the_metrics_evaluation_logs(tmp_path):
    # Before: accepted, then a KeyError in the checkpointer's best_fn at the first evaluation.
    from effnet_jax.metrics.logged import metric_names

    workdir = tmp_path / "run"
    done = run_module(
        "effnet_jax.cli.train",
        "--config=configs/debug_synthetic.py",
        f"--workdir={workdir}",
        "--config.num_train_steps=2",
        "--config.image_size=32",
        "--config.best_metric=nosuch",
    )
    assert done.returncode == 2, done.stderr[-2000:]
    names = metric_names(CLASS_NAMES)
    assert {"auc", "loss", "sensitivity_threshold"} <= set(names)
    assert done.stderr.strip().splitlines()[-1] == (
        "effnet-train: config.best_metric='nosuch': not a metric this task's evaluation logs; "
        f"expected one of {', '.join(names)}"
    )
    assert "step 1/" not in done.stderr and not workdir.exists()


def test_metric_keys_are_checked_against_the_tasks_own_classes():
    config = get_config()
    config.data.class_names = ("A", "B", "C")
    config.best_metric = "auc_C"  # a per-class metric of this task
    validate_config(config)
    config.early_stopping.metric = "sensitivity_threshold"  # logged for two classes only
    with pytest.raises(
        ValueError, match=r"^config\.early_stopping\.metric='sensitivity_threshold': not a metric .*auc_A"
    ):
        validate_config(config)
    # A folder task's classes are read from its folder later (loop.resolve_data checks again then).
    config = get_config()
    config.data.name, config.best_metric = "folder", "auc_B"
    validate_config(config)


# --- 2. control characters in results-table cells ------------------------------------------------


def test_results_tables_escape_control_characters_in_every_cell():
    # Before: '\r', an escape code and a right-to-left override were written raw into the .md table.
    spec = {"source": "recipes", "columns": [{"header": "run", "cell": "{id}"}, {"header": "name", "cell": "{name}"}]}
    records = {"recipes": [{"id": "a\rb", "name": "x\x1b[31mred\u202e|y"}]}
    table = rt.render_table("t", spec, records)
    assert table.splitlines()[-1] == "| a\\rb | x\\x1b[31mred\\u202e\\|y |"
    assert "\r" not in table and "\x1b" not in table and "\u202e" not in table
    assert rt.markdown_table(["h\r"], [["a\nb"]]).splitlines() == ["| h\\r |", "|---|", "| a b |"]
    # effnet-results RUN's table cells, from a run's own files, the same way.
    assert run_summary._cell("split\x1b[2J\r\nx") == "split\\x1b[2J x"


# --- 3. a data folder behind a link ----------------------------------------------------------------


def test_a_data_folder_that_is_a_link_inside_the_folder_given_is_named_with_where_it_leads(tmp_path, capsys):
    # Before: "found no train/ folder", naming neither the link nor the policy on linked folders.
    real = write_tree(tmp_path / "real" / "chest_xray", GOOD_TREE)
    given = tmp_path / "given"
    given.mkdir()
    (given / "chest_xray").symlink_to(real)
    expected = (
        f"{given / 'chest_xray'}: a link to {real}, which holds a train/ folder; a symbolic link to a folder; "
        "links to folders are never walked into (not even with data.follow_links)"
    )
    with pytest.raises(kermany.LayoutError) as info:
        kermany.scan(given)
    assert str(info.value).startswith(expected)
    status = data_cli.main(["prepare", "--name=chest_xray", f"--manual_dir={given}", f"--data_dir={tmp_path / 'tfds'}"])
    assert status == 3
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("effnet-data prepare:")]
    assert len(err) == 1 and err[0].startswith(f"effnet-data prepare: {expected}")
    assert not (tmp_path / "tfds" / "chest_xray").exists()
    assert kermany.scan(given / "chest_xray").files["train"]  # the link named itself is read as named


def test_a_folder_tasks_train_link_that_leads_nowhere_is_named(tmp_path):
    (tmp_path / "task").mkdir()
    (tmp_path / "task" / "train").symlink_to(tmp_path / "gone")
    with pytest.raises(
        ValueError, match=r"no train/ folder \(.*/task/train is a link to .*/gone, which is no folder\)"
    ):
        folders.class_names({"manual_dir": str(tmp_path / "task")})


# --- 4. the PneumoniaMNIST npz and dataset_info.json: links out of their folder ------------------


def _mnist(raw, tmp_path, follow_links=False):
    factory = prepare.BuilderFactory(
        name="pneumonia_mnist",
        manual_dir=str(raw),
        data_dir=str(tmp_path / "tfds"),
        mnist_size=28,
        follow_links=follow_links,
    )
    return prepare.ensure_prepared(factory)


def test_a_pneumoniamnist_npz_linked_out_of_manual_dir_is_refused_unless_follow_links(tmp_path):
    # Before: read wherever the link led (a file found in the folder, not one the user named).
    outside = tmp_path / "elsewhere" / "pneumoniamnist.npz"
    fx.write_mnist_npz(outside)
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "pneumoniamnist.npz").symlink_to(outside)
    with pytest.raises(ValueError) as info:
        _mnist(raw, tmp_path)
    assert str(info.value) == (
        f"{raw / 'pneumoniamnist.npz'}: a link to {outside}, outside the folder {raw} it was found in; not read "
        f"(set data.follow_links=True (effnet-data: --follow_links) to follow links wherever they point)"
    )
    builder = _mnist(raw, tmp_path, follow_links=True)
    assert builder.info.splits["train"].num_examples == 12


@pytest.mark.parametrize("plant", ["symlink", "hardlink", "fifo"])
def test_the_pneumoniamnist_download_is_never_written_through_a_planted_partial_file(tmp_path, monkeypatch, plant):
    # Before: open(partial, "wb") truncated and overwrote the link's target (or a hard link's other name).
    victim = _victim(tmp_path)
    folder = tmp_path / "downloads"
    folder.mkdir()
    partial = folder / "pneumoniamnist.partial"
    {"symlink": lambda: partial.symlink_to(victim), "hardlink": lambda: os.link(victim, partial)}.get(
        plant, lambda: os.mkfifo(partial)
    )()
    fetched = []
    monkeypatch.setattr(urllib.request, "urlopen", lambda *a, **k: fetched.append(a) or pytest.fail("fetched"))
    with pytest.raises(UnsafeOutputError, match=f"^{partial}: "):
        pneumonia_mnist._download(28, folder)
    assert victim.read_text() == VICTIM_TEXT and os.path.lexists(partial) and not fetched


def test_a_prepared_sets_dataset_info_linked_out_of_the_data_dir_is_refused_unless_follow_links(tmp_path, capsys):
    # Before: read through the link, whole and unbounded (a link to /dev/zero never returned).
    outside = tmp_path / "elsewhere" / "dataset_info.json"
    outside.parent.mkdir()
    outside.write_text(json.dumps({"name": "chest_xray"}))
    data_dir = tmp_path / "data"
    (data_dir / "chest_xray").mkdir(parents=True)
    (data_dir / "chest_xray" / "dataset_info.json").symlink_to(outside)
    found = data_dir / "chest_xray" / "dataset_info.json"
    with pytest.raises(
        ValueError, match=f"^{found}: a link to {outside}, outside the folder {data_dir} it was found in"
    ):
        scan.find_prepared(data_dir)
    assert scan.find_prepared(data_dir, follow_links=True) == data_dir / "chest_xray"
    status = data_cli.main(["report", f"--data_dir={data_dir}", f"--out={tmp_path / 'out'}", "--no_progress"])
    assert status == 2
    assert capsys.readouterr().err.strip().startswith(f"effnet-data: {found}: a link to {outside}")


def test_a_dataset_info_that_is_not_json_is_named(tmp_path):
    (tmp_path / "v").mkdir()
    (tmp_path / "v" / "dataset_info.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"v/dataset_info\.json: not valid JSON"):
        scan.find_prepared(tmp_path)


# --- 5. what effnet-soup, effnet-train and effnet-data prepare write -------------------------------


def _plant(path, kind, victim):
    if kind == "symlink":
        path.symlink_to(victim)
    elif kind == "dangling":
        path.symlink_to(victim.parent / "new")
    elif kind == "hardlink":
        os.link(victim, path)
    else:
        os.mkfifo(path)


@pytest.mark.parametrize("kind", ["symlink", "hardlink", "fifo"])
def test_a_workdir_lock_is_never_taken_through_a_planted_link_or_fifo(tmp_path, kind):
    # Before: os.open(O_RDWR | O_CREAT) followed the link and ftruncate emptied its target.
    victim = _victim(tmp_path)
    workdir = tmp_path / "run"
    workdir.mkdir()
    _plant(workdir / ".lock", kind, victim)
    with pytest.raises(UnsafeOutputError, match=f"^{workdir / '.lock'}: "):
        WorkdirLock(str(workdir)).acquire()
    assert victim.read_text() == VICTIM_TEXT


@pytest.mark.parametrize(
    "name, kind",
    [
        (".lock", "symlink"),
        (".lock", "hardlink"),
        ("config.json", "symlink"),
        ("run.json", "fifo"),
        ("metrics.jsonl", "dangling"),
        ("soup.json", "dangling"),
        ("MODEL_CARD.md", "hardlink"),
        ("MODEL_CARD.md.tmp", "symlink"),
        ("checkpoints", "dangling"),
    ],
)
def test_a_soup_refuses_a_planted_name_in_its_workdir_before_any_work(tmp_path, name, kind):
    # Before: the .lock target was truncated at once; the others were refused only after the
    # evaluation (and the records after the checkpoint was written), a dangling checkpoints/ link
    # as "File exists".
    from effnet_jax.train.soup import SoupWorkdirError, make_soup

    victim = _victim(tmp_path)
    workdir = tmp_path / "soup"
    workdir.mkdir()
    _plant(workdir / name, kind, victim)
    members = [str(tmp_path / "a"), str(tmp_path / "b")]  # never read: the refusal comes first
    with pytest.raises(
        SoupWorkdirError, match=f"^--workdir={workdir / name}: (is a symbolic link|not a regular|has 2)"
    ):
        make_soup(members, str(workdir))
    assert victim.read_text() == VICTIM_TEXT
    assert sorted(p.name for p in workdir.iterdir()) == [name]


def test_effnet_soup_says_a_planted_lock_in_one_line(tmp_path):
    victim = _victim(tmp_path)
    workdir = tmp_path / "soup"
    workdir.mkdir()
    (workdir / ".lock").symlink_to(victim)
    done = run_module("effnet_jax.cli.soup", f"--workdir={workdir}", f"--members={tmp_path / 'a'},{tmp_path / 'b'}")
    assert done.returncode == 1, done.stderr[-2000:]
    assert done.stderr.strip().splitlines()[-1] == (
        f"effnet-soup: error: --workdir={workdir / '.lock'}: is a symbolic link; refusing to write through it"
    )
    assert victim.read_text() == VICTIM_TEXT


@pytest.mark.parametrize("planted", ["chest_xray", "chest_xray/max32", "chest_xray/.config"])
def test_effnet_data_prepare_never_writes_the_prepared_set_through_a_planted_folder_link(tmp_path, capsys, planted):
    # Before: a chest_xray/ link in --data_dir got the whole prepared set written where it led.
    root = write_tree(tmp_path / "data", GOOD_TREE)
    outside = tmp_path / "outside"
    outside.mkdir()
    data_dir = tmp_path / "tfds"
    (data_dir / planted).parent.mkdir(parents=True, exist_ok=True)
    (data_dir / planted).symlink_to(outside)
    status = data_cli.main(
        ["prepare", "--name=chest_xray", f"--manual_dir={root}", f"--data_dir={data_dir}", "--max_size=32"]
    )
    assert status == 4
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"effnet-data prepare: {data_dir / planted}: is a symbolic link to {outside}; refusing to prepare the data set "
        "through it (remove the link, or set data.data_dir to another folder)"
    )
    assert not list(outside.iterdir())


def test_pneumoniamnist_is_never_downloaded_through_a_planted_downloads_link(tmp_path, monkeypatch):
    outside = tmp_path / "outside"
    outside.mkdir()
    (tmp_path / "tfds").mkdir()
    (tmp_path / "tfds" / "downloads").symlink_to(outside)
    monkeypatch.setattr(urllib.request, "urlopen", lambda *a, **k: pytest.fail("fetched"))
    with pytest.raises(UnsafeOutputError, match=f"^{tmp_path / 'tfds' / 'downloads'}: is a symbolic link"):
        _mnist(tmp_path / "no_npz_here", tmp_path)
    assert not list(outside.iterdir())
