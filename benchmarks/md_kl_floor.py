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
resample of it, B times; the KLs' mean and standard deviation over the B resamples. The resample draws whole chains
with replacement (a cluster bootstrap: the reference's chains are independent MD runs, the samples within one are
correlated in time), so its spread is that of a new reference of the same size; resampling single samples would
treat correlated samples as independent. Its mean is still a lower bound of the real floor: the plug-in truth
puts at least 1/n of the mass in every bin the reference reaches, where the real density often has far less (a
reference sample alone in a tail bin costs log(1 / (n q)) nats / n against a perfect model q, nothing here).

Whether a weighted model is consistent with the reference at the reference's resolution (a parametric bootstrap,
the model as the truth):

    boltzflow sample runs/aldp_fab_cpu-seed0 --n 1000000 --out fab.npz
    python benchmarks/md_kl_floor.py aldp_implicit boltzflow/molecules/data/aldp_implicit_300K.npz --model fab.npz \
        --bootstrap 10

draws B references of the reference's size (and of its effective size, the smallest of the shipped
``effective_samples_*``, for the correlation within chains) from the model's reweighted samples (chirality filtered
as in evaluation) and reports their reweighted KLs against the model beside the observed one (the real reference
against the model). An observed KL inside the simulated spread is all a perfect model would show.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from boltzflow.molecules.chirality import Chirality
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
    p.add_argument("--model", metavar="FILE", help="weighted model samples (x, log_w; `boltzflow sample`) as the "
                   "truth for --bootstrap")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    molecule = load_system(args.molecule)
    data = load_reference(args.reference)
    ref = data["x"]
    if args.model:
        model_bootstrap(molecule, args.reference, ref, args.model, args.bootstrap or 10, args.seed)
        return
    if args.bootstrap:
        rng = np.random.default_rng(args.seed)
        model = ref[rng.integers(0, len(ref), args.model_samples)]
        chains = [np.flatnonzero(data["chain"] == c) for c in np.unique(data["chain"])]
        resample = lambda: np.concatenate([chains[i] for i in rng.integers(0, len(chains), len(chains))])
        runs = [molecular_metrics(molecule, ref[resample()], model) for _ in range(args.bootstrap)]
        print(json.dumps({"reference": len(ref), "chains": len(chains), "model_samples": args.model_samples,
                          "bootstrap": args.bootstrap, **_mean_std(runs)}))
        return
    other = load_reference(args.other)["x"]
    for n in args.sizes or [len(other)]:
        out = molecular_metrics(molecule, ref, other[:n], np.zeros(min(n, len(other))))
        print(json.dumps({"reference": len(ref), "other": min(n, len(other)),
                          **{k: round(v, 4) for k, v in out.items() if not k.endswith("_reweighted")}}))


def _mean_std(runs: list[dict]) -> dict:
    return {k: [round(float(np.mean([r[k] for r in runs])), 4), round(float(np.std([r[k] for r in runs], ddof=1)), 4)]
            for k in runs[0]}


def model_bootstrap(molecule, reference_path: str, ref, model_path: str, n_boot: int, seed: int):
    """The observed reweighted KLs of the reference against the model, and those of references drawn from the
    model (module docstring)."""
    with np.load(model_path) as f:
        x, log_w = f["x"], f["log_w"].astype(np.float64)
    chiral = np.asarray(Chirality.from_system(molecule).mask(x))
    x, log_w = x[chiral], log_w[chiral]
    w = np.exp(log_w - log_w.max())
    w /= w.sum()
    reweighted = lambda out: {k: v for k, v in out.items() if k.endswith("_reweighted")}
    observed = reweighted(molecular_metrics(molecule, ref, x, log_w))
    info = Path(reference_path).with_suffix(".json")
    sizes = {"reference size": len(ref)}
    if info.exists():
        n_eff = min(v for k, v in json.loads(info.read_text()).items() if k.startswith("effective_samples_"))
        sizes["effective size"] = int(n_eff)
    rng = np.random.default_rng(seed)
    simulated = {name: _mean_std([reweighted(molecular_metrics(molecule, x[rng.choice(len(x), n, p=w)], x, log_w))
                                  for _ in range(n_boot)]) for name, n in sizes.items()}
    print(json.dumps({"model": model_path, "model_samples": len(x), "model_ess": float(1 / np.sum(w ** 2)),
                      "bootstrap": n_boot, "sizes": sizes,
                      "observed": {k: round(v, 4) for k, v in observed.items()}, **simulated}))


if __name__ == "__main__":
    main()
