"""effnet-predict's inputs: files, folders (searched recursively) and glob patterns -> image paths.

A named file is taken whatever its extension (the reader decides whether it is an image);
inside a folder only files with an image or DICOM extension are taken, hidden files and folders
are skipped, and symbolic links to folders are not followed (a link loop cannot hang it).
A file found in a folder or by a pattern (not named) that is a link leading outside that
folder (the pattern's folder: ``scans`` for ``scans/**/*.png``) is refused when read,
unless ``follow_links`` (``--follow_links``): a downloaded folder cannot make us read
``~/.ssh/id_rsa``.
"""

from __future__ import annotations

import fnmatch
import glob
import os
from collections.abc import Iterable, Sequence

from effnet_jax import limits

# DICOM files too: the reader takes them like any image (effnet_jax.data.dicom).
IMAGE_EXTENSIONS = frozenset({".jpeg", ".jpg", ".png", ".bmp", ".tif", ".tiff", ".gif", ".webp", ".dcm", ".dicom"})
# How a refused link out of a folder can be read anyway (limits.open_in_folder).
FOLLOW_LINKS_HINT = "pass --follow_links"


class InputNotFoundError(FileNotFoundError):
    """A path or pattern that names no file; the message names it."""


def _is_pattern(text: str) -> bool:
    return glob.has_magic(text)


def _pattern_root(pattern: str) -> str:
    """The folder a pattern searches: its parts before the first wildcard ('' for the current folder)."""
    parts = pattern.split(os.sep)
    first = next(i for i, part in enumerate(parts) if _is_pattern(part))
    return os.sep.join(parts[:first]) or (os.sep if pattern.startswith(os.sep) else "")


def glob_no_links(pattern: str) -> list[str]:
    """``glob.glob(pattern, recursive=True)``, except that ``**`` never descends into a linked folder.

    ``glob`` follows such links, so a link to a parent folder makes ``**`` loop until the
    paths grow too long; a ``**`` pattern is matched here against the paths of a walk that
    never enters a linked folder (``_walk``: no recursion, so a tree thousands of folders deep
    is searched, and each path is matched once whatever the number of ``**``). ``**`` matches
    zero or more folders; hidden names are left out, as ``glob`` leaves them out.
    """
    if "**" not in pattern:
        return glob.glob(pattern)  # no recursion: a link is followed once at most per component
    root = _pattern_root(pattern)
    parts = [part for part in pattern[len(root) :].split(os.sep) if part]
    # A linked folder is never a match either: expand_inputs would read the folder it leads to.
    return [
        os.path.join(root, *rel) if rel else (root or ".")
        for rel, is_dir in _walk(root or ".")
        if _matches(parts, rel, is_dir) and not (is_dir and rel and os.path.islink(os.path.join(root or ".", *rel)))
    ]


def _walk(top: str):
    """``(relative parts, is a folder)`` of ``top`` and of everything under it, folders before their contents.

    A folder at a time from a stack (``os.walk`` and pathlib recurse: a downloaded tree 1,200
    folders deep overflowed Python's stack); hidden names are left out, a link to a folder is
    listed but never entered, and a folder that cannot be listed is passed over, as ``os.walk``
    passes it over.
    """
    stack = [()]
    yield (), True
    while stack:
        rel = stack.pop()
        try:
            with os.scandir(os.path.join(top, *rel)) as found:
                entries = sorted((e for e in found if not e.name.startswith(".")), key=lambda e: e.name)
        except OSError:
            continue
        folders = []
        for entry in entries:
            try:
                is_dir = entry.is_dir()  # a link to a folder is one: listed, not entered
                walked = is_dir and not entry.is_symlink()
            except OSError:
                is_dir = walked = False
            yield (*rel, entry.name), is_dir
            if walked:
                folders.append((*rel, entry.name))
        stack.extend(reversed(folders))


def _matches(parts: list[str], rel: tuple, is_dir: bool) -> bool:
    """Whether the path ``rel`` matches the pattern ``parts``, ``**`` standing for zero or more folders."""

    def closure(states):
        out, todo = set(), list(states)
        while todo:
            i = todo.pop()
            if i not in out:
                out.add(i)
                if i < len(parts) and parts[i] == "**":
                    todo.append(i + 1)
        return out

    states = closure({0})
    for k, name in enumerate(rel):
        folder = k < len(rel) - 1 or is_dir
        step = set()
        for i in states:
            if i == len(parts):
                continue
            if parts[i] == "**":
                if folder:
                    step.add(i)
            elif fnmatch.fnmatchcase(name, parts[i]):
                step.add(i + 1)
        states = closure(step)
        if not states:
            return False
    return len(parts) in states


def images_in_folder(folder: str, follow_links: bool = False, within: str | None = None) -> list[str]:
    """Image files under ``folder``, recursively, in sorted order (a folder's files, then its folders').

    Unless ``follow_links``, each is a ``limits.FoundInFolder``: read only where it lies inside
    ``within`` (default ``folder``), so a link out of it is refused when read.
    """
    # _walk's order is os.walk's: a folder's files (sorted), then its sub-folders', depth first.
    return [
        _found(os.path.join(folder, *rel), within or folder, follow_links)
        for rel, is_dir in _walk(folder)
        if rel and not is_dir and os.path.splitext(rel[-1])[1].lower() in IMAGE_EXTENSIONS
    ]


def _found(path: str, folder: str, follow_links: bool) -> str:
    """``path``, found in ``folder``: bounded by it unless links may lead anywhere."""
    return path if follow_links else limits.FoundInFolder(path, folder, FOLLOW_LINKS_HINT)


def expand_inputs(items: Sequence[str], follow_links: bool = False) -> list[str]:
    """Image paths for ``items`` (files, folders, glob patterns such as ``scans/**/*.png``), in order, each once.

    A named file is read as named; a file found in a folder or by a pattern is bounded by that
    folder (the pattern's, for what it matches) unless ``follow_links`` (``images_in_folder``).
    Raises ``InputNotFoundError`` naming the first item that does not exist or matches
    nothing, before any image is scored.
    """
    paths: list[str] = []
    for item in items:
        searched = None  # the folder a pattern searched; None: the item was named
        if os.path.lexists(item):
            matches: Iterable[str] = [item]
        elif _is_pattern(item):
            matches = sorted(glob_no_links(item))
            searched = _pattern_root(item) or "."
            if not matches:
                raise InputNotFoundError(f"{item}: the pattern matches no file")
        else:
            raise InputNotFoundError(f"{item}: no such file or folder")
        for match in matches:
            if os.path.isdir(match):
                paths.extend(images_in_folder(match, follow_links, searched))
            elif searched is None:
                paths.append(match)  # FIFOs and devices too: the reader refuses them with a message
            else:
                paths.append(_found(match, searched, follow_links))
    seen: set[str] = set()
    return [p for p in paths if not (p in seen or seen.add(p))]
