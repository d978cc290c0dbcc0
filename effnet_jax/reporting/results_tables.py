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
import os
import pathlib
import re
import string

from effnet_jax import limits
from effnet_jax.output_files import UnsafeOutputError, open_output, output_file_problem, printable_line, replaced_output

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
# A number in a cell's format spec ({x:>N}, {x:.Nf}) sizes the string it makes: tables.json's
# ``{x:>2000000000}`` took 2 GB per cell. The tables use at most 4.
MAX_FORMAT_NUMBER = 100


class ResultsError(ValueError):
    """A malformed record, table spec or marked region; the message names the file and what was expected."""


@dataclasses.dataclass(frozen=True)
class StaleRegion:
    path: pathlib.Path
    table: str


def read_text(path: pathlib.Path, errors: str = "strict") -> str:
    """The text of a record file, the specs or a .md page: a regular file of at most the budget / 32 bytes.

    A cloned repository may hold a link to /dev/zero at any of these names: it was read forever.
    ``errors="replace"`` for pages only searched for markers. FileNotFoundError when missing.
    """
    try:
        return limits.read_text_file(str(path), "a results file", errors)
    except FileNotFoundError:
        raise
    except ValueError as e:  # limits.BudgetError, an unreadable or non-UTF-8 file: named in one line
        raise ResultsError(str(e)) from None


def load_records(results_dir: pathlib.Path) -> dict[str, list[dict]]:
    """Every ``results/*.jsonl`` file's records by file stem, each checked for the provenance keys."""
    records = {}
    for path in sorted(pathlib.Path(results_dir).glob("*.jsonl")):
        rows = []
        for number, line in enumerate(read_text(path).splitlines(), 1):
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
        specs = json.loads(read_text(path))
    except FileNotFoundError:
        raise ResultsError(f"{path}: no table specs (expected a JSON object of tables)") from None
    except json.JSONDecodeError as e:
        raise ResultsError(f"{path}: not JSON ({e.msg}, line {e.lineno})") from None
    except RecursionError:
        raise ResultsError(f"{path}: nested too deeply") from None
    if not isinstance(specs, dict):
        raise ResultsError(f"{path}: expected a JSON object of tables, got {type(specs).__name__}")
    for name, spec in specs.items():
        problem = _spec_problem(spec)
        if problem:
            raise ResultsError(f"{path}: table {name!r}: {problem}")
    return specs


def _spec_problem(spec) -> str | None:
    """What is wrong with one table's spec (each key of the type the renderer takes), or None.

    A spec of another shape was a traceback (a number for "source", a list for "where").
    """
    if not isinstance(spec, dict) or "source" not in spec or not spec.get("columns"):
        return "needs 'source' and a non-empty 'columns' list"
    source = spec["source"]
    if not (
        isinstance(source, str) or (isinstance(source, list) and source and all(isinstance(s, str) for s in source))
    ):
        return "'source' must be a results file's name or a list of them"
    if not isinstance(spec.get("where", {}), dict):
        return "'where' must be an object of field: value"
    joins = spec.get("join", [])
    if not isinstance(joins, list) or not all(
        isinstance(j, dict)
        and all(isinstance(j.get(k), str) for k in ("source", "on", "as"))
        and isinstance(j.get("to", ""), str)
        for j in joins
    ):
        return "'join' must be a list of objects with 'source', 'on' and 'as' (and 'to') names"
    if not isinstance(spec["columns"], list):
        return "every column needs 'header' and 'cell'"
    for column in spec["columns"]:
        if not isinstance(column, dict) or "header" not in column or "cell" not in column:
            return "every column needs 'header' and 'cell'"
        cells = [column["cell"]] if isinstance(column["cell"], str) else column["cell"]
        if not isinstance(cells, list) or not all(isinstance(c, str) for c in cells):
            return f"column {column['header']!r}: 'cell' must be a template or a list of templates"
        problem = next(filter(None, map(_template_problem, cells)), None)
        if problem:
            return f"column {column['header']!r}: {problem}"
    return None


def _template_problem(template: str) -> str | None:
    """Why a cell template may not be rendered (a format spec that sizes a huge string), or None."""
    try:
        fields = list(string.Formatter().parse(template))
    except ValueError as e:
        return f"{template!r}: {e}"
    for _, field, spec, _ in fields:
        if field is None or not spec:
            continue
        if "{" in spec:
            return f"{template!r}: a field inside a format spec is not taken"
        if any(len(n.lstrip("0")) > 3 or int(n) > MAX_FORMAT_NUMBER for n in re.findall(r"\d+", spec)):
            return f"{template!r}: a width or precision over {MAX_FORMAT_NUMBER} in a format spec"
    return None


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
        if _OPEN.search(read_text(path, errors="replace")):
            found.append(path)
    return found


def update_files(root: pathlib.Path, results_dir: pathlib.Path, write: bool) -> list[StaleRegion]:
    """The regions whose table differs from the records; with ``write``, those files rewritten."""
    tables = render_all(results_dir)
    stale = []
    rewritten = {}
    for path in markdown_files(root):
        text = read_text(path)
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
            problem = output_file_problem(str(path), "--write") or output_file_problem(f"{path}.tmp", "--write")
            if problem:
                raise ResultsError(problem)
        for path, new in rewritten.items():
            try:
                _replace_page(str(path), new)
            except UnsafeOutputError as e:
                raise ResultsError(str(e)) from None
    return stale


def _replace_page(path: str, text: str) -> None:
    """``text`` written beside ``path`` and renamed over it: a kill mid-write left a hand-written page cut short."""
    with replaced_output(path) as f:
        f.write(text)


def append_record(path, record: dict) -> None:
    """Append one record to a results file (benchmarks and experiments call this), provenance checked first."""
    missing = [k for k in PROVENANCE_KEYS if k not in record]
    if missing:
        raise ResultsError(f"{path}: record lacks {', '.join(missing)}")
    # Never appended through a link (or to a FIFO) planted at the results file's name.
    with open_output(path, "a") as f:
        # A last line saved without its newline (some editors do) would get the record glued to it: one bad line.
        f.write(("\n" if _last_line_open(path) else "") + json.dumps(record, sort_keys=False) + "\n")


def append_new_record(path, record: dict) -> None:
    """Appends ``record`` to the results file ``path`` (``effnet-results record --out``), refusing an id it holds.

    The file is read through ``read_text``: one of gigabytes (a sparse file costs nothing to
    make) is refused naming it, as a link or FIFO is, and nothing is appended.
    """
    problem = output_file_problem(str(path), "--out")  # a link or FIFO is neither read nor appended through
    if problem:
        raise UnsafeOutputError(problem)
    try:
        text = read_text(pathlib.Path(path))
    except FileNotFoundError:
        text = ""
    except ResultsError as e:
        raise ResultsError(f"{e}; nothing appended") from None
    for number, line in enumerate(text.split("\n"), 1):  # the lines a file gives, as effnet-results wrote them
        try:
            held = json.loads(line) if line.strip() else {}
        except ValueError as e:
            raise ResultsError(f"{path}:{number}: not a JSON record ({e}); nothing appended") from None
        if isinstance(held, dict) and held.get("id") == record["id"]:
            raise ResultsError(f"{path}:{number}: a record with id {record['id']!r} exists already")
    append_record(path, record)


def _last_line_open(path) -> bool:
    """Whether the file ``path`` (a regular file ``open_output`` accepted) is not empty and does not end in a newline."""
    with limits.open_regular_file(str(path), follow_symlinks=False) as f:
        size = os.fstat(f.fileno()).st_size
        return size > 0 and os.pread(f.fileno(), 1, size - 1) != b"\n"
