"""The code a run records: a git checkout's commit, +dirty for changed tracked files, None outside git."""

import shutil
import subprocess

import pytest

from effnet_jax.runs import code_version

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="needs git")


def _git(repo, *args):
    return subprocess.run(
        ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t", *args],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()


def test_commit_then_dirty_for_tracked_changes_only(tmp_path):
    repo = tmp_path / "checkout"
    package = repo / "pkg"
    package.mkdir(parents=True)
    (package / "mod.py").write_text("x = 1\n")
    _git(repo, "init", "-q")
    _git(repo, "add", ".")
    _git(repo, "commit", "-q", "-m", "one")
    head = _git(repo, "rev-parse", "--short", "HEAD")

    assert code_version.git_commit(package) == head
    # A new file (a run's output, a note) is not a change to the code.
    (package / "notes.txt").write_text("scratch\n")
    assert code_version.git_commit(package) == head
    # Outside the package folder nothing counts either.
    (repo / "README").write_text("later\n")
    _git(repo, "add", "README")
    assert code_version.git_commit(package) == head
    (package / "mod.py").write_text("x = 2\n")
    assert code_version.git_commit(package) == f"{head}+dirty"


def test_outside_a_checkout_is_none_and_describe_falls_back_to_the_version(tmp_path, monkeypatch):
    assert code_version.git_commit(tmp_path) is None
    # Inside another project's checkout (a virtualenv there) but not tracked by it: not its code.
    repo = tmp_path / "project"
    (repo / "venv" / "pkg").mkdir(parents=True)
    (repo / "main.py").write_text("")
    _git(repo, "init", "-q")
    _git(repo, "add", "main.py")
    _git(repo, "commit", "-q", "-m", "one")
    (repo / "venv" / "pkg" / "mod.py").write_text("")
    assert code_version.git_commit(repo / "venv" / "pkg") is None
    assert code_version.git_commit(repo) == _git(repo, "rev-parse", "--short", "HEAD")
    monkeypatch.setattr(code_version, "_PACKAGE_DIR", tmp_path)
    code_version.describe.cache_clear()
    try:
        assert code_version.describe() == f"effnet_jax {code_version.effnet_jax.__version__}"
        # Once per process: a checkout that appears (or moves on) later does not change it.
        monkeypatch.setattr(code_version, "_PACKAGE_DIR", repo)
        assert code_version.describe() == f"effnet_jax {code_version.effnet_jax.__version__}"
    finally:
        code_version.describe.cache_clear()
