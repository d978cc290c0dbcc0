"""The train step fed by the grain path against the same step on the resident path, in images/s.

    python benchmarks/bench_feed.py [--config configs/debug.py] [--steps 20] [--repeats 3]
        [--record results/benchmarks_cpu.jsonl]

Builds effnet-train's model, optimizer and step for the config, then times ``--steps``
training steps per repeat on each path (data.resident='off', then 'on'), alternating so
background load hits both alike; compiling and the first steps are left out. Both paths
run the same step (augmentation on the device); only how the uint8 batch reaches it differs.
"""

import argparse
import os
import statistics
import time

import jax
import record

from effnet_jax.data import pipeline
from effnet_jax.labels import class_weights
from effnet_jax.runs import model as run_model
from effnet_jax.runs import record as run_record
from effnet_jax.train import feed as feed_lib
from effnet_jax.train import freeze as freeze_lib
from effnet_jax.train import loop, steps
from effnet_jax.train import optimizer as optimizer_lib
from effnet_jax.train import state as state_lib
from effnet_jax.train.config import load_config_file, validate_config
from effnet_jax.train.parallel import Parallel


def build(config):
    """(Parallel, RunRecord, host state, abstract state, step fn, examples) as effnet-train builds them."""
    par = Parallel("jit", jax.devices()[:1])
    info = pipeline.split_info(config.data, "train")
    loaded, variables = state_lib.model_from_config(config)
    run = run_record.RunRecord(
        image_size=state_lib.image_size(config),
        mean=tuple(loaded.variant.mean),
        std=tuple(loaded.variant.std),
        train_class_counts=tuple(info["class_counts"]),
    )
    variables = state_lib.zero_head(variables)
    frozen = freeze_lib.frozen_mask(variables["params"], freeze_lib.freeze_patterns(config, variables["params"]))
    model = run_model.model_for_run(config, run, freeze_lib.frozen_norms(frozen), par.bn_axis_name)
    total, per_epoch = loop.num_steps(config, info)
    tx, _ = optimizer_lib.create_optimizer(config, frozen, total, per_epoch)
    state = jax.device_get(state_lib.create_train_state(variables, tx, config))
    abstract = par.abstract_state(state)
    step_fn = steps.bound_train_step(
        config,
        model=model,
        tx=tx,
        frozen=frozen,
        class_weights=class_weights(config.class_weights, info["class_counts"]),
    )
    return par, run, state, abstract, step_fn, info["num_examples"]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="configs/debug.py")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--record", default="", help="append the rows as records to this results/*.jsonl file")
    args = parser.parse_args()

    config = loop.resolve_data(load_config_file(args.config).get_config())
    validate_config(config)
    par, run, host_state, abstract, step_fn, num_examples = build(config)
    paths = {}
    for resident in ("off", "on"):
        config.data.resident = resident
        start = time.perf_counter()
        feed = feed_lib.Feed(config, par, run, config.batch_size, num_examples)
        ready = time.perf_counter() - start
        step = feed.compile(step_fn, abstract)
        box = {"state": par.put_state(host_state)}

        def run_steps(n, feed=feed, step=step, box=box):
            for _ in range(n):
                box["state"], metrics = step(box["state"], next(feed.iterator))
            jax.block_until_ready(metrics)

        run_steps(2)  # compile and warm up
        paths[resident] = {"feed": feed, "run": run_steps, "ready_s": ready, "times": []}
    for _ in range(args.repeats):
        for path in paths.values():
            t0 = time.perf_counter()
            path["run"](args.steps)
            path["times"].append(time.perf_counter() - t0)
    rows = []
    for resident, path in paths.items():
        path["feed"].close()
        rate = config.batch_size * args.steps / statistics.median(path["times"])
        name = {"off": "grain path", "on": "resident path"}[resident]
        print(f"{name:<14} {rate:8.1f} img/s   (set up in {path['ready_s']:.1f} s)")
        rows.append(
            {
                "tables": [],
                "name": f"feed-{'resident' if resident == 'on' else 'grain'}",
                "data.resident": resident,
                "img_s": round(rate, 1),
                "setup_s": round(path["ready_s"], 1),
                "steps": args.steps,
                "repeats": args.repeats,
                "devices": f"{par.num_devices} x {jax.devices()[0].device_kind}",
            }
        )
    ratio = rows[0]["img_s"] / rows[1]["img_s"]
    print(f"grain / resident: {ratio:.2f}")
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    record.write(
        args.record,
        rows,
        f"{args.config}, batch {config.batch_size}, {run.image_size} px, train step with on-device augmentation",
        f"{os.cpu_count()}-core CPU, shared; load average {load}",
    )


if __name__ == "__main__":
    main()
