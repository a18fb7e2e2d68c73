"""SNF paper, Table 1: free energy along x1 of the double well from RNVP, RNVP+MC, NSF, NSF+MC.

    python benchmarks/snf_double_well.py --out runs/bench/snf_dw.json            # full (10 trainings each)
    python benchmarks/snf_double_well.py --quick --out runs/bench/snf_dw_quick.json
    python benchmarks/snf_double_well.py --paper --out runs/bench/snf_dw_paper.json  # the paper's training budget

Protocol (Wu, Koehler & Noe 2020, sec. 5 / Table 1). Each model is trained ``--trainings`` times from different
seeds (default KL + ML, SNF eqs. 13-14, ``--kl-weight`` / ``--ml-weight``) by ``boltzflow.fit``, the
loop ``boltzflow train`` runs (Adam at a constant learning rate: ``warmup_steps: 0``, ``final_lr_fraction: 1``;
gradient-norm clip 10); the run directories are kept under ``--runs``. "+MC" puts a Metropolis block
(``--mc-steps`` steps, lambda = i / n after layer i of n) after every flow layer; ``--no-mc-at-end`` drops the
block after the last layer (the SNF ends on a flow layer). After training, ``--samples`` (100k) samples give the
free energy along x1 on ``--bins`` bins over [-2.5, 2.5],

    F_hat(b) = -log( mass_hat(b) / width ),   F(b) = -log( int_b p(x1) dx1 / width )   (quadrature, exact),

from unweighted samples and from samples reweighted by their path weights (SNF eq. 11). Both are normalised on
[-2.5, 2.5] (free energies are defined up to a constant; the constant is fixed by the window's total mass).
Per training, over the bins that the estimate populates (empty bins are counted, not used):

    bias = sqrt(mean_b (F_hat(b) - F(b))^2 computed on the full sample),
    sqrt(var) = sqrt(mean_b var_hat(F_hat(b))) with var_hat from 10 sub-batches (batch-means estimate of the
                variance of F_hat on the full sample size),
    total = sqrt(bias^2 + var).

Reported: mean ± std over trainings of each, for each model, unweighted and reweighted (JSON via --out, with
every training's F_hat per bin for benchmarks/plot_free_energy.py, and a markdown table), and the same metric on
exact samples (rejection sampler), the floor set by the sample size: with 100k samples the barrier bins hold a
handful of samples, so even a perfect sampler scores about 0.3. An importance sampler can go below it: a
proposal that puts more samples than p in the barrier bins and reweights them has less variance there than exact
sampling.

``--paper`` sets the paper's own models and training budget (its code, noegroup/stochastic_normalizing_flows,
experiment1_doublewell.ipynb): 3 blocks of 2 couplings (RNVP MLP 64x2; NSF 20 bins, tail bound 3, MLP 64x3); "+MC":
a Metropolis block of 20 steps (step 0.25) before the first coupling and after every block (4 blocks); ML on a fixed
set of 10k equilibrium samples (here exact ones, written to a .npy file that the method's ``data`` option reads;
the paper's came from a long Metropolis chain), 300 Adam steps of ML alone, then 300 of 0.5 ML + 0.5 KL started
from the first run's model (``train.init_from``), batch 128, lr 5e-3. Differences that remain: our lambdas are the fraction of
the flow done (0, 1/3, 2/3, 1; the paper's 0, 0, 1/2, 1), SiLU conditioners (the paper's ReLU; one MLP for
scale and shift), the Adam state restarts between the two phases, and the error metric is the one above (the
paper's bias is |mean over bins of the signed error| and its std is over 20 repeated 100k draws of one model).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import boltzflow as bf
from boltzflow.flows.paths import path_weights
from boltzflow.targets.wells import DoubleWell, free_energy_x1

MODELS = ("RNVP", "RNVP+MC", "NSF", "NSF+MC")
EXACT = "exact samples"  # reference row: the metric's own noise floor at this sample size


def flow_spec(name, args):
    flow = {"type": "realnvp", "n_layers": args.layers, "hidden": args.hidden, "depth": args.depth}
    if name.startswith("NSF"):
        flow.update(type="nsf", bins=args.nsf_bins, bound=args.nsf_bound, depth=args.nsf_depth or args.depth)
    if name.endswith("+MC"):
        return {"type": "snf", "flow": flow,
                "blocks": {"kernel": "metropolis", "n_steps": args.mc_steps, "step_size": args.mc_step_size,
                           "every": args.mc_every, "at_start": args.mc_at_start, "at_end": args.mc_at_end,
                           "learn_lambda": args.mc_learn, "learn_step_size": args.mc_learn}}
    return flow


def config(name, seed, args, method, steps, data=None, init_from=None):
    """The run's config: what `boltzflow train` would read from a YAML file."""
    if data is not None:
        method = {**method, "data": str(data)}
    return bf.load_config({
        "name": f"{name}-seed{seed}", "target": "double_well", "flow": flow_spec(name, args), "method": method,
        "train": {"steps": steps, "batch_size": args.batch, "lr": args.lr, "warmup_steps": 0,
                  "final_lr_fraction": 1.0, "clip_norm": 10.0, "eval_every": steps, "eval_samples": 4096,
                  "checkpoint_every": steps, "seed": seed, "init_from": init_from}})


def exact_free_energy(edges):
    grid = np.linspace(edges[0], edges[-1], 50 * (len(edges) - 1) + 1)
    dens = np.exp(-np.asarray(free_energy_x1(jnp.asarray(grid, jnp.float32)), np.float64))
    mass = np.array([np.trapezoid(dens[i * 50:(i + 1) * 50 + 1], grid[i * 50:(i + 1) * 50 + 1])
                     for i in range(len(edges) - 1)])
    mass /= mass.sum()
    return -np.log(mass / np.diff(edges))


def free_energy(x1, w, edges):
    """F_hat per bin from (weighted) samples, normalised on the window; +inf where empty."""
    mass, _ = np.histogram(x1, edges, weights=w)
    mass = mass / max(mass.sum(), 1e-300)
    with np.errstate(divide="ignore"):
        return -np.log(mass / np.diff(edges))


def errors(x1, w, edges, f_exact, n_batches=10):
    f_full = free_energy(x1, w, edges)
    ok = np.isfinite(f_full)
    parts = [free_energy(a, b, edges) for a, b in zip(np.array_split(x1, n_batches), np.array_split(w, n_batches))]
    parts = np.stack(parts)
    ok_var = ok & np.all(np.isfinite(parts), 0)
    var_batch = np.var(parts[:, ok_var], axis=0, ddof=1) / n_batches  # variance of the full-sample estimate
    bias = float(np.sqrt(np.mean((f_full[ok] - f_exact[ok]) ** 2)))
    svar = float(np.sqrt(np.mean(var_batch))) if ok_var.any() else float("nan")
    return {"bias": bias, "sqrt_var": svar, "total": float(np.sqrt(bias**2 + svar**2)),
            "empty_bins": int((~ok).sum()), "profile": [float(v) if np.isfinite(v) else None for v in f_full]}


def run_one(name, seed, target, args, edges, f_exact):
    key = jax.random.key(seed)
    k_sample, k_data = jax.random.split(key)
    run = Path(args.runs) / f"{name}-seed{seed}"
    data = None
    if args.data:  # a fixed training set (else fresh exact samples every step)
        run.mkdir(parents=True, exist_ok=True)
        data = run / "data.npy"
        np.save(data, np.asarray(target.sample(k_data, args.data)))
    kl_ml = {"name": "kl_ml", "kl_weight": args.kl_weight, "ml_weight": args.ml_weight}
    t0 = time.time()
    init_from = None
    if args.ml_steps:  # ML alone first (the paper's first phase), then KL + ML from its model
        init_from = str(run / "ml")
        bf.fit(None, config(name, seed, args, {"name": "forward_kl"}, args.ml_steps, data), out=init_from,
               progress=False)
    trained = bf.fit(None, config(name, seed, args, kl_ml, args.steps, data, init_from), out=run / "kl_ml",
                     progress=False)
    train_s = time.time() - t0
    jax.clear_caches()  # every training compiles its own steps: without this, 80 trainings fill the memory
    model = trained.model
    losses = [r["loss"] for r in trained.history]
    blocks = [layer for layer in model.layers if layer.stochastic]
    learned = {"lambdas": [float(b.lam) for b in blocks], "step_sizes": [float(b.step_size) for b in blocks]}
    return {"model": name, "seed": seed, "train_s": train_s, "final_loss": float(np.mean(losses[-2:])), **learned,
            **score(model, target, k_sample, args.samples, args.chunk, edges, f_exact)}


def score(model, target, key, n_samples, chunk, edges, f_exact):
    """ESS, log Z error and the free-energy errors (unweighted and reweighted) of n_samples paths."""
    draw = jax.jit(lambda k: path_weights(model, target, k, chunk)[:2])
    xs, lws = zip(*[draw(k) for k in jax.random.split(key, -(-n_samples // chunk))])
    x = np.asarray(jnp.concatenate(xs))[:n_samples]
    lw = np.asarray(jnp.concatenate(lws), np.float64)[:n_samples]
    lw = np.where(np.isfinite(lw), lw, -np.inf)
    w = np.exp(lw - lw.max())
    ess = float(w.sum() ** 2 / (len(w) * (w**2).sum()))
    log_z = float(np.log(w.mean()) + lw.max())
    return {"ess": ess, "log_z_error": log_z - target.log_z,
            "unweighted": errors(x[:, 0], np.ones(len(x)), edges, f_exact),
            "reweighted": errors(x[:, 0], w, edges, f_exact)}


def summarise(runs, names=MODELS):
    out = {}
    for name in names:
        rs = [r for r in runs if r["model"] == name]
        if not rs:
            continue
        s = {k: [float(np.mean([r[k] for r in rs])), float(np.std([r[k] for r in rs]))]
             for k in ("ess", "log_z_error")}
        for kind in ("unweighted", "reweighted"):
            for m in ("bias", "sqrt_var", "total"):
                v = np.array([r[kind][m] for r in rs])
                s[f"{kind}_{m}"] = [float(np.nanmean(v)), float(np.nanstd(v))]
        out[name] = s
    return out


def table(summary):
    cols = ["unweighted_bias", "unweighted_sqrt_var", "unweighted_total", "reweighted_bias", "reweighted_sqrt_var",
            "reweighted_total", "ess", "log_z_error"]
    lines = ["| model | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for name, s in summary.items():
        lines.append(f"| {name} | " + " | ".join(f"{s[c][0]:.2f} ± {s[c][1]:.2f}" for c in cols) + " |")
    return "\n".join(lines)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trainings", type=int, default=10)
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--layers", type=int, default=6)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--depth", type=int, default=2, help="hidden layers of the conditioner MLPs")
    p.add_argument("--nsf-depth", type=int, default=None, help="hidden layers for NSF (default: --depth)")
    p.add_argument("--nsf-bins", type=int, default=8)
    p.add_argument("--nsf-bound", type=float, default=5.0)
    p.add_argument("--mc-steps", type=int, default=10)
    p.add_argument("--mc-step-size", type=float, default=0.3)
    p.add_argument("--mc-every", type=int, default=1, help="a Metropolis block after every this many flow layers")
    p.add_argument("--mc-at-start", action="store_true", help="also a Metropolis block before the first layer")
    p.add_argument("--mc-at-end", action=argparse.BooleanOptionalAction, default=True,
                   help="a block after the last layer (--no-mc-at-end: the SNF ends on a flow layer)")
    p.add_argument("--mc-learn", action="store_true", help="learnable lambdas and step sizes (SNF's adaptive variant)")
    p.add_argument("--kl-weight", type=float, default=1.0)
    p.add_argument("--ml-weight", type=float, default=1.0)
    p.add_argument("--ml-steps", type=int, default=0, help="steps of ML alone before the --steps of KL + ML")
    p.add_argument("--data", type=int, default=0,
                   help="ML on a fixed set of this many exact samples (0: fresh exact samples every step)")
    p.add_argument("--samples", type=int, default=100_000)
    p.add_argument("--chunk", type=int, default=20_000)
    p.add_argument("--bins", type=int, default=50)
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    p.add_argument("--quick", action="store_true", help="2 trainings, 150 steps, 3 layers, 20k samples")
    p.add_argument("--paper", action="store_true", help="the paper's models and training budget (docstring)")
    p.add_argument("--out", required=True)
    p.add_argument("--runs", default="runs/bench/snf_dw_runs", help="where the run directories go")
    args = p.parse_args()
    if args.paper:
        args.layers, args.hidden, args.depth, args.nsf_depth, args.nsf_bins, args.nsf_bound = 6, 64, 2, 3, 20, 3.0
        args.mc_steps, args.mc_step_size, args.mc_every, args.mc_at_start = 20, 0.25, 2, True
        args.data, args.ml_steps, args.steps, args.kl_weight, args.ml_weight = 10_000, 300, 300, 0.5, 0.5
        args.batch, args.lr = 128, 5e-3
    if args.quick:
        args.trainings, args.steps, args.layers, args.hidden = 2, 150, 3, 32
        args.samples, args.chunk, args.mc_steps, args.bins = 20_000, 10_000, 5, 25

    target = DoubleWell()
    edges = np.linspace(-2.5, 2.5, args.bins + 1)
    f_exact = exact_free_energy(edges)
    runs = []
    for name in args.models:
        for seed in range(args.trainings):
            r = run_one(name, seed, target, args, edges, f_exact)
            print(f"{name} seed {seed}: ess {r['ess']:.3f} rew. total {r['reweighted']['total']:.3f} "
                  f"unw. total {r['unweighted']['total']:.3f} ({r['train_s']:.0f}s)", flush=True)
            runs.append(r)
    for seed in range(args.trainings):  # the floor of the metric: exact samples, all weights equal
        x1 = np.asarray(target.sample(jax.random.key(10_000 + seed), args.samples))[:, 0]
        e = errors(x1, np.ones(len(x1)), edges, f_exact)
        runs.append({"model": EXACT, "seed": seed, "ess": 1.0, "log_z_error": 0.0, "unweighted": e, "reweighted": e})
    summary = summarise(runs, [m for m in args.models] + [EXACT])
    print(table(summary))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"args": vars(args), "platform": platform.platform(), "device": str(jax.devices()[0]),
                               "date": time.strftime("%Y-%m-%d"),
                               "bin_centres": (0.5 * (edges[1:] + edges[:-1])).tolist(), "f_exact": f_exact.tolist(),
                               "summary": summary, "runs": runs}))


if __name__ == "__main__":
    main()
