"""Train a preset over several seeds, evaluate each run, and summarise mean ± standard error.

    python benchmarks/fab_seeds.py gmm40 --seeds 0 1 2 --out runs/bench/gmm40
    python benchmarks/fab_seeds.py gmm40 --method reverse_kl --seeds 0 1 2 --out runs/bench/gmm40_rkl
    python benchmarks/fab_seeds.py gmm40 --method-option buffer=false --seeds 0 1 2 --out runs/bench/gmm40_nobuf
    python benchmarks/fab_seeds.py many_well_32 --seeds 0 1 2 --time-limit 7200 --ais
    python benchmarks/fab_seeds.py aldp_fab_cpu --target-option engine=openmm --steps 30 --samples 2000 --out ...
    python benchmarks/fab_seeds.py snf_aldp_vacuum --method-option data=md1/reference.npz --samples 20000 --out ...
    python benchmarks/fab_seeds.py many_well_32 --target-option rotation=1 --flow-option lu=true --out ...

Per seed it reports the evaluation metrics (boltzflow.evaluate), the wall-clock of training, the steady-state time
per iteration (from metrics.jsonl, excluding the first step, which carries the JIT compilation), and the
wall-clock at which the flow ESS first reached 0.5 (from the periodic flow-IS evaluations). Writes
OUT/summary.json and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time
from pathlib import Path

import jax
import numpy as np
import yaml

import boltzflow as bf
from boltzflow.config import config_from_dict, read_config
from boltzflow.train.loop import read_history

KEYS = ["ess", "ais_ess", "mean_log_q_exact", "forward_kl", "expectation_rel_error_pct", "log_z_error",
        "z_rel_error_pct", "mean_log_q_modes", "min_log_q_modes", "modes_covered",
        # molecules (boltzflow.targets.molecule.MoleculeTarget.metrics): torsion and Ramachandran KLs, raw, reweighted
        "mean_log_q_reference", "chirality_fraction", "kl_ramachandran", "kl_ramachandran_reweighted",
        "phi_positive_reweighted", "phi_positive_reference",
        *(f"kl_{t}{w}" for t in ("phi", "psi", "gamma1", "gamma2", "gamma3") for w in ("", "_reweighted")),
        "flow_evals", "target_evals", "train_time_s", "ms_per_iter", "time_to_ess_0.5_s", "time_to_ess_0.8_s",
        "setup_time_s",  # an auto flow's exploration and frame (auto.json), before the training clock starts
        "mass_missing", "unseen_mass", "log_z_difference_sigma"]  # with --check


def timing(run_dir: Path, levels=(0.5, 0.8)) -> dict:
    """Time per iteration after the first (which includes compilation), wall-clock to the first flow ESS >= each of
    ``levels`` (None if never), training time and the cost counters, from metrics.jsonl; for an auto flow the time
    its choice took (exploration and frame, auto.json), which the training clock does not include."""
    rows = read_history(Path(run_dir))
    first, last = rows[0], rows[-1]
    ms = 1e3 * (last["time_s"] - first["time_s"]) / max(last["step"] - first["step"], 1)
    hits = {f"time_to_ess_{level:g}_s": next((r["time_s"] for r in rows if r.get("flow_ess", 0.0) >= level), None)
            for level in levels}
    # the cost of training (cumulative counts, boltzflow.train.loop), for comparisons at equal cost
    cost = {k: last[k] for k in ("flow_evals", "target_evals") if k in last}
    auto = run_dir / "auto.json"
    setup = {"setup_time_s": json.loads(auto.read_text()).get("time_s")} if auto.exists() else {}
    return {"ms_per_iter": ms, **hits, "train_time_s": last["time_s"], **cost, **setup}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("preset")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--method", help="replace the preset's method name (e.g. reverse_kl, forward_kl, alpha2_is)")
    p.add_argument("--method-option", action="append", default=[], metavar="KEY=VALUE",
                   help="set one method option (YAML value), e.g. buffer=false; repeatable")
    p.add_argument("--flow-option", action="append", default=[], metavar="KEY=VALUE",
                   help="set one flow option (YAML value), e.g. lu=true; repeatable")
    p.add_argument("--target-option", action="append", default=[], metavar="KEY=VALUE",
                   help="set one target option (YAML value), e.g. engine=openmm; repeatable")
    p.add_argument("--name", help="the runs' config name (default: the preset's, with the method if replaced)")
    p.add_argument("--steps", type=int)
    p.add_argument("--time-limit", type=float)
    p.add_argument("--eval-every", type=int)
    p.add_argument("--samples", type=int, default=100_000)
    p.add_argument("--check", action="store_true", help="also run the missing-mass check (boltzflow.explore)")
    p.add_argument("--ais", action="store_true", help="also evaluate AIS targeting p")
    p.add_argument("--out", required=True)
    args = p.parse_args()

    raw, source = read_config(args.preset)
    if args.method:
        raw |= {"method": {"name": args.method}, "name": f"{raw['name']}_{args.method}"}
    for section, options in (("method", args.method_option), ("flow", args.flow_option)):
        opts = {k: yaml.safe_load(v) for k, v in (o.split("=", 1) for o in options)}
        if opts:
            raw[section] = {**raw.get(section, {}), **opts}
    if args.target_option:
        opts = {k: yaml.safe_load(v) for k, v in (o.split("=", 1) for o in args.target_option)}
        target = raw["target"] if isinstance(raw["target"], dict) else {"name": raw["target"]}
        raw["target"] = {**target, **opts}
    if args.name:
        raw["name"] = args.name
    base = config_from_dict(raw, source)
    out = Path(args.out)
    results = []
    for seed in args.seeds:
        cfg = base.with_train(seed=seed, **{k: v for k, v in (("steps", args.steps), ("time_limit_s", args.time_limit),
                                                                ("eval_every", args.eval_every)) if v is not None})
        run = out / f"seed{seed}"
        t0 = time.perf_counter()
        ev = bf.fit(None, cfg, out=run, progress=False).evaluate(jax.random.key(1000 + seed), n=args.samples,
                                                                 ais=args.ais, check=args.check)
        res = {"seed": seed, **ev, **timing(run), "wall_s": time.perf_counter() - t0}
        (run / "eval.json").write_text(json.dumps(res, indent=1))
        results.append(res)
        print(json.dumps({k: res.get(k) for k in ["seed"] + KEYS}), flush=True)

    summary = {}
    for k in KEYS:
        vals = [r[k] for r in results if isinstance(r.get(k), (int, float)) and math.isfinite(r[k])]
        if vals:
            std = float(np.std(vals, ddof=1)) if len(vals) > 1 else float("nan")
            summary[k] = {"mean": float(np.mean(vals)), "std": std, "stderr": std / math.sqrt(len(vals)),
                          "n": len(vals)}
    meta = {"preset": args.preset, "method": base.method.name, "seeds": args.seeds,
            "machine": f"{platform.machine()}, {jax.device_count()} {jax.default_backend()} device(s), "
                       f"{__import__('os').cpu_count()} CPU cores", "date": time.strftime("%Y-%m-%d"),
            "jax": jax.__version__}
    (out / "summary.json").write_text(json.dumps({"meta": meta, "summary": summary, "runs": results}, indent=1))
    print(f"\n{args.preset} / {meta['method']} over seeds {args.seeds}\n\n| metric | mean ± s.e. | std |\n|---|---|---|")
    for k, v in summary.items():
        print(f"| {k} | {v['mean']:.4g} ± {v['stderr']:.2g} | {v['std']:.2g} |")


if __name__ == "__main__":
    main()
