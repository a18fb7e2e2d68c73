"""Reference samples of a molecule from replica-exchange MD: the file the tests and the evaluation read.

:func:`write_reference` turns an MD run's ``samples.npz`` (from :func:`boltzflow.molecules.md.run_replica_exchange`)
into ``reference.npz``: Cartesian positions (float32, nm), their internal coordinates (``internal``, (n, 3N - 6):
bonds in nm, angles and dihedrals in rad, of the Z-matrix :meth:`ZMatrix.from_system` builds; their names in
``internal_names``), energies, the named torsions (phi, psi, omega, methyl
rotations; :func:`boltzflow.molecules.metrics.named_torsions`), chain and time of each sample, and a summary with
the Ramachandran basin populations and their standard errors by block averaging over time.

Block averaging: the MD saves all C chains at once, so the population estimate is the mean over saves t of
y_t = (1/C) sum_c 1[sample (t, c) in the basin]; the saves form a time series whose correlation the blocks
absorb (:func:`boltzflow.molecules.metrics.block_standard_error`, 20 blocks).
"""

from __future__ import annotations

import json
import os

import numpy as np

from boltzflow.errors import BoltzflowError
from boltzflow.molecules.metrics import (basin_populations, block_standard_error, named_torsions, ramachandran_pairs,
                                         torsion_angles)
from boltzflow.molecules.system import MolecularSystem
from boltzflow.molecules.zmatrix import ZMatrix

REFERENCE = "reference.npz"
SUMMARY = "reference.json"
#: Reference sets shipped with boltzflow: ``data/{molecule}_{temperature:g}K.npz`` (+ ``.json`` summary).
DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")


def builtin_reference(molecule: str, temperature: float) -> str | None:
    """Path of the shipped reference set of a built-in molecule at a temperature, or None if there is none."""
    path = os.path.join(DATA, f"{molecule}_{float(temperature):g}K.npz")
    return path if os.path.isfile(path) else None


def load_reference(path: str) -> dict:
    """A reference file as a dict of arrays (``x`` (n, 3N) float32, ``energy``, ``torsion_<name>``, ...)."""
    if not os.path.isfile(path):
        raise BoltzflowError(f"no reference samples at {path!r} (make them with `boltzflow md`)")
    with np.load(path) as f:
        return {k: f[k] for k in f.files}


def write_compact(reference_path: str, out_path: str) -> int:
    """The shipped form of a reference set: ``x`` (float32 nm), ``energy`` (float32 kJ/mol), ``chain`` and
    ``time_ps`` only (torsions and internal coordinates are recomputed from x where needed); returns its bytes."""
    data = load_reference(reference_path)
    np.savez_compressed(out_path, x=data["x"].astype(np.float32), energy=data["energy"].astype(np.float32),
                        chain=data["chain"].astype(np.int16), time_ps=data["time_ps"].astype(np.float32))
    return os.path.getsize(out_path)


def write_reference(out: str, molecule: MolecularSystem, samples_path: str | None = None,
                    n_blocks: int = 20) -> dict:
    """Write ``out/reference.npz`` and ``out/reference.json`` from ``samples.npz`` (module docstring)."""
    data = load_reference(samples_path or os.path.join(out, "samples.npz"))
    x, chain = data["x"], data["chain"]
    if x.ndim != 2 or x.shape[1] != molecule.dim:
        raise BoltzflowError(f"samples have shape {x.shape}, the molecule needs (n, {molecule.dim})")
    torsions = named_torsions(molecule)
    angles = torsion_angles(x, torsions)
    n_chains = int(chain.max()) + 1 if chain.size else 0
    summary = {"molecule": molecule.name, "temperature": float(data.get("temperature", np.nan)),
               "samples": int(x.shape[0]), "chains": n_chains, "torsions": {k: list(map(int, v)) for k, v in
                                                                             torsions.items()}}
    pairs = ramachandran_pairs(molecule)
    if len(pairs) == 1 and n_chains and x.shape[0] % n_chains == 0:
        phi, psi = angles[pairs[0][0]], angles[pairs[0][1]]
        saves = x.shape[0] // n_chains
        for basin in ("phi_negative", "phi_positive", "alpha_R", "beta"):
            # the fraction in the basin at each save (over chains), a time series for the block standard error
            series = np.array([basin_populations(phi[t * n_chains:(t + 1) * n_chains],
                                                 psi[t * n_chains:(t + 1) * n_chains])[basin] for t in range(saves)])
            p, se = float(series.mean()), block_standard_error(series, n_blocks)
            summary[f"population_{basin}"] = p
            summary[f"population_{basin}_se"] = se
            # samples worth as many independent ones: p (1 - p) / se^2
            summary[f"effective_samples_{basin}"] = p * (1 - p) / se**2 if se > 0 else None
    zm = ZMatrix.from_system(molecule)
    internal = np.asarray(zm.join(*zm.cartesian_to_internal(np.asarray(x, np.float64))), np.float32)
    arrays = {"x": x.astype(np.float32), "internal": internal, "internal_names": np.asarray(zm.names),
              "energy": data["energy"], "chain": chain, "time_ps": data["time_ps"],
              **{f"torsion_{k}": v.astype(np.float32) for k, v in angles.items()}}
    np.savez_compressed(os.path.join(out, REFERENCE), **arrays)
    with open(os.path.join(out, SUMMARY), "w") as f:
        json.dump(summary, f, indent=1)
    return summary
