"""The shipped fine-tune step (configs/pneumonia_lite0.py) against timm with the same layers frozen.

    python benchmarks/bench_finetune.py                       # Lite0, 224 px, batch 32, freeze_until=blocks_5
    python benchmarks/bench_finetune.py --freeze_until ''     # everything trains (both sides)
    python benchmarks/bench_finetune.py --config pneumonia.py --freeze_until '' --no_torch \
        --manual_dir ../shared/data/chest_xray --workers 8   # the step fed by the input pipeline

effnet_jax runs `effnet_jax.train.steps.train_step` exactly as effnet-train compiles it
(the recipe's optimizer, clipping, freezing, label smoothing, EMA; one device, jit,
random init instead of the pretrained weights, which does not change the cost). timm
runs tf_efficientnet_lite0 with the same modules frozen: requires_grad=False and their
BatchNorms in eval mode (running statistics), AdamW with the same weight decay, gradient
clipping at the same norm, label-smoothed cross-entropy and an EMA of the weights. The two
alternate, so that load from other processes hits both alike; each number is the median of
--repeats timed runs of --steps steps after warm-up (compilation excluded).

Also prints the first-step time (trace + compile + run) of the effnet_jax step; run it twice
with the persistent compilation cache on (the default) to see cold against warm.

With --manual_dir it then feeds the same compiled step from the real training pipeline
(`effnet_jax.data.create_split` with the config's augmentations, --workers grain
processes), as effnet-train's loop does (next batch, put_batch, step; asynchronous
dispatch overlaps loading with the device), and prints the fed rate beside the rate on a
resident batch: a ratio near 1 means the pipeline keeps up with the accelerator.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import re
import statistics
import time

import record

from effnet_jax.host_memory import host_memory_kept, keep_freed_host_memory

# As effnet-train does, before numpy or JAX start threads (EFFNET_JAX_KEEP_HOST_MEMORY=0: glibc's defaults).
keep_freed_host_memory()

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]


def recipe(args):
    from effnet_jax.train.config import load_config_file

    config = load_config_file(args.config).get_config()
    config.model.pretrained = None
    config.batch_size = args.batch
    config.freeze_until = args.freeze_until
    config.num_devices = 1
    return config


def jax_runner(config, batch: int, stop_frozen: bool = True):
    """The effnet-train step for ``config`` on random data.

    Returns (run one step, first-step seconds, run ``n`` steps fed by a batch iterator).
    """
    import functools

    import jax

    import effnet_jax
    from effnet_jax.data import augment as augment_lib
    from effnet_jax.train import freeze as freeze_lib
    from effnet_jax.train import optimizer as optimizer_lib
    from effnet_jax.train import state as state_lib
    from effnet_jax.train import steps
    from effnet_jax.train.parallel import Parallel

    par = Parallel("jit", jax.devices()[:1])
    _, variables = state_lib.model_from_config(config, load_weights=False)
    frozen = freeze_lib.frozen_mask(variables["params"], freeze_lib.freeze_patterns(config, variables["params"]))
    model = effnet_jax.build_model(
        config.model.name,
        num_classes=state_lib.num_classes(config),
        **state_lib.model_kwargs(config, freeze_lib.frozen_norms(frozen), None),
    )
    tx, _ = optimizer_lib.create_optimizer(config, frozen, total_steps=1000, steps_per_epoch=100)
    state = par.put_state(state_lib.create_train_state(variables, tx, config))
    abstract = par.abstract_state(state)
    step_fn = steps.bound_train_step(
        config,
        model=model,
        tx=tx,
        frozen=frozen,
        # The recipe's augmentation and normalisation run in the step, as in effnet-train.
        augment=augment_lib.spec_from_config(config.data.augment, state_lib.image_size(config)),
        mean=(0.485, 0.456, 0.406),
        std=(0.229, 0.224, 0.225),
    )
    if not stop_frozen:
        step_fn = functools.partial(step_fn, stop_frozen_gradients=False)
    train_step = par.compile_train_step(step_fn, abstract)
    size = state_lib.image_size(config)
    rng = np.random.default_rng(0)
    data = par.put_batch(
        {
            "gray": rng.integers(0, 256, (batch, size, size), dtype=np.uint8),
            "label": (np.arange(batch) % 2).astype(np.int32),
        }
    )
    holder = {"state": state}

    def run():
        holder["state"], metrics = train_step(holder["state"], data)
        jax.block_until_ready(metrics["loss"])

    def run_fed(batches, n: int):
        # effnet-train's loop: host batch -> devices -> step, dispatched asynchronously.
        for _ in range(n):
            batch = next(batches)
            holder["state"], metrics = train_step(
                holder["state"], par.put_batch({"gray": batch["gray"], "label": batch["label"]})
            )
        jax.block_until_ready(metrics["loss"])

    start = time.perf_counter()
    run()
    return run, time.perf_counter() - start, run_fed


def fed_rate(config, run, run_fed, args) -> None:
    """Resident-batch rate against the rate when create_split feeds the step (after warm-up)."""
    from effnet_jax.data import create_split
    from effnet_jax.train import state as state_lib

    config.data.name = "chest_xray"
    config.data.manual_dir = args.manual_dir
    config.data.data_dir = args.data_dir
    config.data.num_workers = args.workers
    config.data.external = ()
    size = state_lib.image_size(config)
    start = time.perf_counter()
    dataset = create_split(
        config.data,
        "train",
        training=True,
        batch_size=args.batch,
        image_size=size,
        mean=(0.485, 0.456, 0.406),
        std=(0.229, 0.224, 0.225),
        seed=0,
        shard_index=0,
        shard_count=1,
    )
    batches = iter(dataset)
    try:
        run_fed(batches, 3)  # warm-up: worker start-up, first file opens
        print(f"pipeline ready (data prepared, {args.workers} workers started) in {time.perf_counter() - start:.1f} s")
        resident, fed = [], []
        for _ in range(args.repeats):  # alternate so background load hits both alike
            resident.append(time_it(run, args.fed_steps))
            t0 = time.perf_counter()
            run_fed(batches, args.fed_steps)
            fed.append(time.perf_counter() - t0)
    finally:
        batches.close()
    r_rate = args.batch * args.fed_steps / statistics.median(resident)
    f_rate = args.batch * args.fed_steps / statistics.median(fed)
    print(
        f"{config.model.name} {size} px batch {args.batch}: resident batch {r_rate:.0f} img/s, "
        f"fed by the pipeline ({args.workers} workers, {os.cpu_count()} cores) {f_rate:.0f} img/s, "
        f"ratio {f_rate / r_rate:.2f}",
        flush=True,
    )


def torch_runner(config, batch: int):
    import timm
    import timm.utils
    import torch

    size = config.image_size
    model = timm.create_model(config.model.name, num_classes=2, drop_path_rate=config.model.drop_path_rate)
    frozen_modules = []
    if config.freeze_until:
        m = re.fullmatch(r"blocks_(\d+)", config.freeze_until)
        assert m, "this benchmark knows freeze_until='blocks_S' only"
        frozen_modules = [model.conv_stem, model.bn1] + [model.blocks[s] for s in range(int(m.group(1)))]
    for module in frozen_modules:
        for p in module.parameters():
            p.requires_grad_(False)
    o = config.optimizer
    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad],
        lr=o.learning_rate,
        betas=(o.b1, o.b2),
        eps=o.eps,
        weight_decay=o.weight_decay,
    )
    ema = timm.utils.ModelEmaV3(model, decay=config.ema_decay) if config.ema_decay else None
    images = torch.randn(batch, 3, size, size)
    labels = torch.arange(batch) % 2
    trainable = [p for p in model.parameters() if p.requires_grad]

    def run():
        model.train()
        for module in frozen_modules:  # frozen BatchNorms keep their running statistics
            module.eval()
        optimizer.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(model(images), labels, label_smoothing=config.label_smoothing)
        loss.backward()
        if o.grad_clip_norm:
            torch.nn.utils.clip_grad_norm_(trainable, o.grad_clip_norm)
        optimizer.step()
        if ema is not None:
            ema.update(model)

    return run


def time_it(fn, steps: int) -> float:
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="pneumonia_lite0.py", help="a file in configs/")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--freeze_until", default="blocks_5")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument(
        "--compare_unstopped",
        action="store_true",
        help="also time the step without stop_gradient on the frozen parameters",
    )
    parser.add_argument(
        "--cache_dir",
        default=None,
        help="persistent compilation cache (default: the config's compilation_cache_dir; '' = off)",
    )
    parser.add_argument("--no_torch", action="store_true", help="no timm comparison")
    parser.add_argument("--record", default="", help="append the rates as a record to this results/*.jsonl file")
    parser.add_argument("--manual_dir", default=None, help="chest_xray folder: also time the pipeline-fed step")
    parser.add_argument("--data_dir", default="/tmp/effnet_jax_tfds", help="where TFDS prepares --manual_dir")
    parser.add_argument("--workers", type=int, default=8, help="grain worker processes for the fed run")
    parser.add_argument("--fed_steps", type=int, default=30, help="steps per timed run of the fed comparison")
    args = parser.parse_args()

    import jax

    from effnet_jax.compilation_cache import setup_compilation_cache

    config = recipe(args)
    if args.cache_dir is not None:
        config.compilation_cache_dir = args.cache_dir
    cache = setup_compilation_cache(config.get("compilation_cache_dir", None))
    print(
        f"jax {jax.__version__} ({jax.default_backend()}), compilation cache: {cache or 'off'}, "
        f"freed host memory kept (both frameworks): {host_memory_kept()}"
    )
    print(
        f"{config.model.name} at {config.image_size} px, batch {args.batch}, "
        f"freeze_until={config.freeze_until!r}, {os.cpu_count()} cores"
    )
    runners = {}
    j_run, first, j_run_fed = jax_runner(config, args.batch)
    print(f"effnet_jax first step (trace + compile + run): {first:.1f} s", flush=True)
    runners["effnet_jax"] = j_run
    if args.manual_dir:
        fed_rate(config, j_run, j_run_fed, args)
    if args.compare_unstopped:
        j_run2, first2, _ = jax_runner(config, args.batch, stop_frozen=False)
        print(f"effnet_jax without stop_gradient, first step: {first2:.1f} s", flush=True)
        runners["effnet_jax (no stop_gradient)"] = j_run2
    if args.no_torch:
        return
    import torch

    runners["timm"] = torch_runner(config, args.batch)
    print(f"torch {torch.__version__} ({torch.get_num_threads()} threads)")
    for fn in runners.values():
        for _ in range(args.warmup):
            fn()
    times = {name: [] for name in runners}
    for _ in range(args.repeats):  # alternate so background load hits all alike
        for name, fn in runners.items():
            times[name].append(time_it(fn, args.steps))
    rates = {name: args.batch * args.steps / statistics.median(t) for name, t in times.items()}
    for name, rate in rates.items():
        print(
            f"{name:>32}: {rate:7.1f} img/s  ({rate / rates['timm']:.2f}x timm)  "
            f"runs: {', '.join(f'{args.batch * args.steps / t:.1f}' for t in times[name])}"
        )
    rows = [
        {"tables": [], "name": name, "batch": args.batch, "mode": "train step", "img_s": round(rate, 1)}
        for name, rate in rates.items()
    ]
    record.write(args.record, rows, f"configs/{args.config} step, freeze_until={args.freeze_until!r}")


if __name__ == "__main__":
    main()
