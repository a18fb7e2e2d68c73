"""The torsion and Ramachandran KLs between two independent MD sets of the same molecule: the value a perfect model
would get with that many samples, i.e. the floor of the metrics ``boltzflow evaluate`` reports.

    python benchmarks/md_kl_floor.py aldp_implicit boltzflow/molecules/data/aldp_implicit_300K.npz \\
        runs/md-aldp_implicit_300K_seed1/reference.npz --sizes 4720 19936

The second set plays the model (uniform weights), the first the reference, exactly as in evaluation
(boltzflow.molecules.metrics.molecular_metrics: 100 bins per angle, FAB's 1e-10 floor for empty bins).
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from boltzflow.molecules.metrics import molecular_metrics
from boltzflow.molecules.reference import load_reference
from boltzflow.molecules.system import load_system


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("molecule", help="a built-in molecule (aldp_implicit, aldp_vacuum)")
    p.add_argument("reference")
    p.add_argument("other")
    p.add_argument("--sizes", type=int, nargs="+", help="first n samples of the other set (default: all)")
    args = p.parse_args()
    molecule = load_system(args.molecule)
    ref, other = load_reference(args.reference)["x"], load_reference(args.other)["x"]
    for n in args.sizes or [len(other)]:
        out = molecular_metrics(molecule, ref, other[:n], np.zeros(min(n, len(other))))
        print(json.dumps({"reference": len(ref), "other": min(n, len(other)),
                          **{k: round(v, 4) for k, v in out.items() if not k.endswith("_reweighted")}}))


if __name__ == "__main__":
    main()
