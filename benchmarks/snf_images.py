"""SNF paper, Fig. 3 (2-D image densities): flow vs pure MC vs SNF, and the depth / MC-steps sweeps (Fig. 3d-e).

    python benchmarks/snf_images.py --out runs/bench/snf_images            # full
    python benchmarks/snf_images.py --quick --out runs/bench/snf_images_quick

Models (depth 5 by default, SNF paper sec. 5): "flow" = RealNVP with ``--layers`` coupling layers; "MC" = the same
number of Metropolis blocks with ``--mc-steps`` (10) steps each, lambda_t = t / T, from the N(0, I) prior (no
training); "SNF" = the RealNVP with a Metropolis block after every layer. Flow and SNF are trained by path KL
(SNF eq. 13, method ``reverse_kl``; ``--ml-weight`` > 0 adds ML on exact samples, eq. 14, method ``kl_ml``) by
``boltzflow.fit``, the loop ``boltzflow train`` runs (constant learning rate, gradient-norm clip 10;
run directories under OUT/runs). Metric: the KL divergence between the 50 x 50
histogram of ``--samples`` unweighted samples h and the exact bin probabilities p on the image box (both
normalised on the box; p by a 4 x 4 midpoint rule per bin of the exact normalised density):

    kl = KL(h || p) = sum_b h_b log(h_b / p_b)        and       kl_pq = KL(p || h_eps), h_eps = (h + 1e-4)/(1 + 1e-4 B).

Writes OUT/images.json, OUT/<image>.png (exact | flow | MC | SNF histograms side by side) and OUT/sweeps.png
(KL vs number of flow layers for flow and SNF; KL vs MC steps per block for MC and SNF).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import boltzflow as bf
from boltzflow.experiment import build_experiment  # MC's untrained model: the public API only trains

BINS = 50


def exact_hist(target):
    xmin, xmax, ymin, ymax = target.extent
    sub = 4
    gx = np.linspace(xmin, xmax, BINS * sub + 1)
    gy = np.linspace(ymin, ymax, BINS * sub + 1)
    cx, cy = 0.5 * (gx[1:] + gx[:-1]), 0.5 * (gy[1:] + gy[:-1])
    xx, yy = np.meshgrid(cx, cy, indexing="ij")
    pts = jnp.asarray(np.stack([xx.ravel(), yy.ravel()], 1), jnp.float32)
    lp = np.asarray(jax.jit(target.log_prob)(pts), np.float64).reshape(BINS * sub, BINS * sub)
    p = np.exp(lp - lp.max()).reshape(BINS, sub, BINS, sub).sum((1, 3))
    return p / p.sum()


def sample_hist(target, x):
    xmin, xmax, ymin, ymax = target.extent
    h, _, _ = np.histogram2d(x[:, 0], x[:, 1], BINS, [[xmin, xmax], [ymin, ymax]])
    return h / max(h.sum(), 1)


def kls(h, p):
    m = h > 0
    kl = float(np.sum(h[m] * np.log(h[m] / p[m])))
    he = (h + 1e-4) / (1 + 1e-4 * h.size)
    return kl, float(np.sum(p * np.log(p / he)))


def draw(model, key, n, chunk=20_000):
    f = jax.jit(lambda k: model.sample(k, chunk))
    xs = [f(k) for k in jax.random.split(key, -(-n // chunk))]
    return np.asarray(jnp.concatenate(xs))[:n]


def config(kind, image, layers, mc_steps, seed, args):
    flow = {"type": "realnvp", "n_layers": layers, "hidden": args.hidden}
    blocks = {"kernel": "metropolis", "n_steps": mc_steps, "step_size": args.mc_step_size}
    if kind == "MC":
        flow = {"type": "snf", "blocks": {**blocks, "n_blocks": layers}}
    elif kind == "SNF":
        flow = {"type": "snf", "flow": flow, "blocks": blocks}
    method = {"name": "kl_ml", "kl_weight": 1.0, "ml_weight": args.ml_weight} if args.ml_weight else "reverse_kl"
    return bf.load_config({
        "name": f"{image}-{kind}-L{layers}-mc{mc_steps}", "target": image, "flow": flow, "method": method,
        "train": {"steps": args.steps, "batch_size": args.batch, "lr": args.lr, "warmup_steps": 0,
                  "final_lr_fraction": 1.0, "clip_norm": 10.0, "eval_every": args.steps, "eval_samples": 4096,
                  "checkpoint_every": args.steps, "seed": seed}})


def evaluate_one(kind, image, target, p, seed, layers, mc_steps, args):
    cfg = config(kind, image, layers, mc_steps, seed, args)
    t0 = time.time()
    if kind == "MC":  # no parameters to train: the blocks from the prior
        model = build_experiment(cfg).model
    else:
        run = Path(args.out) / "runs" / f"{cfg.name}-seed{seed}"
        model = bf.fit(None, cfg, out=run, progress=False).model
    x = draw(model, jax.random.key(10_000 + seed), args.samples)
    h = sample_hist(target, x)
    kl, kl_pq = kls(h, p)
    return {"model": kind, "layers": layers, "mc_steps": mc_steps, "kl": kl, "kl_pq": kl_pq,
            "time_s": time.time() - t0}, h


def picture(path, target, p, hists, titles):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(hists) + 1, figsize=(3 * (len(hists) + 1), 3))
    xmin, xmax, ymin, ymax = target.extent
    for ax, h, t in zip(axes, [p] + hists, ["exact"] + titles):
        ax.imshow(h.T, origin="lower", extent=(xmin, xmax, ymin, ymax), cmap="viridis")
        ax.set_title(t, fontsize=9)
        ax.set_xticks([]), ax.set_yticks([])
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def sweep_plot(path, sweeps):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(8, 3.2))
    for ax, (xkey, rows, label) in zip(axes, [("layers", sweeps["layers"], "number of flow layers / blocks"),
                                               ("mc_steps", sweeps["mc_steps"], "MC steps per block")]):
        for kind in sorted({r["model"] for r in rows}):
            rs = sorted([r for r in rows if r["model"] == kind], key=lambda r: r[xkey])
            ax.plot([r[xkey] for r in rs], [r["kl"] for r in rs], "o-", label=kind)
        ax.set_xlabel(label), ax.set_ylabel("KL(samples || exact)"), ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", nargs="+", default=["smiley", "dog", "text"])
    ap.add_argument("--layers", type=int, default=5)
    ap.add_argument("--mc-steps", type=int, default=10)
    ap.add_argument("--mc-step-size", type=float, default=0.25)
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--ml-weight", type=float, default=0.0)
    ap.add_argument("--samples", type=int, default=100_000)
    ap.add_argument("--sweep-image", default="smiley")
    ap.add_argument("--sweep-layers", type=int, nargs="*", default=[1, 2, 3, 5, 8])
    ap.add_argument("--sweep-mc-steps", type=int, nargs="*", default=[1, 3, 10, 30])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="smiley only, 150 steps, 20k samples, small sweeps")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    if args.quick:
        args.images, args.steps, args.samples, args.hidden = ["smiley"], 150, 20_000, 32
        args.sweep_layers, args.sweep_mc_steps = [1, 3], [1, 5]

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    base = 1000 * args.seed
    results = {"args": vars(args), "device": str(jax.devices()[0]), "images": {}, "sweeps": {}}
    for name in args.images:
        target = bf.make_target(name)
        p = exact_hist(target)
        rows, hists = [], []
        for kind in ("flow", "MC", "SNF"):
            r, h = evaluate_one(kind, name, target, p, base + len(rows), args.layers, args.mc_steps, args)
            print(f"{name} {kind}: KL {r['kl']:.3f} (KL p||h {r['kl_pq']:.3f}, {r['time_s']:.0f}s)", flush=True)
            rows.append(r), hists.append(h)
        results["images"][name] = rows
        picture(out / f"{name}.png", target, p, hists, [f"{r['model']} KL={r['kl']:.2f}" for r in rows])
    target = bf.make_target(args.sweep_image)
    p = exact_hist(target)
    sw_layers, sw_steps = [], []
    for n in args.sweep_layers:
        for kind in ("flow", "SNF"):
            sw_layers.append(evaluate_one(kind, args.sweep_image, target, p, base + 100 + n, n, args.mc_steps, args)[0])
            print(f"sweep layers={n} {kind}: KL {sw_layers[-1]['kl']:.3f}", flush=True)
    for s in args.sweep_mc_steps:
        for kind in ("MC", "SNF"):
            sw_steps.append(evaluate_one(kind, args.sweep_image, target, p, base + 200 + s, args.layers, s, args)[0])
            print(f"sweep mc_steps={s} {kind}: KL {sw_steps[-1]['kl']:.3f}", flush=True)
    results["sweeps"] = {"image": args.sweep_image, "layers": sw_layers, "mc_steps": sw_steps}
    sweep_plot(out / "sweeps.png", results["sweeps"])
    (out / "images.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
