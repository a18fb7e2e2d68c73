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

draws B references of the reference's size (and of its histogram's effective size, n over the design effect that
the between-chain variance of the Ramachandran bins gives) from the model's reweighted samples (chirality filtered as
in evaluation) and reports their reweighted KLs against the model beside the observed one (the real reference against
the model): an observed KL inside the simulated spread is all a perfect model would show. Also the observed
Ramachandran KL on the model's first n / 16, n / 8, .. n samples (how much of it the model's sample size makes), and
the mean reduced energy U / kT of the reference (standard error from its chains) and of the reweighted model
(self-normalised, with its delta-method standard error): two samplers of the same density agree on it. Several files are joined (e.g.
four ``boltzflow sample`` runs with --seed 0 .. 3).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from boltzflow.estimators import self_normalised_expectation
from boltzflow.molecules.chirality import Chirality
from boltzflow.molecules.metrics import (BINS, angle_density, molecular_metrics, named_torsions, normalised_weights,
                                         ramachandran_pairs, torsion_angles)
from boltzflow.molecules.reference import load_reference
from boltzflow.molecules.system import load_system
from boltzflow.targets.molecule import MoleculeTarget


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("molecule", help="a built-in molecule (aldp_implicit, aldp_vacuum)")
    p.add_argument("reference")
    p.add_argument("other", nargs="?", help="an independent set (omit with --bootstrap)")
    p.add_argument("--sizes", type=int, nargs="+", help="first n samples of the other set (default: all)")
    p.add_argument("--bootstrap", type=int, metavar="B", help="B resamples of the reference against its own draws")
    p.add_argument("--model-samples", type=int, default=1_000_000, help="draws of the 'model' for --bootstrap")
    p.add_argument("--model", metavar="FILE", nargs="+", help="weighted model samples (x, log_w; `boltzflow sample`, "
                   "several files are joined) as the truth for --bootstrap")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    molecule = load_system(args.molecule)
    data = load_reference(args.reference)
    ref = data["x"]
    if args.model:
        model_bootstrap(molecule, args.reference, data, args.model, args.bootstrap or 10, args.seed)
        return
    if args.bootstrap:
        rng = np.random.default_rng(args.seed)
        model = ref[rng.integers(0, len(ref), args.model_samples)]
        chains = chain_indices(data)
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


def chain_indices(data: dict) -> list[np.ndarray]:
    """The sample indices of each of the reference's chains (independent MD runs side by side)."""
    return [np.flatnonzero(data["chain"] == c) for c in np.unique(data["chain"])]


def _mean_std(runs: list[dict]) -> dict:
    return {k: [round(float(np.mean([r[k] for r in runs])), 4), round(float(np.std([r[k] for r in runs], ddof=1)), 4)]
            for k in runs[0]}


def ramachandran_design_effect(molecule, data: dict) -> float:
    """How much more the reference's Ramachandran histogram varies than one of independent samples: the between-chain
    variance of each bin's frequency over its multinomial variance, summed with weights 1 / q as the KL's leading
    (chi-square) term sums them. n / design effect is the histogram's effective size."""
    angles = torsion_angles(data["x"], named_torsions(molecule))
    phi, psi = ramachandran_pairs(molecule)[0]
    chains = chain_indices(data)
    # each chain's bin frequencies (the chains are of equal length, so their mean is the whole reference's)
    freq = np.stack([angle_density(np.stack([angles[phi][i], angles[psi][i]], 1)).ravel()
                     for i in chains]) * (2 * np.pi / BINS) ** 2
    q = freq.mean(0)
    occupied = q > 0
    between = freq.var(0, ddof=1)[occupied] / len(chains)
    multinomial = q[occupied] * (1 - q[occupied]) / len(data["x"])
    return float(np.sum(between / q[occupied]) / np.sum(multinomial / q[occupied]))


def model_bootstrap(molecule, reference_path: str, data: dict, model_paths: list[str], n_boot: int, seed: int):
    """The observed reweighted KLs of the reference against the model (also on the model's first n / 16 .. n
    samples), those of references drawn from the model, and the mean reduced energy of both (module docstring)."""
    x, log_w = [], []
    for path in model_paths:
        with np.load(path) as f:
            x.append(f["x"])
            log_w.append(f["log_w"].astype(np.float64))
    x, log_w = np.concatenate(x), np.concatenate(log_w)
    chiral = np.asarray(Chirality.from_system(molecule).mask(x))
    x, log_w = x[chiral], log_w[chiral]
    w = normalised_weights(log_w, len(x))
    ref = data["x"]
    reweighted = lambda out: {k: round(v, 4) for k, v in out.items() if k.endswith("_reweighted")}
    observed = reweighted(molecular_metrics(molecule, ref, x, log_w))
    by_size = {len(x) // 2 ** k: reweighted(molecular_metrics(molecule, ref, x[:len(x) // 2 ** k],
                                                               log_w[:len(x) // 2 ** k]))["kl_ramachandran_reweighted"]
               for k in range(4, 0, -1)} | {len(x): observed["kl_ramachandran_reweighted"]}
    design = ramachandran_design_effect(molecule, data)
    sizes = {"reference size": len(ref), "histogram effective size": int(len(ref) / design)}
    rng = np.random.default_rng(seed)
    simulated = {name: _mean_std([reweighted(molecular_metrics(molecule, x[rng.choice(len(x), n, p=w)], x, log_w))
                                  for _ in range(n_boot)]) for name, n in sizes.items()}
    # the mean reduced energy u = U / kT: reference (standard error from its independent chains) and model reweighted
    temperature = json.loads(Path(reference_path).with_suffix(".json").read_text())["temperature"]
    energy = jax.jit(MoleculeTarget(molecule.name, temperature=temperature).reduced_energy)
    u = lambda x: np.concatenate([np.asarray(energy(jnp.asarray(x[i:i + 4096]))) for i in range(0, len(x), 4096)])
    u_ref, u_model = u(ref), u(x)
    per_chain = [u_ref[i].mean() for i in chain_indices(data)]
    u_model = self_normalised_expectation(log_w, u_model)  # (mean, standard error)
    print(json.dumps({"model": model_paths, "model_samples": len(x), "model_ess": float(1 / np.sum(w ** 2)),
                      "observed": observed, "observed_ramachandran_by_model_samples": by_size,
                      "design_effect": round(design, 3), "sizes": sizes, "bootstrap": n_boot, **simulated,
                      "reduced_energy_reference": [float(u_ref.mean()), float(np.std(per_chain, ddof=1)
                                                                              / np.sqrt(len(per_chain)))],
                      "reduced_energy_model": [float(v) for v in u_model]}))


if __name__ == "__main__":
    main()
