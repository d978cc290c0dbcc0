"""Two seeds of the shipped recipe's model trained as one program against one after another, wall time.

    python benchmarks/bench_seeds.py [--steps 20] [--examples 256] [--program auto|on|in_turn]
        [--workdir /tmp/bench_seeds] [--record results/benchmarks_cpu.jsonl]
    python benchmarks/bench_seeds.py --data DATA/chest_xray --external DATA/chest_xray_external \
        --steps 0 [--record ...]    # the shipped command itself, both ways, scored on the external set

configs/pneumonia.py (Lite0 at 224 px, its batch, augmentation and optimizer, ``soup_seeds=2``)
on the synthetic set (resident on the device), ``--steps`` steps per member, evaluated once at
the end. Each way runs effnet-train's soup of seeds (``train.soup.train_soup``) end to end in
this process: ``soup_vmap='off'`` (the members one after another), then ``--program`` (one
program: ``'on'`` vmaps the step over the members, ``'in_turn'`` runs one compiled step for
every member, side by side on host threads; ``'auto'``,
the default, is 'in_turn' on a CPU and 'on' on an accelerator).
The wall time counts everything a user waits for: building the models, compiling (each way
starts from its own empty compilation cache, so the second sequential member reads the first's
compiled step from it, as effnet-train's default cache does), the steps, the evaluations,
the checkpoints and the soup.

With ``--data`` and ``--external`` it is the shipped command instead (real images, resident,
``--steps 0``: the config's own two epochs), and each way's seed ensemble is then scored on
the external set at its operating threshold: the same metrics, or how far apart.
"""

import argparse
import os
import shutil
import time

import jax
import numpy as np
import record
from jax.experimental.compilation_cache import compilation_cache

from effnet_jax import runs
from effnet_jax.compilation_cache import setup_compilation_cache
from effnet_jax.inference.evaluation import evaluate_checkpoint
from effnet_jax.runs.checkpoints import read_checkpoint
from effnet_jax.runs.metrics_log import read_metrics
from effnet_jax.train import soup as soup_lib
from effnet_jax.train.config import load_config_file


def recipe(steps: int, examples: int, vmap: str, data: str = "", external: str = ""):
    """configs/pneumonia.py on the synthetic set (``steps`` steps, one evaluation at the end), or as shipped on ``data``."""
    c = load_config_file("configs/pneumonia.py").get_config()
    if data:
        c.data.manual_dir = data
        c.data.external = (external,)
        c.select_split = "external"
        if steps:
            c.num_train_steps = steps
    else:
        c.data.name = "synthetic"
        c.data.manual_dir = None
        c.data.external = ()
        c.data.synthetic_examples = examples
        c.select_split = "validation"
        c.num_train_steps = steps
        c.eval_every_steps = 0
        c.checkpoint_every_steps = steps
    c.progress_bar = False
    c.soup_vmap = vmap
    return c


def external_scores(workdir: str) -> dict:
    """The seed ensemble's external AUC and operating-point metrics, as effnet-eval reports them."""
    report = evaluate_checkpoint(runs.open(workdir), split="external", bootstrap_resamples=0, progress=False)
    at = report.metrics["operating"]
    scores = {k: round(float(at[k]), 4) for k in ("auc", "accuracy", "recall", "specificity")}
    return {**scores, "threshold": round(float(report.operating_threshold), 4)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--examples", type=int, default=256)
    parser.add_argument("--workdir", default="/tmp/bench_seeds")
    parser.add_argument("--record", default="", help="append the rows as records to this results/*.jsonl file")
    parser.add_argument("--data", default="", help="a chest_xray folder: the shipped command instead of synthetic data")
    parser.add_argument("--external", default="", help="with --data: the external set to score both ways on")
    parser.add_argument(
        "--program", default="auto", choices=("auto", "on", "in_turn"), help="config.soup_vmap of the one program"
    )
    args = parser.parse_args()
    if bool(args.data) != bool(args.external):
        parser.error("--data and --external go together")

    shutil.rmtree(args.workdir, ignore_errors=True)
    seconds, losses, scores = {}, {}, {}
    program = args.program
    if program == "auto":
        program = "in_turn" if jax.default_backend() == "cpu" else "on"
    for vmap in ("off", program):
        config = recipe(args.steps, args.examples, vmap, args.data, args.external)
        setup_compilation_cache(os.path.join(args.workdir, f"cache_{vmap}"))
        compilation_cache.reset_cache()  # jax reads the cache folder once per process otherwise
        workdir = os.path.join(args.workdir, vmap)
        start = time.perf_counter()
        soup_lib.train_soup(config, workdir)
        seconds[vmap] = time.perf_counter() - start
        members = [soup_lib.member_workdir(workdir, s) for s in (config.seed, config.seed + 1)]
        losses[vmap] = [read_metrics(m, "train")[-1]["loss"] for m in members]
        steps_done = read_checkpoint(members[0], "latest").step
        weights = [soup_lib.averaged_weights(read_checkpoint(m, "best").state) for m in members]
        losses[vmap + "_classifier"] = [np.asarray(w["params/classifier/kernel"]) for w in weights]
        print(f"soup_vmap={vmap!r}: {seconds[vmap]:.1f} s, last train loss per member {losses[vmap]}")
        if args.data:
            scores[vmap] = external_scores(workdir)
            print(f"soup_vmap={vmap!r}: external {scores[vmap]}")
    ratio = seconds[program] / seconds["off"]
    drift = max(
        float(np.abs(a - b).max() / np.abs(b).max())
        for a, b in zip(losses[program + "_classifier"], losses["off_classifier"])
    )
    print(f"one program / one after another: {ratio:.2f}; classifier weights differ by at most {drift:.1e} (relative)")
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    config = recipe(args.steps, args.examples, program, args.data, args.external)
    where = (
        f"the shipped command on {args.data} (its own epochs, resident), scored on {args.external}"
        if args.data
        else f"on the synthetic set ({args.examples} examples, resident), {args.steps} steps per member"
    )
    external = {"external_sequential": scores["off"], "external_one_program": scores[program]} if args.data else {}
    name = "seeds-vmap" if program == "on" else "seeds-in-turn"
    record.write(
        args.record,
        [
            {
                "tables": ["seeds"] if args.data else [],
                "name": name + "-shipped" if args.data else name,
                "program": "vmapped" if program == "on" else "in turn",
                "members": 2,
                "steps": steps_done,
                "batch": config.batch_size,
                "image_size": config.image_size,
                "sequential_s": round(seconds["off"], 1),
                "one_program_s": round(seconds[program], 1),
                "ratio": round(ratio, 2),
                "last_loss_sequential": [round(x, 4) for x in losses["off"]],
                "last_loss_one_program": [round(x, 4) for x in losses[program]],
                "classifier_max_rel_diff": float(f"{drift:.1e}"),
                "devices": f"1 x {jax.devices()[0].device_kind}",
                **external,
            }
        ],
        f"configs/pneumonia.py (Lite0, {config.image_size} px, batch {config.batch_size}, soup_seeds=2), "
        f"{where}, whole train_soup timed",
        f"{os.cpu_count()}-core CPU, shared; load average {load}",
    )


if __name__ == "__main__":
    main()
