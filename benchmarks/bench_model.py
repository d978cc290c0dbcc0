"""Eval and train-step throughput of EfficientNet-B0: effnet_jax against timm, same machine, one run.

    python benchmarks/bench_model.py                      # B0, 224 px, batch 16 and 32
    python benchmarks/bench_model.py --variant efficientnet_lite0 --batch 16 --depthwise shifts,native

Each measurement is the median of --repeats timed runs of --steps steps, after
warm-up (compilation excluded). The two frameworks alternate so that load from
other processes hits both alike. Prints a table and the effnet_jax / timm ratio.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import record

from effnet_jax.host_memory import host_memory_kept, keep_freed_host_memory

# As effnet-train does, before numpy or JAX start threads (EFFNET_JAX_KEEP_HOST_MEMORY=0: glibc's defaults).
keep_freed_host_memory()

import numpy as np


def cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def jax_runners(variant: str, batch: int, size: int, depthwise: str):
    import jax
    import jax.numpy as jnp
    import optax

    import effnet_jax

    model, variables = effnet_jax.create_model(variant, num_classes=1000, depthwise_impl=depthwise)
    tx = optax.adamw(1e-3)
    opt_state = tx.init(variables["params"])
    images = jnp.asarray(np.random.default_rng(0).standard_normal((batch, size, size, 3)), jnp.float32)
    labels = jnp.asarray(np.arange(batch) % 1000)

    @jax.jit
    def eval_step(variables, images):
        return model.apply(variables, images)

    @jax.jit
    def train_step(params, batch_stats, opt_state, images, labels, rng):
        def loss_fn(p):
            logits, state = model.apply(
                {"params": p, "batch_stats": batch_stats},
                images,
                train=True,
                mutable=["batch_stats"],
                rngs={"dropout": rng},
            )
            return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean(), state

        (loss, state), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), state["batch_stats"], opt_state, loss

    state = {"params": variables["params"], "bs": variables["batch_stats"], "opt": opt_state}
    rng = jax.random.PRNGKey(0)

    def run_eval():
        eval_step(variables, images).block_until_ready()

    def run_train():
        p, bs, o, loss = train_step(state["params"], state["bs"], state["opt"], images, labels, rng)
        loss.block_until_ready()
        state.update(params=p, bs=bs, opt=o)

    # The optimised HLO, for benchmarks/profile_step.py to name what a profile's fusions compute.
    run_train.compiled_text = lambda: (
        train_step.lower(state["params"], state["bs"], state["opt"], images, labels, rng).compile().as_text()
    )
    return run_eval, run_train


def torch_runners(variant: str, batch: int, size: int):
    import timm
    import torch

    model = timm.create_model(variant, num_classes=1000)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    images = torch.randn(batch, 3, size, size)
    labels = torch.arange(batch) % 1000

    def run_eval():
        model.eval()
        with torch.inference_mode():
            model(images)

    def run_train():
        model.train()
        optimizer.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(model(images), labels)
        loss.backward()
        optimizer.step()

    return run_eval, run_train


def time_it(fn, steps: int) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) for ``steps`` calls."""
    start, cpu = time.perf_counter(), time.process_time()
    for _ in range(steps):
        fn()
    return time.perf_counter() - start, time.process_time() - cpu


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", default="efficientnet_b0")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", default="16,32")
    parser.add_argument("--depthwise", default="auto", help="comma list of effnet_jax depthwise_impl values")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--record", default="", help="append the rows as records to this results/*.jsonl file")
    args = parser.parse_args()

    import jax
    import torch

    print(
        f"machine: {cpu_name()}, {os.cpu_count()} cores; jax {jax.__version__} ({jax.default_backend()}), "
        f"torch {torch.__version__} ({torch.get_num_threads()} threads); "
        f"freed host memory kept (effnet_jax.host_memory, both frameworks): {host_memory_kept()}"
    )
    print(f"{args.variant} at {args.size} px, median of {args.repeats} x {args.steps} steps\n")
    header = (
        f"{'batch':>5} {'mode':>5} {'effnet_jax impl':>16} {'effnet_jax img/s':>17} {'timm img/s':>11} "
        f"{'ratio':>6}   {'jax img/CPU-s':>13} {'timm img/CPU-s':>14} {'ratio':>6}"
    )
    print(header)
    print("-" * len(header))
    rows = []
    for batch in [int(b) for b in args.batch.split(",")]:
        t_eval, t_train = torch_runners(args.variant, batch, args.size)
        for impl in args.depthwise.split(","):
            j_eval, j_train = jax_runners(args.variant, batch, args.size, impl)
            for mode, j_fn, t_fn in [("eval", j_eval, t_eval), ("train", j_train, t_train)]:
                for _ in range(args.warmup):
                    j_fn(), t_fn()
                j_times, t_times = [], []
                for _ in range(args.repeats):  # alternate so background load hits both alike
                    j_times.append(time_it(j_fn, args.steps))
                    t_times.append(time_it(t_fn, args.steps))
                n = batch * args.steps
                j_rate, t_rate = (n / statistics.median(t[0] for t in ts) for ts in (j_times, t_times))
                # Images per CPU-second the process actually got: steadier than wall time when other
                # jobs share the cores (spin-waiting threads still count, so it is not a pure cost).
                j_cpu, t_cpu = (n / statistics.median(t[1] for t in ts) for ts in (j_times, t_times))
                print(
                    f"{batch:>5} {mode:>5} {impl:>16} {j_rate:>17.1f} {t_rate:>11.1f} {j_rate / t_rate:>6.2f}   "
                    f"{j_cpu:>13.1f} {t_cpu:>14.1f} {j_cpu / t_cpu:>6.2f}",
                    flush=True,
                )
                rows.append(
                    {
                        "tables": [],
                        "name": f"depthwise_impl={impl}",
                        "batch": batch,
                        "mode": "train step" if mode == "train" else mode,
                        "effnet_jax_img_s": round(j_rate, 1),
                        "timm_img_s": round(t_rate, 1),
                        "ratio": round(j_rate / t_rate, 3),
                        "img_per_cpu_s": {
                            "effnet_jax": round(j_cpu, 1),
                            "timm": round(t_cpu, 1),
                            "ratio": round(j_cpu / t_cpu, 3),
                        },
                    }
                )
                print(
                    f"{'':>23} wall s per run: jax {', '.join(f'{t[0]:.2f}' for t in j_times)}; "
                    f"timm {', '.join(f'{t[0]:.2f}' for t in t_times)}",
                    flush=True,
                )
    record.write(args.record, rows, f"{args.variant}, {args.size} px", f"{cpu_name()}, {os.cpu_count()} cores")


if __name__ == "__main__":
    main()
