"""effnet-predict's ``--out`` file: one row per input, CSV or JSON lines by the file's extension.

Rows are written as they come (and flushed) to ``OUT.tmp``, renamed over ``OUT`` when the
writer closes (the run done, or stopped by an error: the rows so far are kept). A kill
leaves the earlier ``OUT`` whole and this run's rows in ``OUT.tmp``. Text is written by
``effnet_jax.output_files``: formula-like CSV cells get a leading quote, file names that are
not UTF-8 are written with ``\\xNN`` escapes (in CSV and JSON lines alike), a CSV cell's
control characters (a newline, an escape code, a right-to-left override) are written as
backslash escapes (``printable_line``) so each row stays one line, and the file is never
written through a symbolic link planted at its name.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os

from effnet_jax.output_files import csv_cell, open_output, open_output_fd, printable, printable_line

FORMATS = {".csv": "csv", ".jsonl": "jsonl"}
# The fields of every record (effnet-predict --help), in one place: CSV columns, JSON-lines
# keys (where present) and the exported model's records alike.
COLUMNS = ("file", "prob_pneumonia", "label", "threshold", "temperature", "gradcam", "gradcam_panel", "error")


def output_format(path: str) -> str:
    """'csv' or 'jsonl' from ``path``'s extension; ValueError naming ``--out`` otherwise."""
    ext = os.path.splitext(path)[1].lower()
    if ext not in FORMATS:
        raise ValueError(f"--out={path}: expected a .csv or .jsonl file name")
    return FORMATS[ext]


def class_columns(class_names) -> tuple[str, ...]:
    """The CSV columns past two classes: one ``prob_<CLASS>`` per class in place of prob_pneumonia and threshold."""
    probs = tuple(f"prob_{c}" for c in class_names)
    return ("file", *probs, "label", "temperature", "gradcam", "gradcam_panel", "error")


class PredictionWriter:
    """Writes prediction records to ``path``: CSV with a header (every column, empty when absent) or JSON lines.

    ``class_names``: a task of more than two classes writes one probability column per class.
    """

    def __init__(self, path: str, class_names=None):
        self.columns = class_columns(class_names) if class_names and len(class_names) > 2 else COLUMNS
        self.format = output_format(path)
        self.path, self._tmp = path, f"{path}.tmp"
        if os.path.lexists(path):  # a link, FIFO or shared file at the name: refused, not renamed over
            os.close(open_output_fd(path, os.O_RDONLY))
        self._file = open_output(self._tmp, "w", encoding="utf-8", newline="" if self.format == "csv" else None)
        self._csv = None
        if self.format == "csv":
            self._csv = csv.DictWriter(self._file, fieldnames=self.columns, extrasaction="ignore")
            self._csv.writeheader()

    def write(self, record: dict) -> None:
        try:
            if self._csv is not None:
                flat = {**record, **{f"prob_{c}": p for c, p in record.get("probs", {}).items()}}
                self._csv.writerow({k: csv_cell(_one_line(flat.get(k, ""))) for k in self.columns})
            else:
                self._file.write(json.dumps(printable_record(record)) + "\n")
            self._file.flush()
        except OSError as e:  # a full disk: the error names --out
            raise OSError(e.errno, e.strerror, self.path) from e

    def close(self) -> None:
        """Renames the rows written over ``path``; when they cannot be saved (a full disk), ``path`` is left as it was."""
        if self._file.closed:
            return
        try:
            self._file.close()
        except OSError as e:
            with contextlib.suppress(OSError):
                os.remove(self._tmp)
            raise OSError(e.errno, e.strerror, self.path) from e
        os.replace(self._tmp, self.path)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _one_line(value):
    """A CSV cell's text with control characters escaped (``printable_line``), as JSON lines escapes them."""
    return printable_line(value) if isinstance(value, str) else value


def printable_record(record: dict) -> dict:
    """``record`` with its text values made printable (``output_files.printable``): one escape for CSV and JSON."""
    return {k: printable(v) if isinstance(v, str) else v for k, v in record.items()}
