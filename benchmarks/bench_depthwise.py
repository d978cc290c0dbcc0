"""Depthwise kernel gradient on B0's layer shapes: the formulations tried for the CPU, timed side by side.

    python benchmarks/bench_depthwise.py --batch 16 [--only batch_reduce,shifts]

Each formulation computes dK[i, j, c] = sum_{n,h,w} xpad[n, i + s*h, j + s*w, c] * g[n, h, w, c]
for one depthwise layer; the median of --repeats runs, alternating formulations, after one
warm-up call (compilation excluded). The relative error is against the k*k-sums reference.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

# (input size, channels, kernel, stride) of EfficientNet-B0's depthwise layers at 224 px.
B0_LAYERS = [
    (112, 32, 3, 1),
    (112, 96, 3, 2),
    (56, 144, 3, 1),
    (56, 144, 5, 2),
    (28, 240, 5, 1),
    (28, 240, 3, 2),
    (14, 480, 3, 1),
    (14, 480, 5, 1),
    (14, 672, 5, 1),
    (14, 672, 5, 2),
    (7, 1152, 5, 1),
    (7, 1152, 3, 1),
]


def formulations():
    import jax
    import jax.numpy as jnp
    from jax import lax

    from effnet_jax.models import layers

    def windows(xp, g, k, s, phases=False):
        return layers._windows(xp, k, s, g.shape[1], g.shape[2], phases=phases)

    def shifts(xp, g, k, s):  # what autodiff of the slices gives: k*k separate full-tensor sums
        return jnp.stack([jnp.sum(w * g, (0, 1, 2)) for w in windows(xp, g, k, s)])

    def variadic_all(xp, g, k, s):  # one variadic reduce over (n, h, w)
        ops = tuple(w * g for w in windows(xp, g, k, s))
        out = lax.reduce(
            ops, tuple(jnp.zeros((), xp.dtype) for _ in ops), lambda a, b: tuple(u + v for u, v in zip(a, b)), (0, 1, 2)
        )
        return jnp.stack(out)

    def batch_reduce(xp, g, k, s):  # the shipped one: variadic reduce over n (and rows on small layers), then a sum
        pad = ((s - 1) + (k - 1)) // 2  # main()'s padding, undone: the shipped rule looks at the layer's own size
        x = xp[:, pad : xp.shape[1] - pad, pad : xp.shape[2] - pad]
        return layers._shifts_kernel_grad(x, g, k, s, ((pad, pad), (pad, pad))).reshape(k * k, -1)

    def batch_height_reduce(xp, g, k, s):  # variadic reduce over (n, h), then a small sum over w
        ops = tuple(w * g for w in windows(xp, g, k, s, phases=True))
        out = lax.reduce(
            ops, tuple(jnp.zeros((), xp.dtype) for _ in ops), lambda a, b: tuple(u + v for u, v in zip(a, b)), (0, 1)
        )
        return jnp.sum(jnp.stack(out), axis=1)

    def chunked_height_reduce(xp, g, k, s, chunk=16):  # (n, h) reduce per chunk of 16 images, then the chunks
        n = g.shape[0]
        ops = tuple((w * g).reshape(n // chunk, chunk, *g.shape[1:]) for w in windows(xp, g, k, s, phases=True))
        out = lax.reduce(
            ops, tuple(jnp.zeros((), xp.dtype) for _ in ops), lambda a, b: tuple(u + v for u, v in zip(a, b)), (1, 2)
        )
        return jnp.sum(jnp.stack(out), axis=(1, 2))

    def scan_batch(xp, g, k, s):  # k*k sums per image, looped over the batch (cache-resident)
        def body(acc, xg):
            return acc + shifts(xg[0][None], xg[1][None], k, s), None

        return lax.scan(body, jnp.zeros((k * k, xp.shape[-1]), xp.dtype), (xp, g))[0]

    def batch_as_groups(xp, g, k, s):  # transposed conv: channels x batch as feature groups
        n, h, w, c = xp.shape
        lhs = jnp.transpose(xp, (1, 2, 3, 0)).reshape(1, h, w, c * n)
        rhs = jnp.transpose(g, (1, 2, 0, 3))
        out = lax.conv_general_dilated(
            lhs,
            rhs,
            (1, 1),
            "VALID",
            rhs_dilation=(s, s),
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
            feature_group_count=c,
        )
        return out[0, :k, :k, :].reshape(k * k, c)

    def patches_einsum(xp, g, k, s):  # stacked windows contracted in one einsum
        return jnp.einsum("nhwkc,nhwc->kc", jnp.stack(windows(xp, g, k, s), axis=-2), g)

    def native(xp, g, k, s):  # autodiff of XLA's grouped convolution
        c = xp.shape[-1]
        f = lambda kern: lax.conv_general_dilated(  # noqa: E731
            xp, kern, (s, s), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=c
        )
        return jax.vjp(f, jnp.zeros((k, k, 1, c), xp.dtype))[1](g)[0].reshape(k * k, c)

    return dict(
        shifts=shifts,
        variadic_all=variadic_all,
        batch_reduce=batch_reduce,
        batch_height_reduce=batch_height_reduce,
        chunked_height_reduce=chunked_height_reduce,
        scan_batch=scan_batch,
        batch_as_groups=batch_as_groups,
        patches_einsum=patches_einsum,
        native=native,
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--only", default="", help="comma list of formulations (default: all)")
    args = parser.parse_args()

    import jax
    import jax.numpy as jnp

    forms = formulations()
    if args.only:
        forms = {k: v for k, v in forms.items() if k in args.only.split(",")}
    jitted = {name: jax.jit(f, static_argnums=(2, 3)) for name, f in forms.items()}
    ref_fn = jax.jit(formulations()["shifts"], static_argnums=(2, 3))
    print(f"kernel gradient, ms (median of {args.repeats}); batch {args.batch}; jax {jax.__version__}")
    print("layer (n x h x w x c, k, s) | " + " | ".join(forms))
    rng = np.random.default_rng(0)
    for size, c, k, s in B0_LAYERS:
        pad = ((s - 1) + (k - 1)) // 2
        x = jnp.asarray(rng.standard_normal((args.batch, size, size, c)), jnp.float32)
        xp = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))  # zero borders, as the layer pads
        out = (size + 2 * pad - k) // s + 1
        g = jnp.asarray(rng.standard_normal((args.batch, out, out, c)), jnp.float32)
        ref = np.asarray(ref_fn(xp, g, k, s))
        errors, times = {}, {name: [] for name in jitted}
        for name, f in jitted.items():
            got = np.asarray(f(xp, g, k, s))
            errors[name] = float(np.abs(got - ref).max() / np.abs(ref).max())
        for _ in range(args.repeats):
            for name, f in jitted.items():
                start = time.perf_counter()
                f(xp, g, k, s).block_until_ready()
                times[name].append(time.perf_counter() - start)
        cells = [f"{statistics.median(times[n]) * 1e3:.1f} ({errors[n]:.0e})" for n in jitted]
        print(f"{args.batch}x{size}x{size}x{c}, k{k}, s{s} | " + " | ".join(cells), flush=True)


if __name__ == "__main__":
    main()
