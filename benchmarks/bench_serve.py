"""effnet-serve under concurrent load: requests/s and latency for 1, 8 and 32 clients, against the model in a loop.

    python benchmarks/bench_serve.py [--variant efficientnet_lite0] [--image_size 224] [--clients 1,8,32]
        [--requests 96] [--max_batch 8] [--record=results/benchmarks_serve.jsonl]

Writes a run of random weights (speed does not depend on their values) at --image_size,
exports it for the CPU, then measures, on the bundled sample X-rays (one JPEG per request):
- ``serving.load(DIR)`` then ``model.predict_files([path])`` in a loop, one image a call, in
  this process (no HTTP, no batching): the floor a server adds its costs to;
- ``effnet-serve`` in its own process on 127.0.0.1, with N clients each posting one image,
  waiting for the answer, and posting the next (httpx, asyncio) until --requests are answered.
Start-up (export, compilation of every batch size) is excluded from every figure.
"""

from __future__ import annotations

import argparse
import asyncio
import glob
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time

import httpx
import numpy as np
import record

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def machine() -> str:
    name = platform.processor() or "unknown CPU"
    try:
        name = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return f"{name}; {os.cpu_count()} cores; load average {load}"


def export_random_run(root: str, variant: str, size: int) -> str:
    """A run of random weights (one checkpoint, no training) exported for the CPU into ``root/exported``."""
    import jax
    import optax

    from effnet_jax import runs
    from effnet_jax.inference.export import export_run
    from effnet_jax.models import build_model, init_variables
    from effnet_jax.runs import record as run_record
    from effnet_jax.runs.checkpoints import Checkpointer
    from effnet_jax.train import state as state_lib
    from effnet_jax.train.config import load_config_file

    config = load_config_file(os.path.join(REPO, "configs", "debug_synthetic.py")).get_config()
    config.model.name, config.image_size = variant, size
    model = build_model(variant, num_classes=2, **state_lib.model_kwargs(config))
    rng = np.random.default_rng(0)

    def draw(path, leaf):
        name = jax.tree_util.keystr(path)
        if "batch_stats" in name or "scale" in name or "bias" in name:
            return np.full(leaf.shape, 1.0 if ("var" in name or "scale" in name) else 0.0, np.float32)
        return (rng.normal(0, np.sqrt(2.0 / (int(np.prod(leaf.shape[:-1])) or 1)), leaf.shape)).astype(np.float32)

    variables = jax.tree_util.tree_map_with_path(draw, jax.eval_shape(lambda: init_variables(model)))
    state = state_lib.create_train_state(variables, optax.sgd(0.1), config)
    workdir = os.path.join(root, "run")
    meta = run_record.RunRecord(size, tuple(model.variant.mean), tuple(model.variant.std), (50, 50))
    ckpt = Checkpointer(workdir, best_metric=None, async_save=False)
    ckpt.save(1, state, {}, config, run=meta)
    ckpt.wait()
    ckpt.close()
    out = os.path.join(root, "exported")
    export_run(runs.open(workdir), out, platforms=("cpu",))
    return out


def summary(latencies: list[float], wall: float) -> dict:
    ms = np.asarray(latencies) * 1e3
    return {
        "requests": len(latencies),
        "requests_per_s": round(len(latencies) / wall, 2),
        "p50_ms": round(float(np.percentile(ms, 50)), 1),
        "p99_ms": round(float(np.percentile(ms, 99)), 1),
    }


def direct(exported: str, images: list[str], n: int) -> dict:
    """``model.predict_files([path])`` one image a call, ``n`` calls after a warm-up call."""
    from effnet_jax import serving

    model = serving.load(exported)
    list(model.predict_files(images[:1], batch_size=1))
    latencies = []
    start = time.perf_counter()
    for i in range(n):
        t = time.perf_counter()
        list(model.predict_files([images[i % len(images)]], batch_size=1))
        latencies.append(time.perf_counter() - t)
    return summary(latencies, time.perf_counter() - start)


async def load(url: str, bodies: list[tuple[str, bytes]], clients: int, n: int) -> dict:
    """``clients`` clients posting one image each, back to back, until ``n`` requests are answered."""
    latencies, statuses, counter = [], [], iter(range(n))

    async def client(http):
        for i in counter:
            name, data = bodies[i % len(bodies)]
            t = time.perf_counter()
            answer = await http.post(url + "/v1/predict", files=[("file", (name, data, "image/jpeg"))])
            latencies.append(time.perf_counter() - t)
            statuses.append(answer.status_code)

    async with httpx.AsyncClient(timeout=600, limits=httpx.Limits(max_connections=clients)) as http:
        start = time.perf_counter()
        await asyncio.gather(*(client(http) for _ in range(clients)))
        wall = time.perf_counter() - start
    return {**summary(latencies, wall), "answered_200": statuses.count(200)}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variant", default="efficientnet_lite0")
    parser.add_argument("--image_size", type=int, default=224)
    parser.add_argument("--clients", default="1,8,32")
    parser.add_argument("--requests", type=int, default=96, help="requests per client count (and direct calls)")
    parser.add_argument("--max_batch", type=int, default=8)
    parser.add_argument("--max_wait_ms", type=float, default=5.0)
    parser.add_argument("--record", default="", help="append the rows as records to this .jsonl")
    args = parser.parse_args()

    images = sorted(glob.glob(os.path.join(REPO, "effnet_jax", "data", "sample", "validation", "*", "*.jpeg")))
    bodies = [(os.path.basename(p), open(p, "rb").read()) for p in images]
    root = tempfile.mkdtemp(prefix="bench_serve_")
    exported = export_random_run(root, args.variant, args.image_size)
    config = f"{args.variant} at {args.image_size} px, random weights, CPU; max_batch {args.max_batch}, max_wait {args.max_wait_ms:g} ms"
    rows = [
        {
            "tables": ["serve"],
            "how": "serving.load, model in a loop (1 image a call)",
            "clients": 1,
            **direct(exported, images, args.requests),
        }
    ]
    print(rows[-1])

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu")
    command = [sys.executable, "-m", "effnet_jax.cli.serve", f"--exported={exported}", f"--port={port}"]
    command += [f"--max_batch={args.max_batch}", f"--max_wait_ms={args.max_wait_ms}"]
    server = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        while True:  # start-up: load, then compile every batch size
            try:
                if httpx.get(url + "/healthz", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if server.poll() is not None:
                raise SystemExit(f"effnet-serve exited with status {server.returncode}")
            time.sleep(0.5)
        for clients in map(int, args.clients.split(",")):
            before = httpx.get(url + "/healthz").json()
            row = asyncio.run(load(url, bodies, clients, args.requests))
            after = httpx.get(url + "/healthz").json()
            batches = after["batches"] - before["batches"]
            row["mean_batch"] = round((after["images"] - before["images"]) / max(1, batches), 2)
            rows.append({"tables": ["serve"], "how": "effnet-serve, HTTP on 127.0.0.1", "clients": clients, **row})
            print(rows[-1])
    finally:
        server.terminate()
        server.wait(timeout=60)
        shutil.rmtree(root, ignore_errors=True)
    record.write(args.record, [{"name": f"{r['how']}, {r['clients']} client(s)", **r} for r in rows], config, machine())


if __name__ == "__main__":
    main()
