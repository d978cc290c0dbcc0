"""Every fenced ```python block in README.md and docs/ runs as written, on tiny inputs.

Each block runs alone in a fresh namespace (so it defines every name it uses), from a
working directory that holds what the README's commands would have made: ``runs/debug``,
a small run (export_fixtures.make_workdir: random Lite0 weights at 32 px; nothing is trained). The serving block needs
an exported model; tests/test_export.py exports one and runs that block (asserted below).
"""

import contextlib
import io
import os
import re

import pytest
from export_fixtures import make_workdir
from helpers import REPO
from test_export import _readme_blocks

from effnet_jax.weights import pypi

PAGES = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def _blocks():
    for page in PAGES:
        for i, code in enumerate(BLOCK.findall(page.read_text())):
            yield pytest.param(code, id=f"{page.relative_to(REPO)}:{i}")


def _blocks_run_here():
    return [b for b in _blocks() if not _run_elsewhere(b.values[0])]


def _run_elsewhere(code: str) -> bool:
    """The README's serving block: tests/test_export.py::test_the_readme_commands_run runs it on an export."""
    return 'effnet_jax.serving.load("exported/pneumonia")' in code


@pytest.fixture(scope="module")
def cwd(tmp_path_factory):
    root = tmp_path_factory.mktemp("docs")
    (root / "runs" / "debug").mkdir(parents=True)
    make_workdir(root / "runs" / "debug")
    return root


def test_there_are_blocks_to_run():
    names = [p.id for p in _blocks()]
    assert any(n.startswith("README.md") for n in names) and any(n.startswith("docs") for n in names)


def test_the_serving_block_is_the_one_test_export_runs():
    blocks = [b.values[0] for b in _blocks() if _run_elsewhere(b.values[0])]
    assert blocks == [_readme_blocks()[1]]


@pytest.mark.parametrize("code", _blocks_run_here())
def test_block_runs_as_written(code, cwd, monkeypatch):
    monkeypatch.chdir(cwd)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, "<doc block>", "exec"), {"__name__": "__doc_block__"})
    assert out.getvalue(), "a documented block should show its result"


def test_pretrained_names_in_the_docs_are_installed_sources():
    for page in PAGES:
        for name in re.findall(r'pretrained="(pypi:[^"]+)"', page.read_text()):
            assert pypi.is_pypi_name(name) and pypi.variant_for(name), f"{page.name}: {name}"
    assert os.path.isdir(REPO / "docs")
