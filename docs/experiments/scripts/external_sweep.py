"""Which fine-tuning recipe holds on X-rays from outside train/? A fast recipe sweep for a GPU.

    python docs/experiments/scripts/make_sweep_pack.py --out=PACK_DIR        # once, on a machine with ../shared/data
    python docs/experiments/scripts/external_sweep.py --pack=PACK_DIR --out=OUT_DIR [--only=plain,shipped] [--seeds=0,1,2]
        [--deadline=400]

A search tool, not the trainer: it keeps every image on the accelerator, draws
augmentations there, and trains many recipes in one process (each compile is shared
by every recipe with the same frozen layers), so a whole ablation with seeds fits in
minutes on one GPU where effnet-train needs ~30 min per full fine-tune on a 2-core CPU.
It reuses the package's model, freezing rules and loss; what it finds is then set in
configs/pneumonia.py and confirmed by effnet-train (docs/experiments/README.md).

PACK_DIR holds `images.bin` + `index.json` (JPEG bytes with name, label, split in
{train, validation, official_val, external}: the patient split of train/ that
effnet-train uses, and chest_xray_external) and `lite{N}.npz` (converted ImageNet
weights, '/'-joined variable paths). Every recipe is judged on `external` and never
trains on it. For each run OUT_DIR gets a JSON line in results.jsonl and the
probabilities of every evaluation image in probs_<recipe>_s<seed>.npz (for ensembles
and thresholds chosen afterwards).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import io
import json
import math
import pathlib
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util
from PIL import Image, ImageOps
from sklearn.metrics import roc_auc_score

from effnet_jax.labels import positive_probability
from effnet_jax.metrics.classification import sensitivity_threshold
from effnet_jax.models import build_model
from effnet_jax.train.freeze import frozen_mask, frozen_norms, until_pattern

EVAL_SPLITS = ("validation", "official_val", "external")


@dataclasses.dataclass(frozen=True)
class Recipe:
    """One training recipe; the defaults are the plain fine-tune (all layers, flips, class weights)."""

    name: str
    variant: int = 0  # EfficientNet-LiteN
    freeze_until: str = ""
    preprocess: str = "raw"  # 'raw', 'border' (crop black border), 'equalize', 'clahe'
    per_image_std: bool = False  # standardise each image to its own mean/std
    balance: str = "class_weights"  # 'class_weights', 'oversample', 'none'
    lr: float = 5e-4
    epochs: float = 2.0
    warmup_epochs: float = 0.2
    weight_decay: float = 1e-2
    clip: float = 1.0
    label_smoothing: float = 0.0
    ema: float = 0.0
    hflip: float = 0.5
    rotation: float = 0.0
    scale_min: float = 1.0
    translate: float = 0.0
    brightness: float = 0.0
    contrast: float = 0.0
    gamma: float = 0.0  # log-gamma drawn from [-gamma, gamma]
    erase: float = 0.0  # probability of one random-erasing rectangle
    mixup: float = 0.0  # Beta(alpha, alpha); 0 = off
    batch: int = 32


GEO = dict(rotation=10.0, scale_min=0.7, translate=0.05)
PHOTO = dict(brightness=0.2, contrast=0.2, gamma=0.3)
SHIPPED = dict(
    freeze_until="blocks_5", balance="oversample", hflip=0.0, lr=1e-3, epochs=3.0, label_smoothing=0.05, ema=0.99
)

RECIPES = [
    Recipe(n, **kw)
    for n, kw in [
        ("plain", {}),
        ("shipped_lite0", SHIPPED),
        ("freeze_blocks_3", dict(freeze_until="blocks_3")),
        ("freeze_blocks_5", dict(freeze_until="blocks_5")),
        ("geo", GEO),
        ("photo", PHOTO),
        ("geo_photo", {**GEO, **PHOTO}),
        ("per_image_std", dict(per_image_std=True)),
        ("border_crop", dict(preprocess="border")),
        ("equalize", dict(preprocess="equalize")),
        ("clahe", dict(preprocess="clahe")),
        ("erase", dict(erase=0.5)),
        ("mixup", dict(mixup=0.2)),
        ("lr_2e-4", dict(lr=2e-4)),
        ("lr_1e-3", dict(lr=1e-3)),
        ("epochs_1", dict(epochs=1.0)),
        ("epochs_4", dict(epochs=4.0)),
        ("oversample", dict(balance="oversample")),
        ("no_balance", dict(balance="none")),
        ("ema", dict(ema=0.99)),
        ("label_smoothing", dict(label_smoothing=0.1)),
        ("no_flip", dict(hflip=0.0)),
        ("lite2", dict(variant=2)),
        ("geo_photo_std", dict(**GEO, **PHOTO, per_image_std=True)),
        ("geo_photo_eq", dict(**GEO, **PHOTO, preprocess="equalize")),
        ("geo_photo_ema", dict(**GEO, **PHOTO, ema=0.99)),
        ("geo_photo_e4", dict(**GEO, **PHOTO, epochs=4.0)),
        ("geo_photo_erase", dict(**GEO, **PHOTO, erase=0.5)),
        ("geo_photo_freeze3", dict(**GEO, **PHOTO, freeze_until="blocks_3")),
        (
            "strong",
            dict(
                rotation=15.0,
                scale_min=0.5,
                translate=0.1,
                brightness=0.3,
                contrast=0.3,
                gamma=0.5,
                erase=0.5,
                mixup=0.2,
                epochs=4.0,
            ),
        ),
    ]
]


# --- data ---------------------------------------------------------------------------------


def _decode(data: bytes, size: int) -> np.ndarray:
    im = Image.open(io.BytesIO(data))
    im = ImageOps.grayscale(im) if im.mode != "L" else im
    if im.size != (size, size):
        im = im.resize((size, size), Image.BILINEAR)
    return np.asarray(im, np.uint8)


def crop_border(img: np.ndarray, level: int = 20) -> np.ndarray:
    """Crops rows and columns whose mean is near black at the edges, then resizes back."""
    size = img.shape[0]
    rows = np.flatnonzero(img.mean(axis=1) > level)
    cols = np.flatnonzero(img.mean(axis=0) > level)
    if len(rows) < size // 2 or len(cols) < size // 2:
        return img
    crop = img[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    return np.asarray(Image.fromarray(crop).resize((size, size), Image.BILINEAR))


def preprocess(images: np.ndarray, how: str) -> np.ndarray:
    if how == "raw":
        return images
    if how == "border":
        fn = crop_border
    elif how == "equalize":

        def fn(im):
            return np.asarray(ImageOps.equalize(Image.fromarray(im)))
    elif how == "clahe":
        import cv2

        clahe = cv2.createCLAHE(clipLimit=2.0, tileGridSize=(8, 8))
        fn = clahe.apply
    else:
        raise ValueError(f"preprocess={how!r}")
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        return np.stack(list(pool.map(fn, images)))


def load_pack(pack: pathlib.Path, size: int):
    index = json.loads((pack / "index.json").read_text())
    blob = (pack / "images.bin").read_bytes()
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        images = np.stack(list(pool.map(lambda e: _decode(blob[e["offset"] : e["offset"] + e["size"]], size), index)))
    labels = np.asarray([e["label"] for e in index], np.int32)
    splits = np.asarray([e["split"] for e in index])
    names = [e["name"] for e in index]
    return images, labels, splits, names


# --- augmentation on the accelerator ------------------------------------------------------


def augment(key, images, a):
    """images (B, H, W) float in [0, 1] -> augmented; `a` holds traced strengths."""
    b, h, w = images.shape
    ks = jax.random.split(key, 10)
    u = lambda k, shape=(b,): jax.random.uniform(k, shape, minval=-1.0, maxval=1.0)
    angle = u(ks[0]) * a["rotation"] * math.pi / 180
    side = jnp.sqrt(jax.random.uniform(ks[1], (b,), minval=a["scale_min"], maxval=1.0))
    shift = u(ks[2], (b, 2)) * a["translate"] * h
    flip = jnp.where(jax.random.bernoulli(ks[3], a["hflip"], (b,)), -1.0, 1.0)
    yy, xx = jnp.meshgrid(jnp.arange(h) - (h - 1) / 2, jnp.arange(w) - (w - 1) / 2, indexing="ij")

    def warp_one(img, ang, s, t, f):
        x = xx * f * s
        y = yy * s
        src_x = jnp.cos(ang) * x - jnp.sin(ang) * y + (w - 1) / 2 + t[1]
        src_y = jnp.sin(ang) * x + jnp.cos(ang) * y + (h - 1) / 2 + t[0]
        return jax.scipy.ndimage.map_coordinates(img, [src_y, src_x], order=1, mode="constant", cval=0.0)

    images = jax.vmap(warp_one)(images, angle, side, shift, flip)
    # Photometric: gamma, contrast about the image mean, brightness.
    gamma = jnp.exp(u(ks[4]) * a["gamma"])[:, None, None]
    images = jnp.clip(images, 0.0, 1.0) ** gamma
    mean = images.mean(axis=(1, 2), keepdims=True)
    images = (images - mean) * (1.0 + u(ks[5]) * a["contrast"])[:, None, None] + mean
    images = images + (u(ks[6]) * a["brightness"])[:, None, None]
    # Random erasing: one rectangle of 2-20% of the area, filled with noise.
    area = jax.random.uniform(ks[7], (b,), minval=0.02, maxval=0.2) * h * w
    ratio = jnp.exp(u(ks[8]) * math.log(3.0))
    eh, ew = jnp.sqrt(area * ratio), jnp.sqrt(area / ratio)
    c = jax.random.uniform(ks[9], (b, 3))
    cy, cx = c[:, 0] * h, c[:, 1] * w
    inside = (jnp.abs(yy[None] + (h - 1) / 2 - cy[:, None, None]) < eh[:, None, None] / 2) & (
        jnp.abs(xx[None] + (w - 1) / 2 - cx[:, None, None]) < ew[:, None, None] / 2
    )
    erase = (c[:, 2] < a["erase"])[:, None, None] & inside
    noise = jax.random.uniform(jax.random.fold_in(key, 99), images.shape)
    return jnp.where(erase, noise, images)


def normalise(images, per_image_std, mean: float, std: float):
    """(B, H, W) in [0, 1] -> (B, H, W, 3) model input; per-image standardisation keeps the
    pretrained input scale (std of the whole-data normalisation)."""
    plain = (images - mean) / std
    m = images.mean(axis=(1, 2), keepdims=True)
    s = images.std(axis=(1, 2), keepdims=True) + 1e-3
    standard = (images - m) / s * (0.25 / std)
    x = jnp.where(jnp.asarray(per_image_std, jnp.float32) > 0.5, standard, plain)
    return jnp.repeat(x[..., None], 3, axis=-1)


# --- training -----------------------------------------------------------------------------


def load_variables(pack: pathlib.Path, variant: int) -> dict:
    flat = dict(np.load(pack / f"lite{variant}.npz"))
    return traverse_util.unflatten_dict({k: jnp.asarray(v, jnp.float32) for k, v in flat.items()}, sep="/")


class Trainer:
    """Compiled train and eval steps for one (variant, freezing) pair, shared by recipes."""

    def __init__(self, variant: int, freeze_until: str, variables: dict, size: int):
        params = variables["params"]
        patterns = [("freeze_until", until_pattern(freeze_until, params))] if freeze_until else []
        mask = frozen_mask(params, patterns)
        self.trainable = jax.tree.map(lambda m: 0.0 if m else 1.0, mask)
        self.decay = traverse_util.unflatten_dict(
            {k: float(v.ndim > 1) for k, v in traverse_util.flatten_dict(params, sep="/").items()}, sep="/"
        )
        self.model = build_model(
            f"tf_efficientnet_lite{variant}", num_classes=2, drop_path_rate=0.1, frozen_norms=frozen_norms(mask)
        )
        self.mean, self.std = self.model.variant.mean[0], self.model.variant.std[0]
        self.size = size
        self.train_step = jax.jit(self._train_step, donate_argnums=(0,))
        self.predict = jax.jit(self._predict)

    def _train_step(self, state, images_all, idx, labels, key, hp):
        k_aug, k_mix, k_drop = jax.random.split(key, 3)
        x = augment(k_aug, images_all[idx].astype(jnp.float32) / 255.0, hp)
        x = normalise(x, hp["per_image_std"], self.mean, self.std)
        onehot = jax.nn.one_hot(labels, 2)
        onehot = onehot * (1 - hp["label_smoothing"]) + hp["label_smoothing"] / 2
        weights = hp["class_weights"][labels]
        lam = jnp.where(
            hp["mixup"] > 0, jax.random.beta(k_mix, jnp.maximum(hp["mixup"], 1e-3), jnp.maximum(hp["mixup"], 1e-3)), 1.0
        )
        lam = jnp.maximum(lam, 1 - lam)
        perm = jnp.roll(jnp.arange(x.shape[0]), 1)
        x = lam * x + (1 - lam) * x[perm]
        onehot = lam * onehot + (1 - lam) * onehot[perm]
        weights = lam * weights + (1 - lam) * weights[perm]

        def loss_fn(params):
            logits, updates = self.model.apply(
                {"params": params, "batch_stats": state["batch_stats"]},
                x,
                train=True,
                mutable=["batch_stats"],
                rngs={"dropout": k_drop},
            )
            loss = -jnp.sum(onehot * jax.nn.log_softmax(logits.astype(jnp.float32)), axis=-1)
            return jnp.mean(loss * weights), updates["batch_stats"]

        (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"])
        grads = jax.tree.map(lambda g, t: g * t, grads, self.trainable)
        norm = jnp.sqrt(sum(jnp.sum(g * g) for g in jax.tree.leaves(grads)))
        grads = jax.tree.map(
            lambda g: g * jnp.where(hp["clip"] > 0, jnp.minimum(1.0, hp["clip"] / (norm + 1e-9)), 1.0), grads
        )
        step = state["step"] + 1
        b1, b2, eps = 0.9, 0.999, 1e-8
        mu = jax.tree.map(lambda m, g: b1 * m + (1 - b1) * g, state["mu"], grads)
        nu = jax.tree.map(lambda v, g: b2 * v + (1 - b2) * g * g, state["nu"], grads)
        warm = hp["warmup_steps"]
        progress = jnp.clip((step - warm) / jnp.maximum(hp["total_steps"] - warm, 1), 0.0, 1.0)
        cosine = 0.01 + 0.99 * 0.5 * (1 + jnp.cos(math.pi * progress))
        lr = hp["lr"] * jnp.where(step <= warm, step / jnp.maximum(warm, 1), cosine)
        c1, c2 = 1 - b1**step, 1 - b2**step

        def update(p, m, v, t, d):
            u = (m / c1) / (jnp.sqrt(v / c2) + eps) + hp["weight_decay"] * d * p
            return p - lr * u * t

        params = jax.tree.map(update, state["params"], mu, nu, self.trainable, self.decay)
        ema_d = hp["ema"]
        ema = jax.tree.map(
            lambda e, p: ema_d * e + (1 - ema_d) * p, state["ema"], {"params": params, "batch_stats": batch_stats}
        )
        return dict(params=params, batch_stats=batch_stats, mu=mu, nu=nu, ema=ema, step=step), loss

    def _predict(self, variables, images_u8, per_image_std, flip):
        x = images_u8.astype(jnp.float32) / 255.0
        x = jnp.where(flip, x[:, :, ::-1], x)
        x = normalise(x, per_image_std, self.mean, self.std)
        return positive_probability(self.model.apply(variables, x, train=False))


def epoch_order(rng, labels, balance):
    if balance == "oversample":
        normal, pneu = np.flatnonzero(labels == 0), np.flatnonzero(labels == 1)
        big, small = (pneu, normal) if len(pneu) > len(normal) else (normal, pneu)
        extra = rng.choice(small, len(big) - len(small), replace=True)
        order = np.concatenate([big, small, extra])
        return rng.permutation(order)
    return rng.permutation(len(labels))


def scores(labels, probs, t):
    pred = probs >= t
    sens = float(np.mean(pred[labels == 1]))
    spec = float(np.mean(~pred[labels == 0]))
    return dict(
        t=round(float(t), 4), acc=round(float(np.mean(pred == labels)), 4), sens=round(sens, 4), spec=round(spec, 4)
    )


def run_recipe(r: Recipe, seed: int, trainer: Trainer, data: dict, init: dict):
    train_idx = data["train_idx"]
    labels = data["labels"][train_idx]
    counts = np.bincount(labels, minlength=2)
    cw = counts.sum() / (2 * counts) if r.balance == "class_weights" else np.ones(2)
    prior = 0.5 if r.balance in ("class_weights", "oversample") else counts[1] / counts.sum()
    per_epoch = (2 * counts.max() if r.balance == "oversample" else counts.sum()) // r.batch
    total = int(round(r.epochs * per_epoch))
    hp = dict(
        rotation=r.rotation,
        scale_min=r.scale_min,
        translate=r.translate,
        hflip=r.hflip,
        brightness=r.brightness,
        contrast=r.contrast,
        gamma=r.gamma,
        erase=r.erase,
        mixup=r.mixup,
        per_image_std=r.per_image_std,
        label_smoothing=r.label_smoothing,
        clip=r.clip,
        lr=r.lr,
        weight_decay=r.weight_decay,
        ema=r.ema,
        warmup_steps=float(round(r.warmup_epochs * per_epoch)),
        total_steps=float(total),
    )
    hp = {k: jnp.asarray(v, jnp.float32) for k, v in hp.items()}
    hp["class_weights"] = jnp.asarray(cw, jnp.float32)
    zeros = jax.tree.map(jnp.zeros_like, init["params"])
    state = dict(
        params=init["params"],
        batch_stats=init["batch_stats"],
        mu=zeros,
        nu=jax.tree.map(jnp.zeros_like, zeros),
        ema=jax.tree.map(jnp.copy, init),
        step=jnp.int32(0),
    )
    # The classifier starts at zero (loss ln 2), as effnet-train does.
    state["params"] = {**state["params"], "classifier": jax.tree.map(jnp.zeros_like, state["params"]["classifier"])}
    state["ema"] = {"params": state["params"], "batch_stats": state["batch_stats"]}
    state = jax.tree.map(jnp.copy, state)
    rng = np.random.default_rng(seed)
    key = jax.random.PRNGKey(seed)
    images = data["images"][r.preprocess]
    t0 = time.perf_counter()
    step, losses = 0, []
    while step < total:
        order = epoch_order(rng, labels, r.balance)
        for i in range(0, len(order) - r.batch + 1, r.batch):
            if step >= total:
                break
            idx = train_idx[order[i : i + r.batch]]
            state, loss = trainer.train_step(
                state, images, jnp.asarray(idx), jnp.asarray(data["labels"][idx]), jax.random.fold_in(key, step), hp
            )
            step += 1
            if step % 50 == 0:
                losses.append(float(loss))
    jax.block_until_ready(state)
    train_s = time.perf_counter() - t0
    variables = state["ema"] if r.ema > 0 else {"params": state["params"], "batch_stats": state["batch_stats"]}
    out, probs_out = (
        dict(
            recipe=r.name,
            seed=seed,
            steps=total,
            train_s=round(train_s, 1),
            losses=losses,
            prior=float(prior),
            config=dataclasses.asdict(r),
        ),
        {},
    )
    for flip_tta in (False, True):
        for split in EVAL_SPLITS:
            idx = data["split_idx"][split]
            probs = []
            for i in range(0, len(idx), 128):
                chunk = jnp.asarray(images[idx[i : i + 128]])
                p = trainer.predict(variables, chunk, r.per_image_std, False)
                if flip_tta:
                    p = (p + trainer.predict(variables, chunk, r.per_image_std, True)) / 2
                probs.append(np.asarray(p))
            probs = np.concatenate(probs)
            y = data["labels"][idx]
            tag = split + ("_flip" if flip_tta else "")
            probs_out[tag] = probs
            res = dict(
                auc=round(float(roc_auc_score(y, probs)), 4),
                at_05=scores(y, probs, 0.5),
                at_prior=scores(y, probs, prior),
            )
            if split == "external":
                res["at_sens95"] = scores(y, probs, sensitivity_threshold(y, probs))
            out[tag] = res
    return out, probs_out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pack", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--only", default="")
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--deadline", type=float, default=1e9, help="seconds; start no run after this")
    ap.add_argument("--max_steps", type=int, default=0, help="cap every run (smoke tests)")
    args = ap.parse_args()
    t_start = time.perf_counter()
    pack, out = pathlib.Path(args.pack), pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    recipes = [r for r in RECIPES if not args.only or r.name in args.only.split(",")]
    if args.max_steps:
        recipes = [dataclasses.replace(r, epochs=args.max_steps / 140) for r in recipes]
    images, labels, splits, names = load_pack(pack, args.size)
    data = dict(
        labels=labels,
        train_idx=np.flatnonzero(splits == "train"),
        split_idx={s: np.flatnonzero(splits == s) for s in EVAL_SPLITS},
    )
    assert not set(data["train_idx"]) & set(data["split_idx"]["external"])
    data["images"] = {how: jnp.asarray(preprocess(images, how)) for how in sorted({r.preprocess for r in recipes})}
    (out / "eval_index.json").write_text(
        json.dumps(
            {
                s: {"names": [names[i] for i in idx], "labels": labels[idx].tolist()}
                for s, idx in data["split_idx"].items()
            }
        )
    )
    print(f"data ready in {time.perf_counter() - t_start:.0f}s on {jax.devices()[0].device_kind}", flush=True)
    trainers, inits = {}, {}
    for seed in [int(s) for s in args.seeds.split(",")]:
        for r in recipes:
            if time.perf_counter() - t_start > args.deadline:
                print("deadline reached", flush=True)
                return
            if r.variant not in inits:
                inits[r.variant] = load_variables(pack, r.variant)
            key = (r.variant, r.freeze_until)
            if key not in trainers:
                trainers[key] = Trainer(r.variant, r.freeze_until, inits[r.variant], args.size)
            t0 = time.perf_counter()
            result, probs = run_recipe(r, seed, trainers[key], data, inits[r.variant])
            result["wall_s"] = round(time.perf_counter() - t0, 1)
            with open(out / "results.jsonl", "a") as f:
                f.write(json.dumps(result) + "\n")
            np.savez(out / f"probs_{r.name}_s{seed}.npz", **probs)
            e = result["external"]
            print(
                f"{r.name:18s} s{seed} ext AUC {e['auc']:.4f} acc@.5 {e['at_05']['acc']:.3f} "
                f"spec@.5 {e['at_05']['spec']:.3f} @sens95: acc {e['at_sens95']['acc']:.3f} "
                f"spec {e['at_sens95']['spec']:.3f} | val AUC {result['validation']['auc']:.4f} "
                f"| {result['wall_s']}s",
                flush=True,
            )


if __name__ == "__main__":
    main()
