"""A folder of class folders, any number of classes: ``ROOT/{train,val,test}/<CLASS>/<image>``.

``data.name='folder'`` (docs/your-own-task.md). ``train/`` is required, ``val/`` and
``test/`` are optional; each split holds the same class folders. The class names are the
class folders' names, sorted, unless ``data.class_from_name`` derives them from file
names: a tuple of ``('FOLDER/GLOB', 'CLASS')`` rules, first match wins, so Kermany's
``PNEUMONIA/*_bacteria_*`` and ``PNEUMONIA/*_virus_*`` become two classes without a copy of
the data. ``data.patient_id_pattern``, a regular expression searched in each file's name
(its group ``patient``, else its whole match), groups a patient's images so that splits
and bootstrap intervals keep them together; without it each file is its own patient.
"""

from __future__ import annotations

import fnmatch
import functools
import hashlib
import os
import re
import reprlib
from pathlib import Path

try:  # the parser re itself uses (its module was sre_parse before Python 3.11)
    from re import _constants as re_constants
    from re import _parser as re_parser
except ImportError:  # Python 3.10
    import sre_constants as re_constants
    import sre_parse as re_parser

from effnet_jax.data import kermany
from effnet_jax.labels import check_class_name, validate_class_names

NAME = "folder"
_SKIP_DIRS = {"__MACOSX"}


def rules(data_config) -> tuple[tuple[str, str], ...]:
    """``data.class_from_name`` as validated ``(FOLDER/GLOB, CLASS)`` pairs; () when classes are the folders."""
    raw = data_config.get("class_from_name") or ()
    out = []
    for i, rule in enumerate(raw):
        key = f"data.class_from_name[{i}]={rule!r}"
        if not (isinstance(rule, (tuple, list)) and len(rule) == 2 and all(isinstance(v, str) for v in rule)):
            raise ValueError(f"{key}: expected a pair ('FOLDER/GLOB', 'CLASS'), e.g. ('PNEUMONIA/*_virus_*', 'VIRAL')")
        pattern, cls = rule
        folder, _, glob = pattern.partition("/")
        if not glob or "/" in glob or any(c in folder for c in "*?[]"):
            raise ValueError(f"{key}: expected 'FOLDER/GLOB' with one literal folder name, e.g. 'PNEUMONIA/*_virus_*'")
        check_class_name(folder, f"{key} (its folder)")
        check_class_name(cls, f"{key} (its class)")
        out.append((pattern, cls))
    return tuple(out)


def source_folders(data_config) -> tuple[str, ...]:
    """The folders every split holds: the rules' folders, or the class names themselves."""
    mapping = rules(data_config)
    if mapping:
        return tuple(sorted({p.partition("/")[0] for p, _ in mapping}))
    return class_names(data_config)


def class_names(data_config) -> tuple[str, ...]:
    """The task's classes, sorted: the rules' classes, or the class folders of ``manual_dir/train``."""
    mapping = rules(data_config)
    if mapping:
        return validate_class_names(sorted({c for _, c in mapping}), "data.class_from_name")
    if data_config.get("class_names"):
        return validate_class_names(data_config.get("class_names"), "data.class_names")
    train = root(data_config) / "train"
    if not train.is_dir():
        # A dangling link is named as one: "no train/ folder" would send the user looking for a folder that is there.
        linked = f" ({train} is a link to {os.path.realpath(train)}, which is no folder)" if train.is_symlink() else ""
        raise ValueError(
            f"data.manual_dir={str(root(data_config))!r}: no train/ folder{linked}; expected train/<CLASS>/<image>"
        )
    found = sorted(p.name for p in train.iterdir() if p.is_dir() and p.name not in _SKIP_DIRS)
    found = [n for n in found if not n.startswith(".")]
    return validate_class_names(found, f"{train} (its class folders)")


def root(data_config) -> Path:
    """The folder holding ``train/`` (``data.manual_dir``), or one line saying what is missing."""
    manual = data_config.get("manual_dir")
    if not manual:
        raise ValueError("data.name='folder' needs data.manual_dir: the folder holding train/<CLASS>/<image>")
    path = Path(manual).expanduser()
    if not path.is_dir():
        raise ValueError(f"data.manual_dir={manual!r} is not a folder; expected one holding train/<CLASS>/<image>")
    return path


def classify(folder: str, file_name: str, mapping) -> str | None:
    """The class of ``FOLDER/file_name``: the first matching rule's, the folder itself without rules, None if none matches."""
    if not mapping:
        return folder
    return next((cls for pattern, cls in mapping if fnmatch.fnmatchcase(f"{folder}/{file_name}", pattern)), None)


def patient_of(file_name: str, cls: str, pattern: str | None) -> str:
    """The patient id of a file: ``pattern``'s group 'patient' (or its match) in the file's stem, else the stem."""
    stem = file_name.rsplit(".", 1)[0]
    if not pattern:
        return f"{cls}/{stem}"
    # Searched in the first MAX_NAME_CHARS characters only: a zip member's name may be 64 KiB,
    # and even a simple pattern backtracks for a time that grows as a power of the name's length.
    m = compiled(pattern).search(stem[:MAX_NAME_CHARS])
    if m is None:
        return f"{cls}/{stem}"
    return m.group("patient") if "patient" in m.re.groupindex else m.group(0)


def compiled(pattern: str) -> re.Pattern:
    """``data.patient_id_pattern`` compiled, or one line naming the key."""
    if not isinstance(pattern, str) or len(pattern) > MAX_PATTERN_CHARS:
        raise ValueError(
            f"data.patient_id_pattern={reprlib.repr(pattern)}: expected a regular expression of at most "
            f"{MAX_PATTERN_CHARS} characters"
        )
    return _compiled(pattern)


@functools.lru_cache(maxsize=16)
def _compiled(pattern: str) -> re.Pattern:
    try:
        regex = re.compile(pattern)
        nested = _nested_repeat(re_parser.parse(pattern))
    except (re.error, RecursionError, OverflowError) as e:
        raise ValueError(f"data.patient_id_pattern={pattern!r}: not a regular expression ({e})") from None
    if nested:
        # Python's re backtracks: a repeat inside a repeat, such as (a+)+$, takes 2^n steps on a
        # file name of n a's, so one hostile name would hang preparation for hours.
        raise ValueError(
            f"data.patient_id_pattern={pattern!r}: repeats a group that itself repeats or holds alternatives "
            f"({nested}), which can take exponential time on a hostile file name; write it without the "
            r"nesting, e.g. ^(?P<patient>[^_]+)_"
        )
    return regex


# Patient patterns are short; a longer one is not a patient rule.
MAX_PATTERN_CHARS = 1000
MAX_NAME_CHARS = 255  # a file name's longest on common file systems
_REPEATS = {re_constants.MAX_REPEAT, re_constants.MIN_REPEAT}


def _nested_repeat(parsed) -> str | None:
    """Where a repeat (more than once) holds another repeat or a branch: 'nested repeat' / 'repeated alternatives'."""

    def inside(items, repeated: bool) -> str | None:
        for op, arg in items:
            if op in _REPEATS:
                low, high, body = arg
                if repeated and high > 1:
                    return "nested repeat"
                found = inside(body, repeated or high > 1)
            elif op == re_constants.BRANCH:
                if repeated:
                    return "repeated alternatives"
                found = next((f for branch in arg[1] if (f := inside(branch, repeated))), None)
            elif op in (
                re_constants.SUBPATTERN,
                re_constants.ATOMIC_GROUP,
                re_constants.ASSERT,
                re_constants.ASSERT_NOT,
            ):
                found = inside(arg[-1], repeated)
            elif op == re_constants.GROUPREF_EXISTS:
                found = next((f for branch in arg[1:] if branch is not None and (f := inside(branch, repeated))), None)
            else:
                found = None
            if found:
                return found
        return None

    return inside(parsed, False)


def scan(data_config) -> kermany.Layout:
    """The images of every split as ``(class, path)``, with files no rule matches listed as problems.

    A link leading outside ``data.manual_dir`` is a bad image unless ``data.follow_links``.
    """
    mapping = rules(data_config)
    follow = bool(data_config.get("follow_links"))
    layout = kermany.scan(root(data_config), source_folders(data_config), follow_links=follow)
    if not mapping:
        return layout
    for split, entries in layout.files.items():
        kept = []
        for folder, rel in entries:
            cls = classify(folder, rel.rsplit("/", 1)[-1], mapping)
            if cls is None:
                layout.problems.append(f"{layout.source}/{rel}: matches no data.class_from_name rule")
            else:
                kept.append((cls, rel))
        layout.files[split] = kept
    return layout


def identity(data_config) -> str:
    """A short hash of what makes this folder task's prepared data: the folder, its classes, rules and patient rule."""
    text = repr(
        (
            os.path.realpath(os.path.expanduser(data_config.get("manual_dir") or "")),
            class_names(data_config),
            rules(data_config),
            data_config.get("patient_id_pattern") or "",
        )
    )
    return hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()[:10]
