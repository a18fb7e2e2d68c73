"""FAB on an SNF (path space, boltzflow.snf.paths) against FAB on the same flow without stochastic blocks.

    python benchmarks/snf_fab_double_well.py --trainings 3 --out runs/bench/snf_fab_dw.json
    python benchmarks/snf_fab_double_well.py --quick --out runs/bench/snf_fab_dw_quick.json

Models, each trained ``--trainings`` times by FAB with the prioritised buffer (alpha = 2, AIS with HMC):
``RNVP (FAB)``, a RealNVP trained in x-space, and ``RNVP+ULA (FAB paths)``, the same RealNVP with a block of
``--ula-steps`` unadjusted Langevin moves after every ``--every`` layers (lambda_t = t / T), trained in path space,
where AIS moves the sample and the backward noises jointly. Scored as in benchmarks/snf_double_well.py (SNF paper,
Table 1 protocol: free energy along x1 over [-2.5, 2.5] from 100k samples, unweighted and reweighted by the path
weights), plus ESS and the log Z error. Mean ± std over trainings, JSON via --out and a markdown table.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import jax
import numpy as np
from snf_double_well import exact_free_energy, score, summarise, table

import boltzflow as bf
from boltzflow.targets.wells import DoubleWell

MODELS = ("RNVP (FAB)", "RNVP+ULA (FAB paths)")


def config(name, seed, args):
    flow = {"type": "realnvp", "n_layers": args.layers, "hidden": args.hidden}
    if "ULA" in name:
        flow = {"type": "snf", "flow": flow, "blocks": {"kernel": "ula", "n_steps": args.ula_steps,
                                                        "step_size": args.ula_step_size, "every": args.every}}
    return bf.load_config({
        "target": "double_well", "flow": flow,
        "method": {"name": "fab", "buffer": True, "n_updates": 4},
        "ais": {"kernel": "hmc", "n_intermediate": args.ais_intermediate, "step_size": 0.05, "n_leapfrog": 3},
        "train": {"steps": args.steps, "batch_size": args.batch, "lr": args.lr, "warmup_steps": 50,
                  "eval_every": args.steps, "seed": seed},
    })


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trainings", type=int, default=3)
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--layers", type=int, default=6)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--every", type=int, default=2)
    p.add_argument("--ula-steps", type=int, default=3)
    p.add_argument("--ula-step-size", type=float, default=0.1)
    p.add_argument("--ais-intermediate", type=int, default=2)
    p.add_argument("--samples", type=int, default=100_000)
    p.add_argument("--chunk", type=int, default=20_000)
    p.add_argument("--bins", type=int, default=50)
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    p.add_argument("--quick", action="store_true", help="1 training, 200 steps, 20k samples")
    p.add_argument("--out", required=True)
    args = p.parse_args()
    if args.quick:
        args.trainings, args.steps, args.samples, args.chunk, args.bins = 1, 200, 20_000, 10_000, 25

    target = DoubleWell()
    edges = np.linspace(-2.5, 2.5, args.bins + 1)
    f_exact = exact_free_energy(edges)
    runs = []
    for name in args.models:
        for seed in range(args.trainings):
            t0 = time.time()
            run = bf.fit(None, config(name, seed, args), progress=False)  # in memory: no run directory
            r = {"model": name, "seed": seed, "train_s": run.summary["time_s"], "wall_s": time.time() - t0,
                 **score(run.model, target, jax.random.key(1000 + seed), args.samples, args.chunk, edges, f_exact)}
            print(f"{name} seed {seed}: ess {r['ess']:.3f} log Z err {r['log_z_error']:+.4f} rew. total "
                  f"{r['reweighted']['total']:.3f} unw. total {r['unweighted']['total']:.3f} "
                  f"({r['train_s']:.0f}s)", flush=True)
            runs.append(r)
    summary = summarise(runs, args.models)
    print(table(summary))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"args": vars(args), "platform": platform.platform(), "device": str(jax.devices()[0]),
                               "date": time.strftime("%Y-%m-%d"), "summary": summary, "runs": runs}, indent=1))


if __name__ == "__main__":
    main()
