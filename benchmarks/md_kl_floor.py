"""The torsion and Ramachandran KLs between two independent MD sets of the same molecule: the value a perfect model
would get with that many samples, i.e. the floor of the metrics ``boltzflow evaluate`` reports.

    python benchmarks/md_kl_floor.py aldp_implicit boltzflow/molecules/data/aldp_implicit_300K.npz \\
        runs/md-aldp_implicit_300K_seed1/reference.npz --sizes 4720 19936

The second set plays the model (uniform weights), the first the reference, exactly as in evaluation
(boltzflow.molecules.metrics.molecular_metrics: 100 bins per angle, FAB's 1e-10 floor for empty bins).

The floor a perfect model with many samples meets, set by the reference's own size:

    python benchmarks/md_kl_floor.py aldp_implicit boltzflow/molecules/data/aldp_implicit_300K.npz --bootstrap 5 \
        --model-samples 1000000

takes the reference's empirical distribution as the truth: the "model" is 10^6 draws from it, the reference a
resample (with replacement, same size) of it, B times; the KLs' mean and standard deviation over the B resamples.
Resampling single samples ignores their correlation in time, so this floor is a lower bound of the real one.
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
    p.add_argument("other", nargs="?", help="an independent set (omit with --bootstrap)")
    p.add_argument("--sizes", type=int, nargs="+", help="first n samples of the other set (default: all)")
    p.add_argument("--bootstrap", type=int, metavar="B", help="B resamples of the reference against its own draws")
    p.add_argument("--model-samples", type=int, default=1_000_000, help="draws of the 'model' for --bootstrap")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    molecule = load_system(args.molecule)
    ref = load_reference(args.reference)["x"]
    if args.bootstrap:
        rng = np.random.default_rng(args.seed)
        model = ref[rng.integers(0, len(ref), args.model_samples)]
        runs = [molecular_metrics(molecule, ref[rng.integers(0, len(ref), len(ref))], model,
                                  np.zeros(len(model))) for _ in range(args.bootstrap)]
        keys = [k for k in runs[0] if k.startswith("kl_") and not k.endswith("_reweighted")]
        print(json.dumps({"reference": len(ref), "model_samples": args.model_samples, "bootstrap": args.bootstrap,
                          **{k: [round(float(np.mean([r[k] for r in runs])), 4),
                                 round(float(np.std([r[k] for r in runs], ddof=1)), 4)] for k in keys}}))
        return
    other = load_reference(args.other)["x"]
    for n in args.sizes or [len(other)]:
        out = molecular_metrics(molecule, ref, other[:n], np.zeros(min(n, len(other))))
        print(json.dumps({"reference": len(ref), "other": min(n, len(other)),
                          **{k: round(v, 4) for k, v in out.items() if not k.endswith("_reweighted")}}))


if __name__ == "__main__":
    main()
