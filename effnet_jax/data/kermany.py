"""The Kermany "chest_xray" layout: find it in a folder or zip, list its images, parse names.

    <root>/{train,val,test}/{NORMAL,PNEUMONIA}/<file>

NORMAL files are named like IM-0115-0001.jpeg or NORMAL2-IM-1427-0001.jpeg (patient
IM-0115, NORMAL2-IM-1427); PNEUMONIA files like person1000_bacteria_2931.jpeg
(patient person1000, pathogen bacteria).
"""

import collections
import dataclasses
import hashlib
import lzma
import os
import re
import struct
import zipfile
import zlib
from pathlib import Path

from effnet_jax import limits, zip_directory
from effnet_jax.data import imaging
from effnet_jax.labels import CLASS_NAMES

SPLITS = ("train", "val", "test")
# Untrusted folders and zips (docs/untrusted-inputs-overview.md): a file or zip member larger than
# this, or a zip member inflating more than MAX_ZIP_RATIO times (beyond 1 MiB), is a bad
# image, refused from its size before any byte is read. Chest films are a few MB.
MAX_FILE_BYTES = limits.MAX_IMAGE_FILE_BYTES
MAX_ZIP_RATIO = 100
# How a refused link out of the folder can be read anyway (limits.open_in_folder).
FOLLOW_LINKS_HINT = "set data.follow_links=True (effnet-data: --follow_links)"
PATHOGENS = ("none", "bacteria", "virus", "unknown")
# Files and folders that operating systems and archivers add; not data, never an error.
_OS_FILES = {".DS_Store", "Thumbs.db", "desktop.ini"}
_OS_DIRS = {"__MACOSX"}
# What a folder of a zip's tree keeps besides its path (a string object, dict and set entries).
_FOLDER_KEY_BYTES = 128

_NORMAL_RE = re.compile(r"^(?P<patient>(?:[A-Za-z0-9]+-)?IM-\d+)-\d+", re.IGNORECASE)
_PNEUMONIA_RE = re.compile(r"^(?P<patient>person\d+)_(?P<pathogen>bacteria|virus)", re.IGNORECASE)


def named_like_kermany(file_name: str, label: str) -> bool:
    """True when ``file_name`` follows the Kermany data set's naming (``IM-0001-0001``, ``person1_virus_2``)."""
    stem = file_name.rsplit("/", 1)[-1].rsplit(".", 1)[0]
    return bool((_NORMAL_RE if label == "NORMAL" else _PNEUMONIA_RE).match(stem))


def parse_name(file_name: str, label: str) -> tuple[str, str]:
    """Return (patient id, pathogen) from a file name; unknown patterns: one patient per file."""
    stem = file_name.rsplit(".", 1)[0]
    if label == "NORMAL":
        m = _NORMAL_RE.match(stem)
        return (m.group("patient") if m else stem), "none"
    m = _PNEUMONIA_RE.match(stem)
    if m:
        return m.group("patient"), m.group("pathogen").lower()
    low = stem.lower()
    pathogen = "bacteria" if "bacteria" in low else "virus" if "virus" in low else "unknown"
    return stem, pathogen


def _is_os_junk(name: str) -> bool:
    return name in _OS_FILES or name.startswith("._")


class LayoutError(ValueError):
    """The folder or zip does not have the expected structure (always fatal)."""


def _open_zip(zip_path) -> zipfile.ZipFile:
    """The data set's zip, opened once its central directory fits the decoded-size budget (else LayoutError).

    No member count is natural here (Kermany's zip lists about 17,000, Mendeley's full archive
    over 100,000), so the budget bounds the entries zipfile builds as it opens.
    """
    try:
        return zip_directory.open_zip(zip_path, what="a data set zip", error=LayoutError)
    except OSError as e:  # a link that loops or leads nowhere, no permission
        link = " (a link that loops or leads nowhere)" if os.path.islink(zip_path) else ""
        raise LayoutError(f"{zip_path}: cannot open the zip{link}: {e.strerror or e}") from None
    except _ZIP_DIRECTORY_ERRORS as e:
        # A damaged central directory, a newer zip version or a name flagged UTF-8 that is not: zipfile
        # refuses the whole archive, in words that name neither the zip nor the entry.
        raise LayoutError(
            f"{zip_path}: a zip whose central directory cannot be read ({type(e).__name__}: {e})"
        ) from None


# What zipfile raises for a central directory it cannot list (its end record is checked before).
_ZIP_DIRECTORY_ERRORS = (zipfile.BadZipFile, NotImplementedError, UnicodeDecodeError, EOFError, struct.error)


@dataclasses.dataclass
class Layout:
    """Images found per split, plus what did not belong (reported, never silently dropped)."""

    source: str  # the folder or zip that was read, and the root inside it
    files: dict[str, list[tuple[str, str]]]  # split -> [(class name, path relative to source)]
    problems: list[str]  # stray folders/files: '<path>: <why>'
    ignored: list[str]  # OS metadata and duplicate nested copies: '<path>: <why>'
    zip_path: str | None = None  # set when reading from a zip
    follow_links: bool = False  # data.follow_links: links to files are read wherever they point

    _zip: zipfile.ZipFile | None = dataclasses.field(default=None, repr=False)

    def read(self, rel: str) -> bytes:
        """Bytes of the file at `rel` (relative to `source`); BadImageError when it cannot be used.

        Links that loop, lead nowhere or (unless ``follow_links``) lead outside the folder,
        non-regular files (FIFOs would block) and files or zip members beyond MAX_FILE_BYTES /
        MAX_ZIP_RATIO are bad images, so the data's on_bad_image policy decides, as for any
        other unusable file.
        """
        shown = f"{self.source}:{rel}" if self.zip_path else f"{self.source}/{rel}"
        try:
            if self.zip_path is None:
                return _read_file(Path(self.source) / rel, shown, self._links_within())
            if self._zip is None:
                self._zip = _open_zip(self.zip_path)  # kept open: one seek per member
            return _read_member(self._zip, rel, shown)
        except (OSError, zipfile.BadZipFile, EOFError, *_ZIP_MEMBER_ERRORS) as e:
            link = " (a link that loops or leads nowhere)" if Path(self.source, rel).is_symlink() else ""
            raise imaging.BadImageError(f"{shown}: cannot read{link}: {getattr(e, 'strerror', None) or e}") from e

    def fingerprint(self) -> str:
        """A hash of every listed file's split/CLASS/name, size and content (CRC-32), recorded with the prepared data.

        Files added, removed, resized or rewritten (or a folder holding other files) change
        it; the same files in a folder, its parent or a zip agree (a zip records each
        member's CRC-32, so reading it costs nothing). The value starts with
        ``FINGERPRINT_SCHEME``, so one recorded by the older names-and-sizes scheme never matches.
        """
        members = {}
        if self.zip_path is not None:
            with _open_zip(self.zip_path) as zf:
                members = {i.filename: (i.file_size, i.CRC) for i in zf.infolist()}
        h = hashlib.sha256()
        for split in sorted(self.files):
            for _, rel in self.files[split]:
                if self.zip_path is None:
                    size, crc = _size_and_crc(Path(self.source) / rel, self._links_within())
                else:
                    size, crc = members.get(rel, (-1, -1))
                # split/CLASS/name only: the same files reached through a parent folder or a zip agree.
                h.update(f"{'/'.join(rel.split('/')[-3:])}\0{size}\0{crc}\n".encode("utf-8", "surrogateescape"))
        return f"{FINGERPRINT_SCHEME}:{h.hexdigest()[:16]}"

    def _links_within(self) -> str | None:
        """The folder a listed file's links must lead into; None: anywhere (data.follow_links)."""
        return None if self.follow_links else self.source

    def links_outside(self) -> list[str]:
        """Listed files that are links leading outside the folder: those left unread without follow_links."""
        if self.zip_path is not None:
            return []
        return [rel for entries in self.files.values() for _, rel in entries if _leads_outside(self.source, rel)]

    def close(self):
        if self._zip is not None:
            self._zip.close()
            self._zip = None


FINGERPRINT_SCHEME = "crc2"  # names + sizes + CRC-32 of each file's bytes (Layout.fingerprint)
# (path, device, inode, size, mtime) -> CRC-32: a process checks the same folder many times.
_CRC_MEMO: dict[tuple, int] = {}


def _size_and_crc(path: Path, folder: str | None) -> tuple[int, int]:
    """``(size, CRC-32 of the bytes)`` of a listed file; ``(-1, -1)`` for one that cannot be read.

    ``folder``: where its links must lead (None: anywhere); a link out is not read, as preparing would not.
    """
    try:
        with limits.open_in_folder(path, folder, FOLLOW_LINKS_HINT) as f:
            st = os.fstat(f.fileno())
            key = (str(path), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
            if key not in _CRC_MEMO:
                crc = 0
                while chunk := f.read(1 << 20):
                    crc = zlib.crc32(chunk, crc)
                _CRC_MEMO[key] = crc
            return st.st_size, _CRC_MEMO[key]
    except (OSError, limits.BudgetError):
        return -1, -1  # a broken link, a FIFO or a link out: still a listed file


def _read_file(path: Path, shown: str, folder: str | None) -> bytes:
    """The bytes of a listed file; ``folder``: where its links must lead (None: anywhere)."""
    try:  # a loop or a dangling link fails here, with an OSError
        f = limits.open_in_folder(path, folder, FOLLOW_LINKS_HINT)
    except limits.LinkOutsideError as e:
        raise imaging.BadImageError(f"{shown}: {e.reason}") from None
    except limits.BudgetError:
        raise imaging.BadImageError(f"{shown}: not a regular file") from None
    with f:
        size = os.fstat(f.fileno()).st_size
        if size > MAX_FILE_BYTES:
            raise imaging.BadImageError(
                f"{shown}: {size:,} bytes, beyond the {MAX_FILE_BYTES:,}-byte limit for one image"
            )
        return f.read(MAX_FILE_BYTES + 1)


def _leads_outside(folder: str, rel: str) -> bool:
    try:
        limits.resolve_in_folder(Path(folder) / rel, folder, FOLLOW_LINKS_HINT)
    except limits.LinkOutsideError:
        return True
    except OSError:
        pass  # a link that loops or leads nowhere: unreadable, not outside
    return False


def _check_zip_inside(zip_path: Path, folder: Path) -> None:
    """A zip found in ``folder`` that is a link leading outside it is refused (LayoutError)."""
    try:
        limits.resolve_in_folder(zip_path, folder, FOLLOW_LINKS_HINT)
    except limits.LinkOutsideError as e:
        raise LayoutError(str(e)) from None
    except OSError:
        pass  # a dangling link: opening the zip names it


def _read_member(zf: zipfile.ZipFile, rel: str, shown: str) -> bytes:
    info = zf.getinfo(rel)
    if info.file_size > MAX_FILE_BYTES:
        raise imaging.BadImageError(
            f"{shown}: declares {info.file_size:,} bytes, beyond the "
            f"{MAX_FILE_BYTES:,}-byte limit for one image (zip bomb?)"
        )
    if info.file_size > 1 << 20 and info.file_size > MAX_ZIP_RATIO * max(info.compress_size, 1):
        raise imaging.BadImageError(
            f"{shown}: inflates {info.compress_size:,} to {info.file_size:,} "
            f"bytes, beyond the {MAX_ZIP_RATIO}x limit (zip bomb?)"
        )
    # Never inflated past the declared size, whatever the method (a bzip2 member declaring 5 kB
    # inflated to 1.5 GB inside zipfile).
    return zip_directory.read_member(zf, info)


# zipfile's refusals of one member and its decompressors' errors: an encrypted member (RuntimeError),
# an unknown compression method (NotImplementedError), a corrupt deflate or LZMA stream.
_ZIP_MEMBER_ERRORS = (RuntimeError, NotImplementedError, zlib.error, lzma.LZMAError)


def unsafe_member_name(name: str) -> bool:
    """Whether a zip member's name is absolute or not canonical (``..``, ``.`` or empty parts, a backslash).

    Such a name reaches outside the archive's folder when extracted, and its parts do not
    name one member (``a//b`` and ``/a/b`` both list as ``a/b``): it is reported, not read.
    """
    parts = name.rstrip("/").split("/")
    return name.startswith("/") or "\\" in name or any(p in ("", ".", "..") for p in parts)


class _Tree:
    """A read-only directory view over a real folder or the names inside a zip."""

    def __init__(
        self,
        dirs: dict[str, set[str]],
        files: dict[str, set[str]],
        links: frozenset = frozenset(),
        unlisted: dict[str, str] | None = None,
    ):
        self.dirs, self.files = dirs, files
        self.links = links  # folders that are symbolic links: listed, never walked into
        self.unlisted = unlisted or {}  # folders that could not be listed: why

    @classmethod
    def from_folder(cls, root: Path) -> "_Tree":
        """Walked a folder at a time from a stack: pathlib's rglob recursed, and a downloaded tree 1,200
        folders deep overflowed Python's stack. A folder that cannot be listed (a path past the
        system's limit) is kept in ``unlisted``."""
        dirs, files, links, unlisted = {"": set()}, {"": set()}, set(), {}
        stack = [""]
        while stack:
            rel = stack.pop()
            try:
                with os.scandir(root / rel if rel else root) as found:
                    entries = list(found)
            except OSError as e:
                unlisted[rel] = e.strerror or str(e)
                continue
            for entry in entries:
                child = _join(rel, entry.name)
                try:
                    is_dir = entry.is_dir()  # a link to a folder is a folder, listed and never walked into
                except OSError:
                    is_dir = False
                (dirs if is_dir else files)[rel].add(entry.name)
                if is_dir:
                    dirs.setdefault(child, set())
                    files.setdefault(child, set())
                    if entry.is_symlink():
                        links.add(child)
                    else:
                        stack.append(child)
        return cls(dirs, files, frozenset(links), unlisted)

    @classmethod
    def from_zip(cls, names: list[str]) -> "_Tree":
        dirs, files = {"": set()}, {"": set()}
        for name in names:
            parts = [p for p in name.split("/") if p]
            for i in range(len(parts)):
                parent, child = "/".join(parts[:i]), parts[i]
                is_dir = i < len(parts) - 1 or name.endswith("/")
                dirs.setdefault(parent, set())
                files.setdefault(parent, set())
                (dirs if is_dir else files)[parent].add(child)
        return cls(dirs, files)


def _join(a: str, b: str) -> str:
    return f"{a}/{b}" if a else b


def _find_root(tree: _Tree, classes=CLASS_NAMES) -> str | None:
    """The folder holding train/{NORMAL,PNEUMONIA}: most class folders first, then shallowest.

    Kaggle's zip nests a second copy of the layout (the shallower one wins); Mendeley's
    full archive has an OCT data set beside it whose train/ also has a NORMAL/ folder.
    """
    roots = [d for d in tree.dirs if "train" in tree.dirs[d] and not any(part in _OS_DIRS for part in d.split("/"))]
    found = lambda d: len(set(classes) & tree.dirs.get(_join(d, "train"), set()))
    return min(roots, key=lambda d: (-found(d), d.count("/") + bool(d), d)) if roots else None


def scan(path, classes=CLASS_NAMES, follow_links: bool = False) -> Layout:
    """Read the layout under `path` (a folder, a zip, or a folder holding one zip).

    ``classes``: the class folders every split holds (``effnet_jax.data.folders`` passes
    a folder data set's own). ``follow_links`` (data.follow_links): links to files are read
    wherever they point; else one leading outside `path` is a bad image when read, and a
    zip found in `path` must lie inside it.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise LayoutError(
            f"data.manual_dir={str(path)!r} does not exist; expected the chest_xray "
            "folder ({train,val,test}/{NORMAL,PNEUMONIA}/*.jpeg) or its zip"
        )
    zip_path = None
    if path.is_file():
        if not zipfile.is_zipfile(path):
            raise LayoutError(f"{path}: not a folder or a zip file")
        zip_path = path
    else:
        tree = _Tree.from_folder(path)
        if "" in tree.unlisted:
            raise LayoutError(f"{path}: cannot list the folder ({tree.unlisted['']})")
        if _find_root(tree, classes) is None:
            zips = sorted(path.glob("*.zip"))
            if len(zips) == 1:
                zip_path = zips[0]
                if not follow_links:
                    _check_zip_inside(zip_path, path)
            else:
                _refuse_linked_layout(path, tree)
                found = "zips " + ", ".join(z.name for z in zips) if zips else "no train/ folder"
                raise LayoutError(
                    f"{path}: found {found}; expected a train/ folder with NORMAL/ and "
                    "PNEUMONIA/ inside (the chest_xray layout) or exactly one zip of it"
                )
    unsafe, repeated = [], {}
    if zip_path is not None:
        with _open_zip(zip_path) as zf:
            names = zf.namelist()
        unsafe = [n for n in names if unsafe_member_name(n)]
        # A name listed twice holds two files: which one is the image is anyone's guess (zipfile reads the last).
        counts = collections.Counter(n for n in names if not n.endswith("/"))
        repeated = {n: c for n, c in counts.items() if c > 1 and not unsafe_member_name(n)}
        kept = [n for n in names if not unsafe_member_name(n) and n not in repeated]
        # Each folder a name passes through is a key of its own, its whole path: a name nested 32,000
        # folders deep made 1 GB of them (three such names in a 411 kB zip, 15 s and 3.4 GB).
        limits.check(
            zip_path,
            sum(n.count("/") * (len(n) + _FOLDER_KEY_BYTES) for n in kept),
            f"the folders its {len(kept):,} member names pass through",
            LayoutError,
        )
        tree = _Tree.from_zip(kept)
    root = _find_root(tree, classes)
    where = str(zip_path or path)
    if root is None:
        refused = (
            f" ({len(unsafe)} absolute or non-canonical member name(s) not read, e.g. {unsafe[0]!r})" if unsafe else ""
        )
        raise LayoutError(
            f"{where}: no train/ folder found; expected {{train,val,test}}/{{NORMAL,PNEUMONIA}}/*.jpeg{refused}"
        )
    layout = _walk(tree, root, where, str(zip_path) if zip_path else None, str(path), tuple(classes))
    layout.follow_links = follow_links
    layout.problems.extend(
        f"{where}:{n}: an absolute or non-canonical member name ('..', '//'); not read" for n in unsafe
    )
    layout.problems.extend(
        f"{where}:{n}: listed {c} times in the zip (which copy is the image is ambiguous); not read"
        for n, c in sorted(repeated.items())
    )
    return layout


_LINKED_FOLDER = (
    "a symbolic link to a folder; links to folders are never walked into (not even with data.follow_links): "
    "move or copy the folder itself here"
)


def _refuse_linked_layout(path: Path, tree: _Tree) -> None:
    """Refuses (LayoutError) a linked folder under ``path`` that leads to a train/ folder, naming it and its target.

    Links to folders are never walked into, so the layout behind one is not found: saying
    which link hides it beats "no train/ folder".
    """
    for rel in sorted(tree.links):
        linked = path / rel
        if (linked / "train").is_dir() or any(p.is_dir() for p in linked.glob("*/train")):
            raise LayoutError(
                f"{linked}: a link to {os.path.realpath(linked)}, which holds a train/ folder; "
                f"{_LINKED_FOLDER}, or name the folder it leads to as the data folder"
            )


def _walk(tree: _Tree, root: str, where: str, zip_path, folder, classes=CLASS_NAMES) -> Layout:
    shown = lambda rel: f"{where}:{rel}" if zip_path else str(Path(folder) / rel)
    files, problems, ignored = {}, [], []
    # Whatever lies beside the path down to the root (a README, __MACOSX, other data
    # sets) is not read; list it so nothing disappears silently.
    parts = root.split("/") if root else []
    for depth in range(len(parts)):
        here = "/".join(parts[:depth])
        for name in sorted(tree.dirs.get(here, set()) | tree.files.get(here, set())):
            if name != parts[depth]:
                ignored.append(f"{shown(_join(here, name))}: outside the data folder {shown(root)}")
    for name in sorted(tree.files.get(root, ())):
        rel = _join(root, name)
        (ignored if _is_os_junk(name) else problems).append(
            f"{shown(rel)}: " + ("OS metadata file" if _is_os_junk(name) else "stray file beside the split folders")
        )
    for name in sorted(tree.dirs.get(root, ())):
        rel = _join(root, name)
        if name in SPLITS and rel in tree.links:
            # Its files were never listed (rglob walks no linked folder): saying so beats an empty split.
            message = f"{shown(rel)}: {_LINKED_FOLDER}"
            if name == "train":
                raise LayoutError(message)
            problems.append(message)
        elif name in SPLITS:
            files[name] = _walk_split(tree, rel, shown, problems, ignored, classes)
        elif name in _OS_DIRS:
            ignored.append(f"{shown(rel)}: archiver metadata folder")
        elif "train" in tree.dirs.get(rel, ()):
            ignored.append(f"{shown(rel)}: nested copy of the layout (the Kaggle zip has one)")
        else:
            problems.append(f"{shown(rel)}: stray folder (expected only train/, val/, test/)")
    if "train" not in files:
        raise LayoutError(f"{shown(_join(root, 'train'))}: missing train split folder")
    problems.extend(
        f"{shown(rel)}: cannot be listed ({why}); its files are not read"
        for rel, why in sorted(tree.unlisted.items())
        if not root or rel == root or rel.startswith(root + "/")
    )
    source = f"{zip_path}" if zip_path else folder
    return Layout(source=source, files=files, problems=problems, ignored=ignored, zip_path=zip_path)


def _walk_split(tree, split_rel, shown, problems, ignored, classes=CLASS_NAMES) -> list[tuple[str, str]]:
    entries = []
    listed = [f"{c}/" for c in classes]
    folders = ", ".join(listed[:-1]) + f" and {listed[-1]}"
    for name in sorted(tree.files.get(split_rel, ())):
        rel = _join(split_rel, name)
        if _is_os_junk(name):
            ignored.append(f"{shown(rel)}: OS metadata file")
        else:
            problems.append(f"{shown(rel)}: stray file outside the class folders {folders}")
    for name in sorted(tree.dirs.get(split_rel, ())):
        if name not in classes and name not in _OS_DIRS:
            problems.append(f"{shown(_join(split_rel, name))}: stray folder (expected {', '.join(listed)})")
    for cls in classes:
        cls_rel = _join(split_rel, cls)
        if cls_rel not in tree.dirs:
            why = "not a folder" if cls in tree.files.get(split_rel, ()) else "missing class folder"
            raise LayoutError(f"{shown(cls_rel)}: {why} (every split needs {folders})")
        if cls_rel in tree.links:
            problems.append(f"{shown(cls_rel)}: {_LINKED_FOLDER}")
            continue
        for sub in sorted(tree.dirs[cls_rel]):
            problems.append(f"{shown(_join(cls_rel, sub))}: stray folder inside a class folder")
        for name in sorted(tree.files[cls_rel]):
            rel = _join(cls_rel, name)
            if _is_os_junk(name):
                ignored.append(f"{shown(rel)}: OS metadata file")
            else:
                entries.append((cls, rel))
    if not entries:
        raise LayoutError(f"{shown(split_rel)}: empty split (no files in {folders.replace(' and ', ' or ')})")
    return entries
