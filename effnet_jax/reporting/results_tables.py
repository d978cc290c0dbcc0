"""Markdown tables rendered from the result records in ``results/`` (JSON lines), and the .md regions that hold them.

    results/NAME.jsonl   one record a line: what ran (command, config, commit, machine, date) and what it measured
    results/tables.json  {table: {"source": NAME or [NAME, ...], "where": {field: value},
                                  "join": [{"source", "on", "as", "to"?}], "columns": [{"header", "cell"}]}}
    any .md file         <!-- results:TABLE --> ... <!-- /results:TABLE -->, rewritten from the records

A cell is a ``str.format`` template over the record (``{external[auc]:.3f}``), or a list of
templates of which the first whose fields all exist is used; none gives an empty cell. A
``where`` value matches a field equal to it, or a list field holding it; a ``join`` puts the
first record of another source whose ``to`` field (default: ``on``) equals the row's ``on``
field under ``as``. A number is written once, in a record; every table that shows it is
rendered from there.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import re

from effnet_jax.output_files import UnsafeOutputError, open_output, output_file_problem, printable_line, write_text

# Every record says what ran; a value may be null where it does not apply (a published paper ran no command).
PROVENANCE_KEYS = ("command", "config", "commit", "machine", "date")
SPEC_FILE = "tables.json"
# A marker is a line of its own; one quoted inside prose (`<!-- results:NAME -->`) is not one.
_REGION = re.compile(
    r"^(<!-- results:(?P<name>[\w.-]+) -->\n)(?P<body>.*?)^(<!-- /results:(?P=name) -->)$", re.S | re.M
)
_OPEN = re.compile(r"^<!-- results:([\w.-]+) -->$", re.M)
# Folders never searched for .md files: VCS data, environments, run outputs.
_SKIP_DIRS = {".git", ".venv", "venv", "node_modules", "runs", "build", "dist", "__pycache__"}


class ResultsError(ValueError):
    """A malformed record, table spec or marked region; the message names the file and what was expected."""


@dataclasses.dataclass(frozen=True)
class StaleRegion:
    path: pathlib.Path
    table: str


def load_records(results_dir: pathlib.Path) -> dict[str, list[dict]]:
    """Every ``results/*.jsonl`` file's records by file stem, each checked for the provenance keys."""
    records = {}
    for path in sorted(pathlib.Path(results_dir).glob("*.jsonl")):
        rows = []
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ResultsError(f"{path}:{number}: not a JSON object ({e.msg})") from None
            if not isinstance(row, dict):
                raise ResultsError(f"{path}:{number}: expected a JSON object, got {type(row).__name__}")
            missing = [k for k in PROVENANCE_KEYS if k not in row]
            if missing:
                raise ResultsError(f"{path}:{number}: missing {', '.join(missing)} (every record says what ran)")
            rows.append(row)
        records[path.stem] = rows
    return records


def load_specs(results_dir: pathlib.Path) -> dict[str, dict]:
    """The table specs of ``results/tables.json``, each checked for a source and columns."""
    path = pathlib.Path(results_dir) / SPEC_FILE
    try:
        specs = json.loads(path.read_text())
    except FileNotFoundError:
        raise ResultsError(f"{path}: no table specs (expected a JSON object of tables)") from None
    except json.JSONDecodeError as e:
        raise ResultsError(f"{path}: not JSON ({e.msg}, line {e.lineno})") from None
    for name, spec in specs.items():
        if not isinstance(spec, dict) or "source" not in spec or not spec.get("columns"):
            raise ResultsError(f"{path}: table {name!r} needs 'source' and a non-empty 'columns' list")
        for column in spec["columns"]:
            if "header" not in column or "cell" not in column:
                raise ResultsError(f"{path}: table {name!r}: every column needs 'header' and 'cell'")
    return specs


def _matches(record: dict, where: dict) -> bool:
    for key, want in where.items():
        have = record.get(key)
        if not (have == want or (isinstance(have, list) and want in have)):
            return False
    return True


def _joined(row: dict, others: list[dict], join: dict) -> dict:
    # "to" names the other source's field when it differs from the row's ("on").
    key, other_key = join["on"], join.get("to", join["on"])
    match = next((o for o in others if key in row and o.get(other_key) == row[key]), None)
    return row if match is None else {**row, join["as"]: match}


def render_cell(templates, record: dict) -> str:
    """The first template whose fields the record has, formatted; '' when none fits (``markdown_table`` escapes it)."""
    for template in [templates] if isinstance(templates, str) else templates:
        try:
            text = template.format_map(record)
        except (KeyError, IndexError, TypeError, ValueError):
            continue
        return text
    return ""


def spec_sources(spec: dict) -> list[str]:
    """The results files (stems) a table spec's rows come from: its "source", one name or a list."""
    return [spec["source"]] if isinstance(spec["source"], str) else list(spec["source"])


def tables_naming(specs: dict[str, dict], source: str) -> list[str]:
    """The tables that show a record of ``source`` whose ``tables`` field names them."""
    return [t for t, spec in specs.items() if source in spec_sources(spec) and spec.get("where", {}).get("tables") == t]


def render_table(name: str, spec: dict, records: dict[str, list[dict]]) -> str:
    """One markdown table: a row per matching record of the spec's sources, in file order."""
    sources = spec_sources(spec)
    for join in spec.get("join", []):
        sources = [*sources, join["source"]]
    for source in sources:
        if source not in records:
            raise ResultsError(f"table {name!r}: no results/{source}.jsonl")
    rows = [r for s in sources[: len(sources) - len(spec.get("join", []))] for r in records[s]]
    rows = [r for r in rows if _matches(r, spec.get("where", {}))]
    if not rows:
        raise ResultsError(f"table {name!r}: no record of {', '.join(sources)} matches {spec.get('where')}")
    for join in spec.get("join", []):
        rows = [_joined(r, records[join["source"]], join) for r in rows]
    headers = [c["header"] for c in spec["columns"]]
    return markdown_table(headers, [[render_cell(c["cell"], row) for c in spec["columns"]] for row in rows])


def markdown_table(headers: list[str], rows: list[list[str]]) -> str:
    """A markdown table of text cells; a ``|``, line break or other control character inside a cell cannot split a row.

    A newline reads as a space; ``\\r``, escape codes and the like are written as backslash
    escapes (``printable_line``), as file names are in CSV cells.
    """
    cell = lambda text: printable_line(str(text).replace("\n", " ")).replace("|", "\\|")
    lines = ["| " + " | ".join(map(cell, headers)) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(map(cell, row)) + " |" for row in rows]
    return "\n".join(lines)


def render_all(results_dir: pathlib.Path) -> dict[str, str]:
    """Every table of ``results/tables.json``, rendered."""
    records = load_records(results_dir)
    return {name: render_table(name, spec, records) for name, spec in load_specs(results_dir).items()}


def rewrite_regions(text: str, tables: dict[str, str], where: str = "<text>") -> str:
    """``text`` with every marked region's body replaced by its rendered table."""
    opened = _OPEN.findall(text)
    closed = [m.group("name") for m in _REGION.finditer(text)]
    if sorted(opened) != sorted(closed):
        unclosed = sorted(set(opened) - set(closed)) or opened
        raise ResultsError(f"{where}: <!-- results:{unclosed[0]} --> has no <!-- /results:{unclosed[0]} --> after it")
    for name in opened:
        if name not in tables:
            raise ResultsError(f"{where}: region results:{name} names no table of results/{SPEC_FILE}")
    return _REGION.sub(lambda m: f"{m.group(1)}{tables[m.group('name')]}\n{m.group(4)}", text)


def markdown_files(root: pathlib.Path) -> list[pathlib.Path]:
    """The .md files under ``root`` that hold a marked region."""
    found = []
    for path in sorted(pathlib.Path(root).rglob("*.md")):
        if _SKIP_DIRS.intersection(path.relative_to(root).parts[:-1]):
            continue
        if _OPEN.search(path.read_text(errors="replace")):
            found.append(path)
    return found


def update_files(root: pathlib.Path, results_dir: pathlib.Path, write: bool) -> list[StaleRegion]:
    """The regions whose table differs from the records; with ``write``, those files rewritten."""
    tables = render_all(results_dir)
    stale = []
    rewritten = {}
    for path in markdown_files(root):
        text = path.read_text()
        new = rewrite_regions(text, tables, str(path))
        if new == text:
            continue
        old_bodies = {m.group("name"): m.group("body") for m in _REGION.finditer(text)}
        new_bodies = {m.group("name"): m.group("body") for m in _REGION.finditer(new)}
        stale.extend(StaleRegion(path, n) for n in new_bodies if old_bodies.get(n) != new_bodies[n])
        rewritten[path] = new
    if write:
        # A .md that is a link (or FIFO, or shared hard link) is refused before any file is
        # rewritten, naming it: nothing is written through it to wherever it points.
        for path in rewritten:
            problem = output_file_problem(str(path), "--write")
            if problem:
                raise ResultsError(problem)
        for path, new in rewritten.items():
            try:
                write_text(path, new)
            except UnsafeOutputError as e:
                raise ResultsError(str(e)) from None
    return stale


def append_record(path, record: dict) -> None:
    """Append one record to a results file (benchmarks and experiments call this), provenance checked first."""
    missing = [k for k in PROVENANCE_KEYS if k not in record]
    if missing:
        raise ResultsError(f"{path}: record lacks {', '.join(missing)}")
    # Never appended through a link (or to a FIFO) planted at the results file's name.
    with open_output(path, "a") as f:
        f.write(json.dumps(record, sort_keys=False) + "\n")
