"""Pictures comparing trained molecular runs with the reference MD: the FAB paper's Figures 3 and 4 and the SNF
paper's Figure 5.

    python benchmarks/aldp_figures.py --run "ML on MD=runs/aldp_ml_cpu-seed0" --run FAB=runs/aldp_fab_cpu-seed0 \\
        --reweight FAB --out docs/figures/aldp_implicit
    python benchmarks/aldp_figures.py --run RNVP=runs/bench/snf_vac_rnvp/seed0 --run SNF=runs/bench/snf_vac/seed0 \\
        --torsions phi psi gamma1 gamma2 gamma3 --out docs/figures/aldp_vacuum

Writes OUT/ramachandran.png (reference | each run | each --reweight run reweighted; log-density colours) and
OUT/torsions.png (the marginal of each named torsion in log scale: reference against every run). Samples come
from each run's model with their path weights (``Run.sample``, as ``boltzflow sample``);
mirror images (wrong chirality) are dropped, as in evaluation. The reference is the first run's target's.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import jax
import numpy as np

import boltzflow as bf
from boltzflow.molecules.metrics import named_torsions, ramachandran_pairs, torsion_angles
from boltzflow.molecules.reference import load_reference
from boltzflow.plot import plot_ramachandran, plot_torsion_marginals


def run_torsions(run_dir: str, n: int, seed: int):
    """(target, torsion angles of n model samples of the right chirality, their log weights)."""
    run = bf.load(run_dir)
    x, log_w = run.sample(jax.random.key(seed), n)
    keep = np.asarray(run.target.chirality.mask(x))
    return run.target, torsion_angles(x[keep], named_torsions(run.target.molecule)), log_w[keep]


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", action="append", required=True, metavar="LABEL=DIR", help="a trained run; repeatable")
    p.add_argument("--reweight", action="append", default=[], metavar="LABEL",
                   help="also show this run's samples reweighted to the target")
    p.add_argument("--torsions", nargs="+", help="torsions in torsions.png (default: every named torsion)")
    p.add_argument("--samples", type=int, default=20_000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True)
    args = p.parse_args()

    runs = dict(r.split("=", 1) for r in args.run)
    models = {label: run_torsions(d, args.samples, args.seed) for label, d in runs.items()}
    target = next(iter(models.values()))[0]
    torsions = named_torsions(target.molecule)
    ref = torsion_angles(load_reference(target.reference_path)["x"], torsions)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    phi, psi = ramachandran_pairs(target.molecule)[0]
    panels = [("reference (MD)", ref[phi], ref[psi], None)]
    for label, (_, ang, log_w) in models.items():
        panels.append((label, ang[phi], ang[psi], None))
        if label in args.reweight:
            panels.append((f"{label}, reweighted", ang[phi], ang[psi], log_w))
    print("wrote", plot_ramachandran(panels, out / "ramachandran.png"))
    names = args.torsions or list(torsions)
    named = {t: [("reference (MD)", ref[t], None)] + [(label, ang[t], None) for label, (_, ang, _) in models.items()]
             + [(f"{label}, reweighted", models[label][1][t], models[label][2]) for label in args.reweight]
             for t in names}
    print("wrote", plot_torsion_marginals(named, out / "torsions.png"))


if __name__ == "__main__":
    main()
