"""The samples an MD run had made after a given number of force evaluations, as a training-data file: for comparing a
flow trained by ML on MD with FAB at equal target evaluations (the FAB paper's Table 8 comparison).

    python benchmarks/md_subset.py runs/md-aldp_implicit_300K_seed1 --force-evaluations 2.53e7 \\
        --out runs/md-aldp_implicit_300K_seed1/first_2.53e7.npz

An MD run spends replicas x chains force evaluations per step, equilibration included
(boltzflow.molecules.md.force_evaluations);
its samples (chain-major within each save, every ``save_every`` steps after equilibration) are taken in time order,
so the subset is what the run had produced when it had spent the given number of evaluations.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from boltzflow.molecules.md import force_evaluations
from boltzflow.molecules.reference import load_reference


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run", help="an MD run directory (md.json, samples.npz)")
    p.add_argument("--force-evaluations", type=float, required=True)
    p.add_argument("--out", required=True)
    args = p.parse_args()
    run = Path(args.run)
    s = json.loads((run / "md.json").read_text())["settings"]
    n_chains, n_temps = s["n_chains"], len(s["temperatures"])
    steps = int(args.force_evaluations // (n_chains * n_temps)) - 1 - s["equilibration"]
    saves = max(steps // s["save_every"], 0)
    data = load_reference(str(run / "samples.npz"))
    n = min(saves * n_chains, len(data["x"]))
    np.savez_compressed(args.out, x=np.asarray(data["x"][:n], np.float32))
    spent = force_evaluations(s["equilibration"] + saves * s["save_every"], n_chains, n_temps)
    print(f"{n} samples ({saves} saves of {n_chains} chains; {spent:.3g} force evaluations) -> {args.out}")


if __name__ == "__main__":
    main()
