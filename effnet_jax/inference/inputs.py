"""effnet-predict's inputs: files, folders (searched recursively) and glob patterns -> image paths.

A named file is taken whatever its extension (the reader decides whether it is an image);
inside a folder only files with an image extension are taken, hidden files and folders
are skipped, and symbolic links to folders are not followed (a link loop cannot hang it).
A file found in a folder or by a pattern (not named) that is a link leading outside that
folder (the pattern's folder: ``scans`` for ``scans/**/*.png``) is refused when read,
unless ``follow_links`` (``--follow_links``): a downloaded folder cannot make us read
``~/.ssh/id_rsa``.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from effnet_jax import limits

IMAGE_EXTENSIONS = frozenset({".jpeg", ".jpg", ".png", ".bmp", ".tif", ".tiff", ".gif", ".webp"})
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
    paths grow too long; pathlib's ``**`` does not follow them. Hidden names are left out,
    as ``glob`` leaves them out.
    """
    if "**" not in pattern:
        return glob.glob(pattern)  # no recursion: a link is followed once at most per component
    root = _pattern_root(pattern)
    rest = pattern[len(root) :].lstrip(os.sep)
    found = []
    for path in Path(root or ".").glob(rest):
        rel = path.relative_to(root or ".")
        if not rel.parts:
            found.append(root or ".")  # '**' matches the folder itself
        elif not any(name.startswith(".") for name in rel.parts):
            found.append(os.path.join(root, *rel.parts))
    return found


def images_in_folder(folder: str, follow_links: bool = False, within: str | None = None) -> list[str]:
    """Image files under ``folder``, recursively, in sorted order.

    Unless ``follow_links``, each is a ``limits.FoundInFolder``: read only where it lies inside
    ``within`` (default ``folder``), so a link out of it is refused when read.
    """
    found = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS:
                found.append(_found(os.path.join(root, name), within or folder, follow_links))
    return found


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
