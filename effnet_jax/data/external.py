"""External validation: labelled image folders from outside the training data.

`data.external = ('PATH', ...)` names folders that each hold `NORMAL/` and `PNEUMONIA/`
(images directly inside; nothing deeper is read); a folder task's external folders hold
its class folders, or the folders its ``data.class_from_name`` rules read. They are evaluated beside validation
as the splits 'external' (the first), 'external_1', ... and can pick the best checkpoint
and the operating threshold; any other labelled folder is the split 'folder:PATH'.
They are never trained on: `check_disjoint` refuses an external folder that overlaps
the training data's folder or shares an image (byte for byte) with the training split.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
from pathlib import Path

import numpy as np

from effnet_jax import limits
from effnet_jax.data import dicom, folders, imaging, kermany
from effnet_jax.data import splits as splits_lib
from effnet_jax.labels import class_names
from effnet_jax.output_files import printable_line

log = logging.getLogger(__name__)

PREFIX = "external"
FOLDER_PREFIX = "folder:"
# Larger files are not images of this kind; refusing them bounds what one read can take.
MAX_FILE_BYTES = 64 << 20
_IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".dcm", ".dicom")
# How a refused link out of the folder can be read anyway (limits.open_in_folder).
FOLLOW_LINKS_HINT = "set data.follow_links=True"
# Pillow modes the pipeline's own decode turns grey as preparation does: a file of another mode
# (16-bit, float, with transparency) or a DICOM file is read as preparation stores it.
_PLAIN_MODES = ("L", "RGB", "P", "1")


class ExternalDataError(ValueError):
    """An external folder that cannot be used (layout, overlap with training data, bad files).

    The message names files of a folder someone else may have filled: a newline or an escape code
    in a name (or a link's target) is written as a backslash escape, so the error stays one line.
    """

    def __init__(self, message: str):
        super().__init__(printable_line(message))


def split_names(data_config) -> list[str]:
    """The split names of `data.external`: 'external', 'external_1', ..."""
    paths = data_config.get("external") or ()
    return [PREFIX if i == 0 else f"{PREFIX}_{i}" for i in range(len(paths))]


def is_external(split: str) -> bool:
    return split == PREFIX or split.startswith(PREFIX + "_") or split.startswith(FOLDER_PREFIX)


def folder_of(data_config, split: str) -> Path:
    """The folder behind an external split name."""
    if split.startswith(FOLDER_PREFIX):
        return Path(split[len(FOLDER_PREFIX) :]).expanduser()
    paths = tuple(data_config.get("external") or ())
    index = 0 if split == PREFIX else _index(split)
    if index is None or index >= len(paths):
        raise ExternalDataError(
            f"split {split!r}: data.external has {len(paths)} folder(s) "
            f"({', '.join(split_names(data_config)) or 'none'}); set --config.data.external=PATH "
            "or evaluate any labelled folder as --split=folder:PATH"
        )
    return Path(paths[index]).expanduser()


def _index(split: str):
    tail = split[len(PREFIX) + 1 :]
    return int(tail) if tail.isdigit() else None


@functools.lru_cache(maxsize=16)
def _scan(
    folder: str, on_bad_image: str, task=None, follow_links: bool = False
) -> tuple[splits_lib.PartMeta, tuple[str, ...]]:
    """``task``: a folder task's ``(class names, rules, patient pattern)``; None for NORMAL/PNEUMONIA.

    ``follow_links``: links to files are read wherever they point; else one leading outside
    ``folder`` is a bad file (``on_bad_image`` decides).
    """
    root = Path(folder)
    classes, rules, pattern = task or (class_names(None), (), None)
    sources = tuple(sorted({p.partition("/")[0] for p, _ in rules})) if rules else classes
    if not root.is_dir():
        raise ExternalDataError(
            f"{root}: external folder does not exist (expected {root}/NORMAL/ and {root}/PNEUMONIA/ with images)"
        )
    missing = [c for c in sources if not (root / c).is_dir()]
    if missing:
        found = sorted(p.name for p in root.iterdir() if p.is_dir())
        raise ExternalDataError(
            f"{root}: missing {', '.join(c + '/' for c in missing)}; an external folder "
            f"holds {' and '.join(c + '/' for c in sources)} (found folders: {found or 'none'})"
        )
    names, labels, paths, patients, skipped, unread = [], [], [], [], [], []
    for source in sources:
        for entry in sorted(os.scandir(root / source), key=lambda e: e.name):
            if entry.name.startswith("."):
                continue
            if not entry.name.lower().endswith(_IMAGE_SUFFIXES):
                unread.append(entry.name if not _is_folder(entry) else entry.name + "/")
                continue
            problem = _file_problem(Path(entry.path), None if follow_links else folder)
            if problem:
                if on_bad_image != "skip":
                    raise ExternalDataError(f"{entry.path}: {problem} (data.on_bad_image=skip leaves it out)")
                skipped.append(f"{entry.path}: {problem}")
                continue
            cls = folders.classify(source, entry.name, rules)
            if cls is None:
                if on_bad_image != "skip":
                    raise ExternalDataError(
                        f"{entry.path}: matches no data.class_from_name rule (data.on_bad_image=skip leaves it out)"
                    )
                skipped.append(f"{entry.path}: matches no data.class_from_name rule")
                continue
            names.append(f"{source}/{entry.name}")
            # Kermany-style names carry the patient (bootstrap intervals resample by it);
            # any other name counts as a patient of its own (a folder task: its patient rule).
            if task is None:
                patients.append(f"{cls}/{kermany.parse_name(entry.name, cls)[0]}")
            else:
                patients.append(folders.patient_of(entry.name, cls, pattern))
            labels.append(classes.index(cls))
            paths.append(entry.path)
    for line in skipped:
        log.warning("external folder %s: skipped %s", root, printable_line(line))
    if unread:
        # Said, not silently dropped: a DICOM export without an extension, a .gif, a sub-folder.
        log.warning(
            "external folder %s: %d entr%s not read (only image files named %s directly in the class folders are): %s",
            root,
            len(unread),
            "y" if len(unread) == 1 else "ies",
            "/".join(_IMAGE_SUFFIXES),
            printable_line(", ".join(unread[:3]) + (", ..." if len(unread) > 3 else "")),
        )
    counts = np.bincount(np.asarray(labels, np.int64), minlength=len(classes))
    if counts.sum() == 0:
        raise ExternalDataError(f"{root}: no images in {' or '.join(c + '/' for c in sources)}")
    for cls, n in zip(classes, counts):
        if n == 0:
            log.warning(
                "external folder %s: %s/ has no images; AUC, sensitivity or specificity is undefined", root, cls
            )
    meta = splits_lib.PartMeta(np.asarray(labels, np.int32), patients, names)
    return meta, tuple(paths)


def _is_folder(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir()
    except OSError:
        return False


def _file_problem(path: Path, folder: str | None) -> str | None:
    """Why `path` cannot be read as an image file, or None; ``folder``: where its links must lead (None: anywhere)."""
    try:
        if folder is not None:
            limits.resolve_in_folder(path, folder, FOLLOW_LINKS_HINT)
        st = path.stat()  # follows links: a loop or a dangling link raises here
    except limits.LinkOutsideError as e:
        return e.reason
    except OSError as e:
        return f"unreadable ({e.strerror or e})"
    if not path.is_file():
        return "not a regular file"
    if st.st_size > MAX_FILE_BYTES:
        return f"{st.st_size} bytes, over the {MAX_FILE_BYTES} byte limit for one image"
    if st.st_size == 0:
        return "empty file"
    return None


def scan(data_config, split: str) -> tuple[splits_lib.PartMeta, tuple[str, ...]]:
    """Labels and file names (class/file) of an external split, and the files' paths."""
    folder = folder_of(data_config, split).resolve()
    task = None
    if data_config.get("name") == folders.NAME:
        task = (
            class_names(data_config),
            folders.rules(data_config),
            data_config.get("patient_id_pattern") or None,
        )
    follow_links = bool(data_config.get("follow_links", False))
    return _scan(str(folder), data_config.get("on_bad_image", "error"), task, follow_links)


def _links_within(data_config, split: str) -> str | None:
    """The folder an external split's links must lead into; None: anywhere (data.follow_links)."""
    return None if data_config.get("follow_links", False) else str(folder_of(data_config, split).resolve())


def selection(data_config, split: str) -> splits_lib.Selection:
    meta, _ = scan(data_config, split)
    n = len(meta.labels)
    return splits_lib.Selection(
        np.zeros(n, np.int32),
        np.arange(n, dtype=np.int64),
        meta.labels,
        (split,),
        list(meta.file_names),
        list(meta.patient_ids),
    )


class FolderReader:
    """Reads the image bytes of one external folder (picklable for grain workers), checked as preparation checks them.

    ``folder``: where the files' links must lead (None: anywhere), checked again at each read.
    ``max_size``: data.max_size, the stored copy's shorter side (``checked_image``).
    """

    def __init__(self, paths: tuple[str, ...], split: str, folder: str | None = None, max_size: int = 512):
        self.paths = paths
        self.parts = (split,)
        self.folder = folder
        self.max_size = max_size

    def read_image(self, part: int, index: int) -> bytes:
        path = self.paths[int(index)]
        return checked_image(_read_image(path, self.folder), path, self.max_size)

    def record_name(self, part: int, index: int) -> str:
        # How a decode error names the file: on one line whatever its name holds.
        return printable_line(self.paths[int(index)])


def checked_image(data: bytes, path: str, max_size: int) -> bytes:
    """``data`` as the pipeline may decode it, every check of preparation made first (``imaging.open_image``).

    An 8-bit image of a plain mode is returned as it is: the pipeline decodes it as it always
    has. DICOM and other modes become the stored copy preparation would make (Pillow's own
    conversion turns 16-bit grey white, and reads no DICOM). A refusal is ExternalDataError
    naming ``path``.
    """
    try:
        if not dicom.is_dicom(data):
            im = imaging.open_image(data, path)
            if im.mode in _PLAIN_MODES and "transparency" not in im.info:
                return data
        return imaging.load_for_storage(data, path, max_size)[0]
    except imaging.BadImageError as e:
        raise ExternalDataError(str(e)) from None


def _read_image(path: str, folder: str | None) -> bytes:
    """The bytes of a scanned file; ``folder``: where its links must lead (None: anywhere)."""
    try:  # opened as the scan checked it: a link or FIFO swapped in since is refused, not followed
        with limits.open_in_folder(path, folder, FOLLOW_LINKS_HINT) as f:
            data = f.read(MAX_FILE_BYTES + 1)  # bounded even if the file grew after the scan
    except limits.BudgetError as e:
        raise ExternalDataError(str(e)) from None
    except OSError as e:  # gone, or made unreadable, since the folder was scanned
        raise ExternalDataError(
            f"{path}: cannot read ({e.strerror or e}); was it removed since the folder was scanned?"
        ) from None
    if len(data) > MAX_FILE_BYTES:
        raise ExternalDataError(f"{path}: over the {MAX_FILE_BYTES} byte limit for one image")
    return data


def reader(data_config, split: str) -> FolderReader:
    max_size = int(data_config.get("max_size", 512) or 512)
    return FolderReader(scan(data_config, split)[1], split, _links_within(data_config, split), max_size)


def _digest(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def check_disjoint(data_config, train_reader, train_selection) -> None:
    """Refuses external folders that could leak into training; call before training starts.

    An external folder may not contain, or lie inside, `data.manual_dir`, and none of its
    images may equal (byte for byte) an image of the training split.
    """
    splits = split_names(data_config)
    if not splits:
        return
    manual = data_config.get("manual_dir")
    manual = Path(manual).expanduser().resolve() if manual else None
    train_digests = None
    for split in splits:
        folder = folder_of(data_config, split).resolve()
        key = f"data.external[{splits.index(split)}]={str(folder)!r}"
        if manual is not None and (folder == manual or manual in folder.parents or folder in manual.parents):
            raise ExternalDataError(
                f"{key} overlaps data.manual_dir={str(manual)!r}: external data must "
                "come from outside the training data"
            )
        _, paths = scan(data_config, split)
        if train_digests is None:
            train_digests = {
                _digest(
                    bytes(train_reader.read_image(train_reader.parts.index(train_selection.parts[p]), int(r)))
                ): name
                for p, r, name in zip(
                    train_selection.part,
                    train_selection.record,
                    train_selection.file_names or [""] * len(train_selection),
                )
            }
        within = _links_within(data_config, split)
        for path in paths:
            twin = train_digests.get(_digest(_read_image(path, within)))
            if twin is not None:
                raise ExternalDataError(
                    f"{key}: {path} is byte-identical to the training image {twin or '(unnamed)'}; "
                    "an external set must not share images with the training split"
                )
