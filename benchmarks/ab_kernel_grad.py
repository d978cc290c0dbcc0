"""The whole train step with and without the small layers' row reduction in the depthwise kernel gradient.

    python benchmarks/ab_kernel_grad.py --batch 16 [--variant tf_efficientnet_lite0]

bench_model.py's train step (forward, backward, AdamW; BatchNorm in train mode) built twice
in one process, once with ``layers.ROW_REDUCE_MAX_SIZE = 0`` (every depthwise kernel
gradient reduces over the batch alone, as before) and once with the shipped value (layers
of at most that many pixels also reduce over rows, per chunk of 16 images); the two are
timed alternately, --repeats times --steps steps, and the median rate of each is printed.
"""

from __future__ import annotations

import argparse
import statistics

from bench_model import jax_runners, time_it

from effnet_jax.host_memory import keep_freed_host_memory

keep_freed_host_memory()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", default="efficientnet_b0")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=6)
    args = parser.parse_args()

    from effnet_jax.models import layers

    shipped = layers.ROW_REDUCE_MAX_SIZE
    steps = {}
    for name, size in (("batch only", 0), (f"rows too at <= {shipped} px", shipped)):
        layers.ROW_REDUCE_MAX_SIZE = size  # read when the step is traced: compile it now
        _, train = jax_runners(args.variant, args.batch, args.size, "auto")
        train(), train()
        steps[name] = train
    layers.ROW_REDUCE_MAX_SIZE = shipped
    times = {name: [] for name in steps}
    for _ in range(args.repeats):
        for name, train in steps.items():
            times[name].append(time_it(train, args.steps)[0])
    print(f"{args.variant} at {args.size} px, batch {args.batch}: train step, median of {args.repeats} x {args.steps}")
    for name, wall in times.items():
        rate = args.steps * args.batch / statistics.median(wall)
        print(f"  {name:>22}: {rate:.2f} img/s (wall s per run: {', '.join(f'{w:.2f}' for w in wall)})")


if __name__ == "__main__":
    main()
