"""The exclusion list: which files of a chest_xray folder the builder leaves out, and why.

A file is named by its key 'split/CLASS/file name' (e.g. 'train/NORMAL/IM-0115-0001.jpeg'),
the same whether the data is read from a folder, a parent folder or a zip. Two formats:

    JSON  {"format": "effnet_jax.exclusions/1", "excluded": [{"file": KEY, "reason": R,
           "detail": TEXT}, ...], ...}        (written by `effnet-data clean`)
    CSV   header 'file,reason[,detail]', one row per file  (easy to edit by hand)

data.exclude_list names a file, or 'packaged:NAME' for a list shipped in effnet_jax/data/lists/
(resolved where the package is installed, so a run's config.json stays valid on another machine).

Nothing is ever deleted: the list only tells the builder what to skip.
"""

import csv
import hashlib
import importlib.resources
import io
import json
import re
import reprlib
from pathlib import Path

from effnet_jax import limits
from effnet_jax.output_files import csv_cell, csv_text, write_text

FORMAT = "effnet_jax.exclusions/1"
PACKAGED = "packaged:"


def packaged(name: str) -> str:
    """Path of an exclusion list shipped in effnet_jax/data/lists/ ('chest_xray_rejected')."""
    if not name.replace("_", "").isalnum():
        raise ValueError(f"packaged exclusion list {name!r}: expected a plain name such as 'chest_xray_rejected'")
    lists = importlib.resources.files("effnet_jax.data") / "lists"
    path = lists / f"{name}.json"
    if not path.is_file():
        shipped = sorted(p.name.removesuffix(".json") for p in lists.iterdir() if p.name.endswith(".json"))
        raise FileNotFoundError(f"no packaged exclusion list {name!r}; the package ships {shipped}")
    return str(path)


def file_key(rel: str) -> str:
    """Key of a layout path: its last three ``/``-separated parts, 'split/CLASS/file name'.

    A backslash is part of a file name (Linux allows it): ``train/NORMAL/test\\NORMAL\\x.jpeg`` is
    not ``test/NORMAL/x.jpeg``, whose exclusion would then have left out a test image too.
    """
    parts = rel.split("/")
    if len(parts) < 3:
        raise ValueError(f"{reprlib.repr(rel)}: expected a path ending in split/CLASS/file name")
    return "/".join(parts[-3:])


def write(path, entries: list[dict], **extra) -> Path:
    """Write entries ({'file', 'reason', 'detail'}) as JSON or CSV, chosen by the suffix."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = sorted(
        ({"file": e["file"], "reason": e["reason"], "detail": e.get("detail", "")} for e in entries),
        key=lambda e: e["file"],
    )
    if path.suffix.lower() == ".csv":
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=["file", "reason", "detail"], lineterminator="\n")
        writer.writeheader()
        # Formula-like cells get a leading quote (read() takes it off again).
        writer.writerows({k: csv_cell(v) for k, v in row.items()} for row in rows)
        write_text(path, buf.getvalue())
    else:
        write_text(path, json.dumps({"format": FORMAT, **extra, "excluded": rows}, indent=1) + "\n")
    return path


# A list of every file of a large data set is a few MB; a larger file is not one of ours. A JSON
# list becomes Python objects many times its size (64 MiB of "{}," made 1.6 GB of dicts): it is
# held to the budget / 32 (16 MiB by default, ``limits.object_limit``) instead; a CSV list is read a
# row at a time. Either names at most MAX_ENTRIES files (Mendeley's full archive has about 100,000).
MAX_LIST_BYTES = 64 << 20
MAX_ENTRIES = 1_000_000
# Columns of a CSV list: file, reason and detail, and room for a few a user adds.
MAX_CSV_COLUMNS = 16


class ExclusionListError(ValueError):
    """An exclusion list that cannot be used; one line naming data.exclude_list and the entry."""

    def __init__(self, path, why: str):
        # Starts with the config key, so the commands print it as one line (effnet_jax.cli.errors).
        super().__init__(f"data.exclude_list={str(path)!r}: {why}")


def read(path) -> dict[str, str]:
    """{file key: reason} from a JSON or CSV exclusion list; errors name the file and entry."""
    if str(path).startswith(PACKAGED):
        path = packaged(str(path)[len(PACKAGED) :])
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"data.exclude_list={str(path)!r}: no such file (write one with "
            "`effnet-data clean --data_dir=RAW --out=DIR`)"
        )
    # The list may come from someone else: bounded in size, and every way it can be malformed
    # (encoding, CSV field sizes, JSON nesting, entry types) is one ExclusionListError.
    csv_list = path.suffix.lower() == ".csv"
    limit = MAX_LIST_BYTES if csv_list else min(MAX_LIST_BYTES, limits.object_limit())
    try:
        data = limits.read_regular_file(str(path), limit)
    except limits.BudgetError:
        raise ExclusionListError(
            path,
            f"not a regular file of at most {limit:,} bytes"
            + ("" if csv_list else f" (a JSON list: the decoded-size budget / {limits.OBJECT_EXPANSION})"),
        ) from None
    except OSError as e:
        raise ExclusionListError(path, f"cannot read it as a UTF-8 exclusion list ({e})") from None
    out = {}
    try:
        rows = _csv_rows(path, data) if csv_list else _json_rows(path, data.decode("utf-8-sig"))
        for i, row in enumerate(rows):
            if i >= MAX_ENTRIES:
                raise ExclusionListError(path, f"more than {MAX_ENTRIES:,} entries; no data set has that many files")
            if not (isinstance(row, dict) and all(isinstance(row.get(k), str) and row[k] for k in ("file", "reason"))):
                raise ExclusionListError(path, f"entry {i} is {reprlib.repr(row)}; expected a file and a reason (text)")
            name = row["file"]
            if "/" not in name:  # written with Windows separators: train\\NORMAL\\x.jpeg
                name = name.replace("\\", "/")
            try:
                for key in _keys_of(name, csv_list):
                    out[key] = row["reason"]
            except ValueError as e:
                raise ExclusionListError(path, f"entry {i}: {e}") from None
    except UnicodeDecodeError as e:
        raise ExclusionListError(path, f"cannot read it as a UTF-8 exclusion list ({e})") from None
    return out


# A byte that is not UTF-8, as ``csv_cell`` writes it into a CSV list (``output_files.printable``).
_ESCAPED_BYTE = re.compile(r"\\x([89a-fA-F][0-9a-fA-F])")


def _keys_of(name: str, csv_list: bool) -> set[str]:
    """The keys an entry names. A CSV list written by ``write`` holds a name's bytes that are not
    UTF-8 as ``\\xNN``; the file's key holds them as surrogates (``os.fsdecode``), so the entry
    names both (a name may also hold ``\\xff`` as text, rare: excluding both is harmless)."""
    key = file_key(name)
    if not csv_list or not _ESCAPED_BYTE.search(key):
        return {key}
    return {key, _ESCAPED_BYTE.sub(lambda m: chr(0xDC00 + int(m.group(1), 16)), key)}


def _csv_rows(path, data: bytes):
    """The rows of a CSV list as dicts, one at a time (decoded as they are read: a 64 MiB list of
    one-character rows, read whole into dicts, took 22 s and 2.4 GB)."""
    text = io.TextIOWrapper(io.BytesIO(data), encoding="utf-8-sig", newline="")
    reader = csv.reader(text)
    try:
        header = next(reader, None)
        if header is None:
            return
        if len(header) > MAX_CSV_COLUMNS or not {"file", "reason"} <= set(header):
            raise ExclusionListError(path, f"CSV header {reprlib.repr(header)}; expected file,reason[,detail]")
        for line in reader:
            if not line:  # a blank line, as csv.DictReader skips it
                continue
            if len(line) > len(header):
                raise ExclusionListError(
                    path, f"line {reader.line_num}: {len(line):,} fields, more than the header's {len(header)}"
                )
            yield {k: csv_text(v) for k, v in zip(header, line)}
    except csv.Error as e:
        raise ExclusionListError(path, f"not a readable CSV file ({e})") from None


def _json_rows(path, text: str) -> list:
    """The entries of a JSON list."""
    try:
        doc = json.loads(text)
    except RecursionError:
        raise ExclusionListError(path, "JSON nested too deeply; expected an exclusion list") from None
    except json.JSONDecodeError as e:
        raise ExclusionListError(path, f"not valid JSON ({e}); expected an exclusion list") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        found = doc.get("format") if isinstance(doc, dict) else None
        raise ExclusionListError(
            path, f'"format" is {reprlib.repr(found)}; expected {FORMAT!r} (written by effnet-data clean)'
        )
    rows = doc.get("excluded", [])
    if not isinstance(rows, list):
        raise ExclusionListError(path, f'"excluded" is {reprlib.repr(rows)}; expected a list of entries')
    return rows


def fingerprint(excluded: dict[str, str]) -> str:
    """Short hash of the excluded keys: prepared data sets built from different lists differ."""
    h = hashlib.sha256("\n".join(sorted(excluded)).encode())
    return h.hexdigest()[:8]
