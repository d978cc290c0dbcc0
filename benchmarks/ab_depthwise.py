"""The whole train step with and without one of the CPU depthwise backward formulations.

    python benchmarks/ab_depthwise.py --change spread --batch 16 [--variant tf_efficientnet_lite0]
    python benchmarks/ab_depthwise.py --change rows --batch 32

bench_model.py's train step (forward, backward, AdamW; BatchNorm in train mode) built twice
in one process, once without the change and once as shipped; the two are timed alternately,
--repeats times --steps steps, and the median rate of each is printed. The changes
(effnet_jax/models/layers.py; docs/experiments/performance.md has the measurements):

  rows    the kernel gradient of layers of at most ROW_REDUCE_MAX_SIZE px also reduces over
          rows, per chunk of 16 images (off: every layer reduces over the batch alone)
  spread  the input gradient correlates the once-spread output gradient with the flipped
          kernel (off: autodiff's sum of k*k padded copies)
"""

from __future__ import annotations

import argparse
import statistics

from bench_model import jax_runners, time_it

from effnet_jax.host_memory import keep_freed_host_memory

keep_freed_host_memory()

# The module switch of each change and its value when the change is off.
CHANGES = {"rows": ("ROW_REDUCE_MAX_SIZE", 0), "spread": ("SPREAD_INPUT_GRAD", False)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--change", choices=sorted(CHANGES), default="spread")
    parser.add_argument("--variant", default="efficientnet_b0")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=6)
    args = parser.parse_args()

    from effnet_jax.models import layers

    switch, off = CHANGES[args.change]
    shipped = getattr(layers, switch)
    steps = {}
    for name, value in ((f"without {args.change}", off), ("shipped", shipped)):
        setattr(layers, switch, value)  # read when the step is traced: compile it now
        _, train = jax_runners(args.variant, args.batch, args.size, "auto")
        train(), train()
        steps[name] = train
    setattr(layers, switch, shipped)
    times = {name: [] for name in steps}
    for _ in range(args.repeats):
        for name, train in steps.items():
            times[name].append(time_it(train, args.steps)[0])
    print(f"{args.variant} at {args.size} px, batch {args.batch}: train step, median of {args.repeats} x {args.steps}")
    for name, wall in times.items():
        rate = args.steps * args.batch / statistics.median(wall)
        print(f"  {name:>16}: {rate:.2f} img/s (wall s per run: {', '.join(f'{w:.2f}' for w in wall)})")


if __name__ == "__main__":
    main()
