"""effnet-predict's inputs: files, folders (searched recursively) and glob patterns -> image paths.

A named file is taken whatever its extension (the reader decides whether it is an image);
inside a folder only files with an image extension are taken, hidden files and folders
are skipped, and symbolic links to folders are not followed (a link loop cannot hang it).
"""

from __future__ import annotations

import glob
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

IMAGE_EXTENSIONS = frozenset({".jpeg", ".jpg", ".png", ".bmp", ".tif", ".tiff", ".gif", ".webp"})


class InputNotFoundError(FileNotFoundError):
    """A path or pattern that names no file; the message names it."""


def _is_pattern(text: str) -> bool:
    return glob.has_magic(text)


def glob_no_links(pattern: str) -> list[str]:
    """``glob.glob(pattern, recursive=True)``, except that ``**`` never descends into a linked folder.

    ``glob`` follows such links, so a link to a parent folder makes ``**`` loop until the
    paths grow too long; pathlib's ``**`` does not follow them. Hidden names are left out,
    as ``glob`` leaves them out.
    """
    if "**" not in pattern:
        return glob.glob(pattern)  # no recursion: a link is followed once at most per component
    parts = pattern.split(os.sep)
    first = next(i for i, part in enumerate(parts) if _is_pattern(part))
    root = os.sep.join(parts[:first]) or (os.sep if pattern.startswith(os.sep) else "")
    found = []
    for path in Path(root or ".").glob("/".join(parts[first:])):
        rel = path.relative_to(root or ".")
        if not rel.parts:
            found.append(root or ".")  # '**' matches the folder itself
        elif not any(name.startswith(".") for name in rel.parts):
            found.append(os.path.join(root, *rel.parts))
    return found


def images_in_folder(folder: str) -> list[str]:
    """Image files under ``folder``, recursively, in sorted order."""
    found = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS:
                found.append(os.path.join(root, name))
    return found


def expand_inputs(items: Sequence[str]) -> list[str]:
    """Image paths for ``items`` (files, folders, glob patterns such as ``scans/**/*.png``), in order, each once.

    Raises ``InputNotFoundError`` naming the first item that does not exist or matches
    nothing, before any image is scored.
    """
    paths: list[str] = []
    for item in items:
        if os.path.lexists(item):
            matches: Iterable[str] = [item]
        elif _is_pattern(item):
            matches = sorted(glob_no_links(item))
            if not matches:
                raise InputNotFoundError(f"{item}: the pattern matches no file")
        else:
            raise InputNotFoundError(f"{item}: no such file or folder")
        for match in matches:
            if os.path.isdir(match):
                paths.extend(images_in_folder(match))
            else:
                paths.append(match)  # FIFOs and devices too: the reader refuses them with a message
    seen: set[str] = set()
    return [p for p in paths if not (p in seen or seen.add(p))]
