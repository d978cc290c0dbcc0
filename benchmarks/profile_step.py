"""Where the effnet_jax train step spends its time: a profile grouped by layer kind, forward and backward.

    python benchmarks/profile_step.py                               # B0, 224 px, batch 16
    python benchmarks/profile_step.py --variant tf_efficientnet_lite0 --batch 32 --top 40

Runs bench_model.py's train step (forward, backward, AdamW; BatchNorm in train mode)
under jax.profiler, then sums the time of every compiled operation by what it computes:
the op_name XLA keeps in its metadata (e.g. "transpose(jvp(EfficientNet))/blocks_1_0/
conv_dw/reduce"), with block indices folded ("B/conv_dw/reduce") and split into forward
("fwd") and backward ("bwd", the transposed JVP). Also lists the single slowest fusions
with their output shapes, and the ops XLA runs as one task (no split over threads). A fusion is named after one of the ops it holds, so read the
groups as where the time goes, not as exact per-op costs.
"""

from __future__ import annotations

import argparse
import collections
import gzip
import json
import pathlib
import re
import tempfile

import numpy as np
from bench_model import jax_runners

# Profiler bookkeeping, not compiled work.
NOT_OPS = ("ThunkExecutor", "$", "PjitFunction", "SlinkyThreadPool", "CommonPjRt", "Allocate", "Parse")


def op_metadata(hlo_text: str) -> tuple[dict[str, str], dict[str, str], dict[str, int]]:
    """Instruction name -> op_name, output shape and parallel task count, from optimised HLO text.

    The task count is XLA's split of the op's outer output dimensions over threads
    (``outer_dimension_partitions`` in its backend config); 1 when it runs as one task.
    """
    names, shapes, tasks = {}, {}, {}
    for line in hlo_text.splitlines():
        m = re.match(r'\s*(?:ROOT )?%(\S+) = (\S+) .*?op_name="([^"]+)"', line)
        if m:
            names[m.group(1)], shapes[m.group(1)] = m.group(3), m.group(2)
            parts = re.search(r'"outer_dimension_partitions":\[([^\]]*)\]', line)
            counts = [int(v.strip('" ')) for v in parts.group(1).split(",") if v.strip('" ')] if parts else []
            tasks[m.group(1)] = int(np.prod(counts)) if counts else 1
    return names, shapes, tasks


def layer_kind(op_name: str) -> tuple[str, str]:
    """("fwd" | "bwd", the op path with block indices and BatchNorm names folded)."""
    direction = "bwd" if "transpose(" in op_name else "fwd"
    path = op_name.split("/", 2)[-1]
    path = re.sub(r"blocks_\d+_\d+", "B", path)
    return direction, re.sub(r"\.?norm/bn\d", "BN", path)


def trace_events(trace_dir: pathlib.Path) -> list[dict]:
    (path,) = sorted(trace_dir.glob("plugins/profile/*/perfetto_trace.json.gz"))[-1:]
    with gzip.open(path) as f:
        data = json.load(f)
    events = data["traceEvents"] if isinstance(data, dict) else data
    return [e for e in events if e.get("ph") == "X" and not e["name"].startswith(NOT_OPS)]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", default="efficientnet_b0")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--depthwise", default="auto", help="effnet_jax depthwise_impl")
    parser.add_argument("--steps", type=int, default=2, help="profiled steps (after two warm-up steps)")
    parser.add_argument("--top", type=int, default=30, help="rows of each table")
    args = parser.parse_args()

    import jax

    _, run_train = jax_runners(args.variant, args.batch, args.size, args.depthwise)
    run_train()
    run_train()
    names, shapes, tasks = op_metadata(run_train.compiled_text())
    with tempfile.TemporaryDirectory() as tmp:
        jax.profiler.start_trace(tmp, create_perfetto_trace=True)
        for _ in range(args.steps):
            run_train()
        jax.profiler.stop_trace()
        events = trace_events(pathlib.Path(tmp))

    by_kind, by_op = collections.Counter(), collections.Counter()
    for e in events:
        ms = e.get("dur", 0) / 1e3 / args.steps
        by_kind[layer_kind(names.get(e["name"], "?"))] += ms
        by_op[e["name"]] += ms
    total = sum(by_kind.values())
    print(f"{args.variant}, {args.size} px, batch {args.batch}: {total:.0f} ms of compiled work per step\n")
    print(f"{'ms/step':>8} {'share':>6}  dir  what")
    for (direction, kind), ms in by_kind.most_common(args.top):
        print(f"{ms:8.1f} {ms / total:6.1%}  {direction}  {kind[:100]}")
    print(f"\n{'ms/step':>8}  slowest fusions: output shape, op_name")
    for op, ms in by_op.most_common(args.top):
        print(f"{ms:8.1f}  {op} {shapes.get(op, '?')} {names.get(op, '?')[-90:]}")
    # XLA splits an op it emits itself over threads by its outer output dimensions; library
    # calls (ynn_/XNNPACK fusions, dots, convolutions) thread inside and show 1 here.
    single = collections.Counter({op: ms for op, ms in by_op.items() if tasks.get(op, 1) == 1})
    library = sum(ms for op, ms in single.items() if op.startswith(("ynn_", "xnn_", "dot", "convolution")))
    print(f"\n{sum(single.values()):.0f} ms/step in ops XLA runs as one task ({library:.0f} ms of it library calls)")
    print(f"{'ms/step':>8}  one task: output shape, op_name")
    for op, ms in single.most_common(args.top):
        print(f"{ms:8.1f}  {op} {shapes.get(op, '?')} {names.get(op, '?')[-90:]}")


if __name__ == "__main__":
    main()
