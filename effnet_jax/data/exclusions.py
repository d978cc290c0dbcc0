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
from pathlib import Path

from effnet_jax.output_files import csv_cell, csv_text

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
    """Key of a layout path: its last three parts, 'split/CLASS/file name'."""
    parts = rel.replace("\\", "/").split("/")
    if len(parts) < 3:
        raise ValueError(f"{rel!r}: expected a path ending in split/CLASS/file name")
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
        path.write_text(buf.getvalue(), encoding="utf-8")
    else:
        path.write_text(json.dumps({"format": FORMAT, **extra, "excluded": rows}, indent=1) + "\n")
    return path


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
    text = path.read_text()
    if path.suffix.lower() == ".csv":
        rows = [
            {k: csv_text(v) if isinstance(v, str) else v for k, v in r.items()}
            for r in csv.DictReader(io.StringIO(text))
        ]
        if rows and not {"file", "reason"} <= set(rows[0]):
            raise ValueError(f"{path}: CSV header {list(rows[0])}; expected file,reason[,detail]")
    else:
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON ({e}); expected an exclusion list") from e
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            raise ValueError(
                f'{path}: "format" is {doc.get("format") if isinstance(doc, dict) else None!r}; '
                f"expected {FORMAT!r} (written by effnet-data clean)"
            )
        rows = doc.get("excluded", [])
    out = {}
    for i, row in enumerate(rows):
        if not isinstance(row, dict) or not row.get("file") or not row.get("reason"):
            raise ValueError(f"{path}: entry {i} is {row!r}; expected a file and a reason")
        out[file_key(row["file"])] = row["reason"]
    return out


def fingerprint(excluded: dict[str, str]) -> str:
    """Short hash of the excluded keys: prepared data sets built from different lists differ."""
    h = hashlib.sha256("\n".join(sorted(excluded)).encode())
    return h.hexdigest()[:8]
