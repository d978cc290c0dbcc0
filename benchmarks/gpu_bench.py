"""Train-step and eval throughput on a GPU: effnet_jax (bf16, native depthwise) against timm (AMP, channels_last).

    python benchmarks/gpu_bench.py --variants efficientnet_b0,tf_efficientnet_lite0 --batch 128,256
    python benchmarks/gpu_bench.py --tiny      # 64 px, batch 2, one step: checks the script on a CPU
    python benchmarks/gpu_bench.py --deadline 300 --jsonl rows.jsonl   # no new setting after 300 s

Both frameworks run in this one process and alternate, each timed as the median of
--repeats runs of --steps steps after warm-up (compilation excluded); the JAX memory
pool is capped so PyTorch's allocator gets the rest. Mixed precision on both sides:
bfloat16 compute with float32 parameters, BatchNorm statistics and optimizer state.
Prints one JSON line per measurement (also appended to --jsonl as it is measured, so a
run cut short keeps what it finished) and a markdown table. The first-step times
(trace + compile + run) of the jitted train and eval steps are reported per setting.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import record

os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.45")

import numpy as np  # noqa: E402


def jax_runners(variant: str, batch: int, size: int):
    import jax
    import jax.numpy as jnp
    import optax

    from effnet_jax.models import build_model
    from effnet_jax.models.efficientnet import init_variables

    model = build_model(variant, num_classes=1000, dtype=jnp.bfloat16, depthwise_impl="native")
    variables = init_variables(model, 0)
    tx = optax.adamw(1e-3)
    state = {"params": variables["params"], "bs": variables["batch_stats"]}
    state["opt"] = tx.init(state["params"])
    images = jnp.asarray(np.random.default_rng(0).standard_normal((batch, size, size, 3)), jnp.float32)
    labels = jnp.asarray(np.arange(batch) % 1000)

    @jax.jit
    def eval_step(variables, images):
        return model.apply(variables, images)

    @jax.jit
    def train_step(state, images, labels, rng):
        def loss_fn(p):
            logits, new = model.apply(
                {"params": p, "batch_stats": state["bs"]},
                images,
                train=True,
                mutable=["batch_stats"],
                rngs={"dropout": rng},
            )
            return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean(), new

        (loss, new), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"])
        updates, opt = tx.update(grads, state["opt"], state["params"])
        return {"params": optax.apply_updates(state["params"], updates), "bs": new["batch_stats"], "opt": opt}, loss

    rng = jax.random.PRNGKey(0)
    box = {"state": state}

    def run_eval(steps):
        for _ in range(steps):
            out = eval_step(variables, images)
        out.block_until_ready()

    def run_train(steps):
        for _ in range(steps):
            box["state"], loss = train_step(box["state"], images, labels, rng)
        loss.block_until_ready()

    t0 = time.perf_counter()
    run_train(1)
    compile_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    run_eval(1)
    eval_compile_s = time.perf_counter() - t0
    return run_eval, run_train, compile_s, eval_compile_s


def torch_runners(variant: str, batch: int, size: int, device: str):
    import timm
    import torch

    torch.backends.cudnn.benchmark = True
    model = timm.create_model(variant, num_classes=1000).to(device).to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=device == "cuda")
    images = torch.randn(batch, 3, size, size, device=device).to(memory_format=torch.channels_last)
    labels = torch.arange(batch, device=device) % 1000
    amp = torch.autocast(device_type=device, dtype=torch.bfloat16)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    def run_eval(steps):
        model.eval()
        with torch.inference_mode(), amp:
            for _ in range(steps):
                model(images)
        sync()

    def run_train(steps):
        model.train()
        for _ in range(steps):
            optimizer.zero_grad(set_to_none=True)
            with amp:
                loss = torch.nn.functional.cross_entropy(model(images), labels)
            loss.backward()
            optimizer.step()
        sync()

    return run_eval, run_train


def peak_gib(jax) -> float | None:
    """Peak bytes JAX's allocator has held on the first device (GiB), where the backend reports it:
    a step whose peak sits at the pool's cap (XLA_PYTHON_CLIENT_MEM_FRACTION) was squeezed."""
    stats = jax.devices()[0].memory_stats() or {}
    peak = stats.get("peak_bytes_in_use")
    return None if peak is None else round(peak / 2**30, 2)


def timed(fn, steps: int) -> float:
    t0 = time.perf_counter()
    fn(steps)
    return time.perf_counter() - t0


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", default="efficientnet_b0,tf_efficientnet_lite0")
    parser.add_argument("--batch", default="128,256")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--deadline", type=float, default=0, help="seconds: start no new setting after this")
    parser.add_argument("--jsonl", default="", help="append each row to this file as it is measured")
    parser.add_argument("--record", default="", help="append the rows as records to this results/*.jsonl file")
    parser.add_argument("--tiny", action="store_true", help="64 px, batch 2, 1 step: a dry run on any machine")
    args = parser.parse_args()
    if args.tiny:
        args.size, args.batch, args.steps, args.repeats, args.warmup = 64, "2", 1, 1, 1

    import jax
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    card = torch.cuda.get_device_name(0) if device == "cuda" else "cpu"
    print(
        f"card: {card}; jax {jax.__version__} ({jax.devices()[0].device_kind}), torch {torch.__version__}, "
        f"timm {__import__('timm').__version__}; JAX memory pool: "
        f"{os.environ['XLA_PYTHON_CLIENT_MEM_FRACTION']} of the card",
        flush=True,
    )
    rows, start = [], time.perf_counter()
    settings = [(v, int(b)) for v in args.variants.split(",") for b in args.batch.split(",")]
    for variant, batch in settings:
        if args.deadline and time.perf_counter() - start > args.deadline:
            print(f"deadline: {args.deadline:.0f} s passed, skipped {variant} batch {batch}", flush=True)
            continue
        j_eval, j_train, compile_s, eval_compile_s = jax_runners(variant, batch, args.size)
        t_eval, t_train = torch_runners(variant, batch, args.size, device)
        for mode, j_fn, t_fn in [("train", j_train, t_train), ("eval", j_eval, t_eval)]:
            j_fn(args.warmup), t_fn(args.warmup)
            j_times, t_times = [], []
            for _ in range(args.repeats):  # alternate so that clocks and load hit both alike
                j_times.append(timed(j_fn, args.steps))
                t_times.append(timed(t_fn, args.steps))
            j_rate = batch * args.steps / statistics.median(j_times)
            t_rate = batch * args.steps / statistics.median(t_times)
            row = dict(
                card=card,
                variant=variant,
                batch=batch,
                mode=mode,
                effnet_jax=round(j_rate, 1),
                timm=round(t_rate, 1),
                ratio=round(j_rate / t_rate, 3),
                jax_first_step_s=round(compile_s if mode == "train" else eval_compile_s, 1),
                jax_peak_gib=peak_gib(jax),
            )
            rows.append(row)
            print(json.dumps(row), flush=True)
            if args.jsonl:
                with open(args.jsonl, "a") as f:
                    f.write(json.dumps(row) + "\n")
    record.write(args.record, [{"tables": [], **r} for r in rows], f"{args.size} px, bf16")
    print("\n| card | variant | batch | mode | effnet_jax img/s | timm img/s | ratio |\n|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['card']} | {r['variant']} | {r['batch']} | {r['mode']} | {r['effnet_jax']:.0f} | "
            f"{r['timm']:.0f} | {r['ratio']:.2f} |"
        )


if __name__ == "__main__":
    main()
