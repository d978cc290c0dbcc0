"""Input pipeline throughput: training images/s at 224 px (decode + resize; augmentation is in the step), by worker count.

    python benchmarks/bench_pipeline.py [--manual_dir ../shared/data/chest_xray]
        [--data_dir /tmp/effnet_jax_tfds] [--workers 0,1,2] [--batch_size 32] [--batches 60]

Prepares the shared chest_xray data once (into --data_dir), then times create_split()
batches after a warm-up (worker start-up excluded). Also prints the single-thread cost
of each per-image stage, which is what bounds one worker.
"""

import argparse
import os
import platform
import time
from pathlib import Path

import record

from effnet_jax.data import data_dir, pipeline, sources, transforms
from effnet_jax.train.config import default_data_config

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
REPO = Path(__file__).resolve().parents[1]


def machine() -> str:
    """CPU model, core count and load: throughput on a shared machine depends on all three."""
    model = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return f"{model}; {os.cpu_count()} cores; load average {load}"


def stage_costs(cfg, size: int, n: int = 200) -> dict[str, float]:
    """Milliseconds per image of each stage, in this thread alone."""
    _, reader = sources.catalog(cfg)
    sel = sources.selection(cfg, "train")
    idx = range(min(n, len(sel)))
    out = {}

    def timed(name, fn):
        # CPU time of this thread: what the stage costs, whatever else shares the machine.
        start = time.thread_time()
        result = [fn(i) for i in idx]
        out[name] = (time.thread_time() - start) / len(idx) * 1e3
        return result

    raws = timed("read record", lambda i: reader.read_image(int(sel.part[i]), int(sel.record[i])))
    ims = timed("decode", lambda i: transforms.decode_gray(raws[i], size))
    timed("resize", lambda i: transforms.center_resize(ims[i], size))
    return out


def _children_cpu_s() -> float:
    """CPU seconds used so far by this process's live child processes (grain workers)."""
    total = 0
    for children in Path("/proc/self/task").glob("*/children"):
        for pid in children.read_text().split():
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                total += int(fields[11]) + int(fields[12])  # utime + stime, in clock ticks
            except (OSError, IndexError):
                pass
    return total / os.sysconf("SC_CLK_TCK")


def _self_cpu_s() -> float:
    t = os.times()
    return t.user + t.system


def throughput(cfg, workers: int, batch_size: int, batches: int, size: int):
    """(wall img/s, images per CPU-second of the workers (or of this process if 0 workers))."""
    cfg = cfg.copy_and_resolve_references()
    cfg.num_workers = workers
    ds = pipeline.create_split(
        cfg,
        "train",
        training=True,
        batch_size=batch_size,
        image_size=size,
        mean=MEAN,
        std=STD,
        seed=0,
        shard_index=0,
        shard_count=1,
    )
    it = iter(ds)
    try:
        for _ in range(3):  # warm-up: worker start-up, first file opens
            next(it)
        start, cpu0, self0 = time.perf_counter(), _children_cpu_s(), _self_cpu_s()
        for _ in range(batches):
            batch = next(it)
        elapsed = time.perf_counter() - start
        cpu = _children_cpu_s() - cpu0 if workers else _self_cpu_s() - self0
        frame = pipeline.training_frame(cfg, "train", size)
        assert batch["gray"].shape == (batch_size, frame, frame)
    finally:
        it.close()
    n = batches * batch_size
    return n / elapsed, n / cpu if cpu > 0 else float("nan")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--manual_dir",
        default=data_dir.folder("chest_xray"),
        help="chest_xray folder (default: $EFFNET_DATA_DIR/chest_xray)",
    )
    parser.add_argument("--data_dir", default="/tmp/effnet_jax_tfds")
    parser.add_argument("--workers", default="0,1,2")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--batches", type=int, default=60)
    parser.add_argument("--image_size", type=int, default=224)
    parser.add_argument("--record", default="", help="append the rows as records to this results/*.jsonl file")
    args = parser.parse_args()

    cfg = default_data_config()
    cfg.name = "chest_xray"
    cfg.manual_dir = args.manual_dir
    cfg.data_dir = args.data_dir
    start = time.perf_counter()
    sources.catalog(cfg)
    print(f"data ready in {time.perf_counter() - start:.1f} s ({args.data_dir})")
    print(f"machine: {machine()}")
    print(f"per-image stage cost at {args.image_size} px, CPU ms of one thread:")
    costs = stage_costs(cfg, args.image_size)
    for name, ms in costs.items():
        print(f"  {name:<24} {ms:6.2f}")
    total = sum(costs.values())
    print(f"  {'total':<24} {total:6.2f}  -> {1e3 / total:.0f} img/s per core, before batching")
    # img/s is wall-clock and drops when other jobs share the cores; img/CPU-s divides by
    # the CPU time the loading processes actually got, so it is what one worker
    # sustains given a whole core.
    print(f"{'workers':>8} {'img/s':>8} {'img/s/worker':>13} {'img/CPU-s of loaders':>21}")
    rows = []
    for workers in [int(w) for w in args.workers.split(",")]:
        rate, per_cpu = throughput(cfg, workers, args.batch_size, args.batches, args.image_size)
        per = rate / workers if workers else rate
        print(f"{workers:>8} {rate:8.0f} {per:13.0f} {per_cpu:21.0f}", flush=True)
        row = {"img_s_wall": round(rate), "img_s_per_worker": round(per), "img_per_cpu_s": round(per_cpu)}
        rows.append({"tables": [], "name": f"{workers} workers", "workers": workers, **row})
    record.write(
        args.record, rows, f"training input pipeline, {args.image_size} px, batch {args.batch_size}", machine()
    )
    print(f"machine after: {machine()}")


if __name__ == "__main__":
    main()
