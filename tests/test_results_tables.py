"""Tables in .md files are rendered from the records in results/; a stale or hand-edited table fails here."""

import json
import subprocess
import sys

import pytest
from helpers import REPO

from effnet_jax.reporting import recipe_record
from effnet_jax.reporting import results_tables as rt

RESULTS = REPO / "results"


def test_every_rendered_table_in_the_repository_matches_its_records():
    stale = rt.update_files(REPO, RESULTS, write=False)
    assert stale == [], "run `effnet-results tables --write`: " + ", ".join(f"{s.path}:{s.table}" for s in stale)


def test_every_table_is_shown_somewhere_and_every_record_file_has_what_ran():
    shown = set()
    for path in rt.markdown_files(REPO):
        shown |= {m.group("name") for m in rt._REGION.finditer(path.read_text())}
    assert shown == set(rt.load_specs(RESULTS))
    records = rt.load_records(RESULTS)  # raises on a record without command, config, commit, machine, date
    assert {"recipes", "published", "hidden_half", "sweep", "benchmarks_cpu", "benchmarks_gpu"} <= set(records)
    for source, rows in records.items():  # a config or a join names a record by its id
        ids = [r["id"] for r in rows if "id" in r]
        assert len(ids) == len(set(ids)), (
            f"results/{source}.jsonl: ids used twice: {sorted({i for i in ids if ids.count(i) > 1})}"
        )


def test_readme_table_has_the_shipped_config_beside_the_published_anchors_and_the_hidden_half():
    table = rt.render_all(RESULTS)["readme"]
    rows = table.splitlines()[2:]
    assert rows[0].startswith("| Jahan et al. 2021") and rows[1].startswith("| Kermany et al. 2018")
    judged = next(r for r in rows if r.startswith("| `configs/pneumonia.py` as trained at 81ee090"))
    hidden = json.loads((RESULTS / "hidden_half.jsonl").read_text().splitlines()[0])["hidden"]
    assert f"{hidden['accuracy']:.3f} / {hidden['auc']:.3f} / {hidden['sensitivity']:.3f}" in judged
    # The shipped recipe (another training set since then) has not been judged on the hidden half.
    shipped = [r for r in rows if r.startswith("| `configs/pneumonia.py` (shipped)")]
    assert len(shipped) == 2  # the README command's run and the mean of three pairs of seeds
    assert not any(f"{hidden['accuracy']:.3f} / {hidden['auc']:.3f}" in r for r in shipped)


def test_a_join_matches_the_rows_field_to_the_named_field_of_the_other_source(tmp_path):
    results = _tiny_results(
        tmp_path,
        [{**WHAT_RAN, "tables": ["t"], "id": "a"}, {**WHAT_RAN, "tables": ["t"], "id": "b"}],
        [{"header": "run", "cell": "{id}"}, {"header": "judged", "cell": "{j[score]}"}],
    )
    (results / "judged.jsonl").write_text(json.dumps({**WHAT_RAN, "of": "b", "score": 7}) + "\n")
    spec = json.loads((results / "tables.json").read_text())
    spec["t"]["join"] = [{"source": "judged", "on": "id", "to": "of", "as": "j"}]
    (results / "tables.json").write_text(json.dumps(spec))
    assert rt.render_all(results)["t"] == "| run | judged |\n|---|---|\n| a |  |\n| b | 7 |"


def _tiny_results(tmp_path, rows, columns):
    results = tmp_path / "results"
    results.mkdir()
    (results / "runs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    spec = {"t": {"source": "runs", "where": {"tables": "t"}, "columns": columns}}
    (results / "tables.json").write_text(json.dumps(spec))
    return results


WHAT_RAN = {"command": "c", "config": None, "commit": "abc", "machine": "m", "date": "d"}


def test_cells_take_the_first_template_the_record_can_fill_and_rows_follow_the_where(tmp_path):
    rows = [
        {**WHAT_RAN, "tables": ["t"], "name": "a|b", "m": {"auc": 0.97812, "ci": [0.96, 0.99]}},
        {**WHAT_RAN, "tables": ["t"], "name": "b", "m": {"auc": 0.5}},
        {**WHAT_RAN, "tables": ["other"], "name": "c", "m": {"auc": 0.1}},
    ]
    columns = [
        {"header": "run", "cell": "{name}"},
        {"header": "AUC", "cell": ["{m[auc]:.3f} [{m[ci][0]:.2f}, {m[ci][1]:.2f}]", "{m[auc]:.3f}"]},
        {"header": "F1", "cell": "{m[f1]:.3f}"},
    ]
    results = _tiny_results(tmp_path, rows, columns)
    assert rt.render_all(results)["t"] == (
        "| run | AUC | F1 |\n|---|---|---|\n| a\\|b | 0.978 [0.96, 0.99] |  |\n| b | 0.500 |  |"
    )


def test_write_rewrites_only_the_marked_region_and_check_then_passes(tmp_path):
    results = _tiny_results(tmp_path, [{**WHAT_RAN, "tables": ["t"], "x": 1}], [{"header": "x", "cell": "{x}"}])
    page = tmp_path / "page.md"
    page.write_text("intro `<!-- results:t -->` quoted\n<!-- results:t -->\n| old |\n<!-- /results:t -->\nend\n")
    assert [s.table for s in rt.update_files(tmp_path, results, write=False)] == ["t"]
    assert "| old |" in page.read_text()
    rt.update_files(tmp_path, results, write=True)
    assert page.read_text() == (
        "intro `<!-- results:t -->` quoted\n<!-- results:t -->\n| x |\n|---|\n| 1 |\n<!-- /results:t -->\nend\n"
    )
    assert rt.update_files(tmp_path, results, write=False) == []


@pytest.mark.parametrize(
    "line, message",
    [
        ("{not json", "runs.jsonl:1: not a JSON object"),
        ('{"command": "c"}', "runs.jsonl:1: missing config, commit, machine, date"),
    ],
)
def test_a_bad_record_is_one_line_naming_the_file_and_line(tmp_path, line, message):
    results = tmp_path / "results"
    results.mkdir()
    (results / "runs.jsonl").write_text(line + "\n")
    with pytest.raises(rt.ResultsError, match=message):
        rt.load_records(results)


def test_a_region_without_its_end_or_naming_no_table_is_refused(tmp_path):
    results = _tiny_results(tmp_path, [{**WHAT_RAN, "tables": ["t"], "x": 1}], [{"header": "x", "cell": "{x}"}])
    with pytest.raises(rt.ResultsError, match="no <!-- /results:t -->"):
        rt.rewrite_regions("<!-- results:t -->\n| x |\n", rt.render_all(results), "page.md")
    with pytest.raises(rt.ResultsError, match="page.md: region results:u names no table"):
        rt.rewrite_regions("<!-- results:u -->\n<!-- /results:u -->\n", rt.render_all(results), "page.md")


def test_the_cli_check_fails_on_a_stale_table_and_write_fixes_it(tmp_path):
    results = _tiny_results(tmp_path, [{**WHAT_RAN, "tables": ["t"], "x": 2}], [{"header": "x", "cell": "{x}"}])
    page = tmp_path / "page.md"
    page.write_text("<!-- results:t -->\n<!-- /results:t -->\n")
    cmd = [sys.executable, "-m", "effnet_jax.cli.results", "tables", f"--results_dir={results}", f"--root={tmp_path}"]
    env = {"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "JAX_PLATFORMS": "cpu"}
    check = subprocess.run([*cmd, "--check"], capture_output=True, text=True, env=env)
    assert check.returncode == 1 and f"stale: {page} results:t" in check.stderr
    write = subprocess.run([*cmd, "--write"], capture_output=True, text=True, env=env)
    assert write.returncode == 0 and "| 2 |" in page.read_text()
    assert subprocess.run([*cmd, "--check"], env=env).returncode == 0


@pytest.mark.parametrize(
    "name, short",
    [
        ("tf_efficientnet_lite0", "Lite0"),
        ("tf_efficientnet_b2", "B2"),
        ("efficientnet_b7", "B7"),
        ("my_resnet", "my_resnet"),
    ],
)
def test_records_name_variants_as_the_tables_do(name, short):
    assert recipe_record.short_model_name(name) == short


def test_record_tables_take_repeats_and_commas_and_refuse_a_table_that_would_not_show_the_row(tmp_path):
    from effnet_jax.cli.results import _tables

    specs = {
        "tried": {"source": "recipes", "where": {"tables": "tried"}, "columns": [{"header": "h", "cell": "{id}"}]},
        "shipped": {
            "source": ["published", "recipes"],
            "where": {"tables": "shipped"},
            "columns": [{"header": "h", "cell": "{id}"}],
        },
        "gpu": {"source": "benchmarks_gpu", "where": {"tables": "gpu"}, "columns": [{"header": "h", "cell": "{id}"}]},
    }
    (tmp_path / "tables.json").write_text(json.dumps(specs))
    out = str(tmp_path / "recipes.jsonl")
    assert _tables(["shipped", "tried"], out) == ("shipped", "tried")
    assert _tables(["shipped,tried", "tried"], out) == ("shipped", "tried")
    with pytest.raises(
        ValueError, match=r"--tables=shiped: no such table of .*recipes.jsonl.*expected some of tried, shipped"
    ):
        _tables(["shiped"], out)
    with pytest.raises(ValueError, match="--tables=gpu: no such table"):  # renders another results file
        _tables(["tried,gpu"], out)
    # A results file of the user's own, with no tables.json beside it: any name goes.
    assert _tables(["mine"], str(tmp_path / "elsewhere" / "mine.jsonl")) == ("mine",)
