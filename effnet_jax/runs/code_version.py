"""Which code a run trained with, for its results records: the package's git commit.

A record written later names the commit that trained the run, not whatever the checkout
holds by then. ``+dirty`` marks a working tree with uncommitted changes to tracked files
(what ran is then not exactly that commit); an installed package that is not a git
checkout names its version instead.
"""

from __future__ import annotations

import functools
import pathlib
import subprocess

import effnet_jax

_PACKAGE_DIR = pathlib.Path(effnet_jax.__file__).resolve().parent


def _git(args: list[str], where: pathlib.Path) -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(where), *args], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def head_commit(where: str | pathlib.Path) -> str | None:
    """The short HEAD commit of the git checkout holding ``where``; None outside one."""
    return _git(["rev-parse", "--short", "HEAD"], pathlib.Path(where))


def git_commit(where: str | pathlib.Path) -> str | None:
    """The short commit of the git checkout tracking ``where``, ``+dirty`` when its tracked files differ; else None."""
    where = pathlib.Path(where)
    commit = head_commit(where)
    # A package installed into some other checkout (a virtualenv inside a user's project) is
    # not that checkout's code: its files must be tracked there.
    if not commit or not _git(["ls-files", "--", "."], where):
        return None
    # Only the package's own files count: a run's outputs or notes beside it are not code.
    changed = _git(["status", "--porcelain", "--untracked-files=no", "--", "."], where)
    return f"{commit}+dirty" if changed else commit


@functools.cache
def describe() -> str:
    """The code this process runs: the package checkout's commit, else ``effnet_jax <version>``.

    Asked once per process: a checkout that moves on while a long run trains (a second
    member, a resumed phase) does not change the code already imported.
    """
    return git_commit(_PACKAGE_DIR) or f"effnet_jax {effnet_jax.__version__}"
