"""Hostile outputs and requests, round 13: results pages and records, and effnet-serve's query.

Each case failed before the fix it names: ``effnet-results tables`` read a .md page, a results
file or ``tables.json`` that was a link to a device without end (``/dev/zero``: read forever) and
of any size; a ``tables.json`` of another shape (a list, a number for ``source``) was a traceback,
and a cell template ``{x:>300000000}`` took 1.2 GB; ``tables --write`` truncated each page before
writing it, so a kill mid-write left a hand-written README cut short; ``effnet-results record``
glued its record to a last line saved without its newline (two records lost in one bad line);
``?gradcam=maybe`` was FastAPI's list of pydantic errors, not effnet-serve's one-line error; and
effnet-serve given a port in use or a host that resolves to nothing loaded the model and compiled
every batch size before uvicorn said so, without naming the flag. Nothing is trained; no model is loaded.
"""

import json
import os
import types

import pytest

from effnet_jax import output_files
from effnet_jax.reporting import results_tables as rt

WHAT_RAN = {"command": None, "config": None, "commit": None, "machine": None, "date": None}
STALE = "# Hand-written\n\nprose\n\n<!-- results:t -->\n| old |\n<!-- /results:t -->\n\nmore prose\n"


def _results(folder, spec=None, records=({"x": 1},)):
    folder.mkdir(exist_ok=True)
    (folder / "runs.jsonl").write_text("".join(json.dumps({**WHAT_RAN, **r}) + "\n" for r in records))
    spec = {"t": {"source": "runs", "columns": [{"header": "x", "cell": "{x}"}]}} if spec is None else spec
    (folder / "tables.json").write_text(json.dumps(spec))
    return folder


# --- effnet-results tables: what it reads -------------------------------------------------------


@pytest.mark.parametrize("where", ["page", "records", "specs"])
def test_tables_reads_no_page_or_record_that_is_a_device(tmp_path, where):
    # /dev/null stands for /dev/zero (read forever before the fix): both are devices, not files.
    results, root = _results(tmp_path / "results"), tmp_path / "root"
    root.mkdir()
    (root / "a.md").write_text(STALE)
    target = {"page": root / "b.md", "records": results / "more.jsonl", "specs": results / "tables.json"}[where]
    target.unlink(missing_ok=True)
    os.symlink(os.devnull, target)
    with pytest.raises(rt.ResultsError, match=f"{target.name}: not a regular file"):
        rt.update_files(root, results, write=True)
    assert (root / "a.md").read_text() == STALE


@pytest.mark.parametrize("where", ["page", "records"])
def test_tables_reads_pages_and_records_within_the_budget(tmp_path, monkeypatch, where):
    monkeypatch.setenv("EFFNET_JAX_DECODE_BUDGET", "1M")  # pages and records may then take 32 KiB
    results, root = _results(tmp_path / "results"), tmp_path / "root"
    root.mkdir()
    big = root / "big.md" if where == "page" else results / "big.jsonl"
    big.write_text("\n" * 40_000)
    with pytest.raises(rt.ResultsError, match="big.*40,000 bytes, larger than the 32,768"):
        rt.update_files(root, results, write=False)


@pytest.mark.parametrize(
    "spec, why",
    [
        ([1, 2], "expected a JSON object of tables, got list"),
        ({"t": {"source": 5, "columns": [{"header": "x", "cell": "{x}"}]}}, "'source' must be"),
        ({"t": {"source": "runs", "columns": [{"header": "x", "cell": 5}]}}, "'cell' must be a template"),
        ({"t": {"source": "runs", "where": 5, "columns": [{"header": "x", "cell": "{x}"}]}}, "'where' must be"),
        (
            {"t": {"source": "runs", "join": [{"source": "runs"}], "columns": [{"header": "x", "cell": "{x}"}]}},
            "'join'",
        ),
        ({"t": {"source": "runs", "columns": [{"header": "x", "cell": "{x:>300000000}"}]}}, "a width or precision"),
        ({"t": {"source": "runs", "columns": [{"header": "x", "cell": "{x:.99999999f}"}]}}, "a width or precision"),
        ({"t": {"source": "runs", "columns": [{"header": "x", "cell": ["{y}", "{x:{x}}"]}]}}, "inside a format spec"),
    ],
    ids=["list", "source-number", "cell-number", "where-number", "join-without-on", "width", "precision", "nested"],
)
def test_a_table_spec_of_another_shape_is_one_line_naming_it(tmp_path, spec, why):
    results = _results(tmp_path / "results", spec, records=({"x": 1000000000},))
    with pytest.raises(rt.ResultsError, match=why) as e:
        rt.render_all(results)
    assert "tables.json" in str(e.value) and "\n" not in str(e.value)


def test_the_shipped_table_specs_pass_the_checks():
    from helpers import REPO

    assert rt.load_specs(REPO / "results")


# --- effnet-results tables --write and record: what they write ----------------------------------


class _Killed(BaseException):
    """Stands for kill -9 arriving mid-write."""


def test_tables_write_killed_mid_write_leaves_the_page_whole(tmp_path, monkeypatch):
    results, root = _results(tmp_path / "results"), tmp_path / "root"
    root.mkdir()
    (root / "README.md").write_text(STALE)

    class Dying:
        def __init__(self, fd, mode, **kwargs):
            self.f = open(fd, mode, **kwargs)  # noqa: SIM115 (closed in __exit__)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def write(self, text):
            self.f.write(text[: len(text) // 2])
            self.f.flush()
            raise _Killed

    monkeypatch.setattr(output_files, "open", Dying, raising=False)
    with pytest.raises(_Killed):
        rt.update_files(root, results, write=True)
    assert (root / "README.md").read_text() == STALE
    monkeypatch.undo()
    rt.update_files(root, results, write=True)  # the next run replaces the half-written temporary file
    assert "| 1 |" in (root / "README.md").read_text() and "more prose" in (root / "README.md").read_text()
    assert not (root / "README.md.tmp").exists()


def test_tables_write_refuses_a_link_at_a_pages_temporary_name(tmp_path):
    results, root = _results(tmp_path / "results"), tmp_path / "root"
    root.mkdir()
    (root / "README.md").write_text(STALE)
    victim = tmp_path / "victim"
    victim.write_text("keep")
    os.symlink(victim, root / "README.md.tmp")
    with pytest.raises(rt.ResultsError, match=r"README.md.tmp: is a symbolic link"):
        rt.update_files(root, results, write=True)
    assert victim.read_text() == "keep" and (root / "README.md").read_text() == STALE


def test_a_record_appended_to_a_last_line_without_its_newline_starts_its_own_line(tmp_path):
    path = tmp_path / "runs.jsonl"
    path.write_text(json.dumps({**WHAT_RAN, "id": "r0"}))  # saved by an editor that adds no final newline
    rt.append_record(str(path), {**WHAT_RAN, "id": "r1"})
    assert [r["id"] for r in rt.load_records(tmp_path)["runs"]] == ["r0", "r1"]
    rt.append_record(str(path), {**WHAT_RAN, "id": "r2"})  # no blank line added when the newline is there
    assert path.read_text().count("\n") == 3


# --- effnet-serve: the query --------------------------------------------------------------------


@pytest.fixture
def client(tmp_path):
    return _client(tmp_path)


def _client(tmp_path, has_gradcam=True):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from effnet_jax.server import create_app

    # A stand-in for a loaded model: a query refused by FastAPI never reaches it (no start-up runs).
    (tmp_path / "model.json").write_text("{}")
    model = types.SimpleNamespace(
        directory=str(tmp_path),
        class_names=("NORMAL", "PNEUMONIA"),
        threshold=0.5,
        temperature=1.0,
        has_gradcam=has_gradcam,
        info={"threshold": {"rule": "training_prior"}},
    )
    return TestClient(create_app(model), raise_server_exceptions=False)


@pytest.mark.parametrize(
    "value, shown",
    [("maybe", "maybe"), ("", ""), ("%1b%5b31m" + "x" * 200, "?[31m" + "x" * 55)],
    ids=["word", "empty", "escape-code-and-long"],
)
def test_a_bad_query_value_is_one_error_line_naming_the_parameter(client, value, shown):
    answer = client.post(f"/v1/predict?gradcam={value}", content=b"", headers={"content-type": "multipart/form-data"})
    assert answer.status_code == 422
    assert answer.json() == {"error": f"gradcam={shown}: Input should be a valid boolean, unable to interpret input"}


def test_a_grad_cam_asked_of_a_model_without_one_names_no_server_path(tmp_path):
    # Before: "<the server's export folder>: exported without gradcam.stablehlo; export the run again".
    answer = _client(tmp_path, has_gradcam=False).post(
        "/v1/predict?gradcam=true", content=b"", headers={"content-type": "multipart/form-data"}
    )
    assert answer.status_code == 422
    assert answer.json() == {"error": "gradcam=true: this model was exported without Grad-CAM; ask for gradcam=false"}


# --- effnet-serve: where it listens --------------------------------------------------------------


@pytest.mark.parametrize("where", ["port-in-use", "no-such-host"])
def test_serve_refuses_an_address_it_cannot_listen_on_before_the_model_loads(monkeypatch, capsys, where):
    import socket

    from absl import flags

    from effnet_jax import serving
    from effnet_jax.cli import serve

    def load(*args, **kwargs):
        raise AssertionError("the model was loaded (and every batch size compiled) before the address was checked")

    monkeypatch.setattr(serving, "load", load)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        host = "127.0.0.1" if where == "port-in-use" else "256.0.0.1"
        serve.define_flags()
        flags.FLAGS(["effnet-serve", "--exported=/nonexistent/effnet-model", f"--host={host}", f"--port={port}"])
        try:
            status = serve.main(["effnet-serve"])
        finally:
            flags.FLAGS.unparse_flags()
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert status == 1
    assert err.startswith(f"effnet-serve: error: --host={host} --port={port}: cannot listen there ("), err


@pytest.mark.parametrize(
    "given, said",
    [
        (["--max_megapixels=0"], "--max_megapixels=0: expected at least 1"),
        (["--max_file_kib=0"], "--max_file_kib=0: expected at least 1"),
        (
            ["--max_file_kib=10000000"],
            "--max_receiving_mib=2048: expected at least one largest request "
            "(--max_files x --max_file_kib + 1 MiB = 156251 MiB)",
        ),
    ],
)
def test_a_limit_flag_in_other_units_is_refused_naming_the_flag(given, said):
    # Before: named by the server setting it becomes, in its units (max_pixels=0, max_receiving_bytes=2147483648).
    from absl import flags

    from effnet_jax.cli import serve

    own = flags.FlagValues()
    serve.define_flags(own)
    own(["effnet-serve", "--exported=x"])
    assert serve.limit_problem(own) is None  # the defaults
    own.unparse_flags()
    own(["effnet-serve", "--exported=x", *given])
    assert serve.limit_problem(own) == said
