"""Every GPU measurement of this project as pieces of a few minutes each, run in order within a time budget.

    python benchmarks/gpu_lease.py --out DIR [--budget 780] [--data DATA] [--only NAME,NAME] [--tiny]
    python benchmarks/gpu_lease.py --list

A lent GPU often comes for minutes (one 15-minute lease, its start included), and one whole
gpu_bench.py run with every setting's cold compile takes longer. Here each measurement is a
piece: one or a few commands, each its own process with its own time limit, in the order that
matters most (the open questions first). A piece starts only while its estimate fits in what
is left of ``--budget``; a skipped piece is named. A piece already in DIR/pieces.jsonl is done:
rerun with the same DIR (an earlier lease's file copied back) and the next lease measures the
rest. Each piece appends one row to DIR/pieces.jsonl: its name, what it answers, every command
with its exit status and wall seconds, and the rows its benchmark measured; every command's
output goes to DIR/lease.log. Two files in all, so a short lease's results come back whole.

``--data`` is a folder holding chest_xray/ and chest_xray_external/ (EFFNET_DATA_DIR); the pieces
that need real X-rays are skipped without it. ``--tiny`` runs every piece at toy size on any
machine (a CPU too): it checks the commands, it measures nothing. Rows become results records
with ``record.py`` (results/benchmarks_gpu.jsonl); benchmarks/README.md says which piece feeds
which table.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time

PY = sys.executable


@dataclasses.dataclass(frozen=True)
class Piece:
    """One measurement: ``commands`` run in turn (argv lists; ``{tmp}``, ``{rows}`` and ``{data}`` filled in)."""

    name: str
    question: str
    estimate_s: int  # on an H200, cold caches, for the budget; a piece over it still runs to its limit
    commands: tuple
    tiny: tuple = ()  # the same commands at toy size, for --tiny
    env: tuple = ()  # (NAME, VALUE) pairs for every command of the piece
    needs_data: bool = False

    def limit_s(self) -> int:
        return 3 * self.estimate_s


def _bench(name: str, question: str, estimate_s: int, variant: str, batch: int, env=()) -> Piece:
    """A gpu_bench.py setting (effnet_jax against timm, train step and eval) as a piece."""
    bench = [PY, "benchmarks/gpu_bench.py", "--variants", variant]
    return Piece(
        name, question, estimate_s, (bench + ["--batch", str(batch), "--steps", "10"],), (bench + ["--tiny"],), env
    )


_SHIPPED = ["--config=configs/pneumonia.py", "--workdir={tmp}/shipped"]
_DEBUG = ["--config=configs/debug.py", "--workdir={tmp}/debug"]
_TINY_RUN = ["--config.num_train_steps=2", "--config.eval_every_steps=2", "--config.checkpoint_every_steps=2"]
_TOOLS = (
    ["effnet-eval", "--workdir={tmp}/RUN", "--split=external"],
    ["effnet-predict", "--workdir={tmp}/RUN", "--out={tmp}/predictions.csv", "{data}/chest_xray_external"],
    ["effnet-export", "--workdir={tmp}/RUN", "--out={tmp}/exported"],
    ["effnet-predict", "--exported={tmp}/exported", "--out={tmp}/exported.csv", "{data}/chest_xray_external"],
)

PIECES = (
    _bench(
        "compile-b0",
        "B0 train step (batch 128, bf16) against timm, and its cold first step: under 40 s?",
        200,
        "efficientnet_b0",
        128,
    ),
    _bench(
        "compile-b0-autotune0",
        "the same with XLA's GPU autotuning off: is the cold first step autotuning?",
        160,
        "efficientnet_b0",
        128,
        env=(("XLA_FLAGS", "--xla_gpu_autotune_level=0"),),
    ),
    Piece(
        "seeds-vmap",
        "two seeds of the shipped model as one vmapped program against one after another: at most 0.6x?",
        240,
        (
            [
                PY,
                "benchmarks/bench_seeds.py",
                "--program",
                "on",
                "--steps",
                "60",
                "--examples",
                "512",
                "--workdir",
                "{tmp}/seeds",
                "--record",
                "{rows}",
            ],
        ),
        (
            [
                PY,
                "benchmarks/bench_seeds.py",
                "--program",
                "on",
                "--steps",
                "1",
                "--examples",
                "32",
                "--workdir",
                "{tmp}/seeds",
                "--record",
                "{rows}",
            ],
        ),
    ),
    Piece(
        "fed-shipped",
        "the shipped recipe's step fed by the grain path against the resident path: at least 0.9x?",
        200,
        ([PY, "benchmarks/bench_feed.py", "--config", "configs/pneumonia.py", "--steps", "30", "--record", "{rows}"],),
        (
            [
                PY,
                "benchmarks/bench_feed.py",
                "--config",
                "configs/debug.py",
                "--steps",
                "1",
                "--repeats",
                "1",
                "--record",
                "{rows}",
            ],
        ),
        needs_data=True,
    ),
    Piece(
        "path-debug",
        "the single-GPU path as a user starts it: launch/gpu.sh with configs/debug.py, wall time",
        150,
        (["bash", "launch/gpu.sh", "--", *_DEBUG],),
        (["bash", "launch/gpu.sh", "--", *_DEBUG, *_TINY_RUN],),
    ),
    Piece(
        "path-shipped",
        "the shipped recipe trained on the card (launch/gpu.sh), then effnet-eval, -predict, -export on its run",
        420,
        (["bash", "launch/gpu.sh", "--", *_SHIPPED], *[[a.replace("RUN", "shipped") for a in c] for c in _TOOLS]),
        (
            ["bash", "launch/gpu.sh", "--", *_SHIPPED, "--config.soup_seeds=1", *_TINY_RUN],
            *[[a.replace("RUN", "shipped") for a in c] for c in _TOOLS],
        ),
        needs_data=True,
    ),
    _bench(
        "lite0-256-mem70",
        "Lite0 at batch 256 with 70% of the card for JAX: was the H100's 0.74x timm the 45% memory cap?",
        160,
        "tf_efficientnet_lite0",
        256,
        env=(("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.7"),),
    ),
    _bench("b0-256", "B0 at batch 256 against timm", 160, "efficientnet_b0", 256),
    _bench("lite0-128", "Lite0 at batch 128 against timm", 160, "tf_efficientnet_lite0", 128),
)


def plan(pieces, done: set, budget_s: float, have_data: bool, only: set | None = None) -> tuple[list, list]:
    """(pieces to run in order, [(name, why)] skipped) for a budget, before anything runs.

    The budget counts estimates: a piece that does not fit is skipped and the smaller ones
    after it may still run.
    """
    chosen, skipped, left = [], [], budget_s
    for piece in pieces:
        if only is not None and piece.name not in only:
            continue
        if piece.name in done:
            skipped.append((piece.name, "done in an earlier lease"))
        elif piece.needs_data and not have_data:
            skipped.append((piece.name, "needs --data"))
        elif piece.estimate_s > left:
            skipped.append((piece.name, f"estimate {piece.estimate_s} s, {left:.0f} s of the budget left"))
        else:
            chosen.append(piece)
            left -= piece.estimate_s
    return chosen, skipped


def done_pieces(path: str) -> set:
    """Names of the pieces DIR/pieces.jsonl holds measured (not --tiny) with every command exiting 0."""
    if not os.path.exists(path):
        return set()
    with open(path) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return {r["piece"] for r in rows if not r["tiny"] and all(c["rc"] == 0 for c in r["commands"])}


def _fill(argv, **values) -> list:
    return [a.format(**values) for a in argv]


def run_piece(piece: Piece, tiny: bool, data: str, log) -> dict:
    """Runs one piece's commands (stopping at the first that fails) and returns its row."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", **dict(piece.env))
    if tiny:
        env["JAX_PLATFORMS"] = "cpu"  # launch/gpu.sh asks for cuda otherwise
    if data:
        env["EFFNET_DATA_DIR"] = data
    results, rows = [], []
    with tempfile.TemporaryDirectory(prefix=f"lease_{piece.name}_") as tmp:
        rows_path = os.path.join(tmp, "rows.jsonl")
        for argv in piece.tiny if tiny else piece.commands:
            argv = _fill(argv, tmp=tmp, rows=rows_path, data=data or "DATA")
            if argv[:2] == [PY, "benchmarks/gpu_bench.py"]:
                argv += ["--jsonl", rows_path]
            log.write(f"\n=== {piece.name}: {shlex.join(argv)}\n")
            log.flush()
            start = time.perf_counter()
            try:
                rc = subprocess.run(
                    argv, stdout=log, stderr=subprocess.STDOUT, env=env, timeout=piece.limit_s()
                ).returncode
            except subprocess.TimeoutExpired:
                rc = 124
            results.append({"argv": shlex.join(argv), "rc": rc, "wall_s": round(time.perf_counter() - start, 1)})
            if rc != 0:
                break
        if os.path.exists(rows_path):
            with open(rows_path) as f:
                rows = [json.loads(line) for line in f if line.strip()]
    return {
        "piece": piece.name,
        "question": piece.question,
        "tiny": tiny,
        "env": dict(piece.env),
        "commands": results,
        "rows": rows,
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", help="folder for pieces.jsonl and lease.log (kept across leases)")
    parser.add_argument("--budget", type=float, default=780, help="seconds of estimates to start within")
    parser.add_argument("--data", default="", help="folder holding chest_xray/ and chest_xray_external/")
    parser.add_argument("--only", default="", help="comma-separated piece names")
    parser.add_argument("--tiny", action="store_true", help="every piece at toy size: checks the commands")
    parser.add_argument("--list", action="store_true", help="print the pieces in order and exit")
    args = parser.parse_args(argv)
    names = [p.name for p in PIECES]
    only = set(args.only.split(",")) if args.only else None
    if only and only - set(names):
        parser.error(f"--only: no piece {', '.join(sorted(only - set(names)))}; the pieces are {', '.join(names)}")
    if args.list:
        for p in PIECES:
            print(f"{p.name:<22} ~{p.estimate_s:>4} s{'  (needs --data)' if p.needs_data else ''}  {p.question}")
        return 0
    if not args.out:
        parser.error("--out is required (the folder the lease's results go to)")
    if args.data and not os.path.isdir(os.path.join(args.data, "chest_xray")):
        parser.error(f"--data {args.data}: no chest_xray/ folder inside")
    os.makedirs(args.out, exist_ok=True)
    table = os.path.join(args.out, "pieces.jsonl")
    budget = float("inf") if args.tiny else args.budget  # the estimates are a GPU's, not a toy run's
    chosen, skipped = plan(PIECES, done_pieces(table), budget, bool(args.data), only)
    for name, why in skipped:
        print(f"skipped {name}: {why}", flush=True)
    failed = 0
    with open(os.path.join(args.out, "lease.log"), "a") as log:
        for piece in chosen:
            row = run_piece(piece, args.tiny, os.path.abspath(args.data) if args.data else "", log)
            with open(table, "a") as f:
                f.write(json.dumps(row) + "\n")
            status = ", ".join(f"rc {c['rc']} in {c['wall_s']} s" for c in row["commands"])
            print(f"{piece.name}: {status}; {len(row['rows'])} rows", flush=True)
            failed += any(c["rc"] != 0 for c in row["commands"])
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
