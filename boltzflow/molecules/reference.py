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
                                         residue_suffix, torsion_angles)
from boltzflow.molecules.system import DATA, MolecularSystem
from boltzflow.molecules.zmatrix import ZMatrix

REFERENCE = "reference.npz"
SUMMARY = "reference.json"


def builtin_reference(molecule: str, temperature: float) -> str | None:
    """Path of the shipped reference set of a built-in molecule at a temperature, or None if there is none."""
    path = os.path.join(DATA, f"{molecule}_{float(temperature):g}K.npz")
    return path if os.path.isfile(path) else None


#: Resolution (nm) of the shipped form's int16 positions, relative to each conformation's centroid: |error| <= 1.5e-5
#: nm per coordinate (bond energies change by < 1e-4 kJ/mol; normalised bond coordinates by < 0.006), and
#: conformations up to 0.98 nm from their centroid fit.
QUANTUM = 3e-5


def load_reference(path: str) -> dict:
    """A reference file as a dict of arrays (``x`` (n, 3N) float32 nm, ``energy``, ``torsion_<name>``, ...); the
    shipped compact form (int16 positions, :func:`write_compact`) is expanded to float32 ``x``."""
    if not os.path.isfile(path):
        raise BoltzflowError(f"no reference samples at {path!r} (make them with `boltzflow md`)")
    with np.load(path) as f:
        data = {k: f[k] for k in f.files}
    if "x_int16" in data:
        q, centroid = data.pop("x_int16"), data.pop("centroid")
        x = q.astype(np.float32).reshape(q.shape[0], -1, 3) * np.float32(data.pop("quantum")) + centroid[:, None, :]
        data["x"] = x.reshape(q.shape[0], -1).astype(np.float32)
    return data


def write_compact(reference_path: str, out_path: str) -> int:
    """The shipped form of a reference set (returns its bytes): positions as int16 multiples of :data:`QUANTUM`
    around each conformation's centroid (float32), ``energy`` (float32 kJ/mol, of the unrounded positions), ``chain``
    and ``time_ps``; torsions and internal coordinates are recomputed from x where needed."""
    data = load_reference(reference_path)
    x = data["x"].astype(np.float64).reshape(data["x"].shape[0], -1, 3)
    centroid = x.mean(axis=1)
    q = np.round((x - centroid[:, None, :]) / QUANTUM)
    if np.abs(q).max() > np.iinfo(np.int16).max:
        raise BoltzflowError(f"a conformation reaches {np.abs(q).max() * QUANTUM:.2f} nm from its centroid; the "
                             f"compact form holds up to {np.iinfo(np.int16).max * QUANTUM:.2f} nm")
    np.savez_compressed(out_path, x_int16=q.astype(np.int16).reshape(q.shape[0], -1),
                        centroid=centroid.astype(np.float32), quantum=QUANTUM,
                        energy=data["energy"].astype(np.float32), chain=data["chain"].astype(np.int16),
                        time_ps=data["time_ps"].astype(np.float32))
    return os.path.getsize(out_path)


def combine_runs(run_dirs: list[str], thin: int = 1) -> dict:
    """The samples of MD runs made with the same settings (e.g. other seeds) as one set: at each save the chains of
    every run side by side (chain numbers offset per run), every ``thin``-th save kept."""
    runs = [load_reference(os.path.join(d, "samples.npz")) for d in run_dirs]
    if not runs:
        raise BoltzflowError("combine_runs needs at least one MD run directory")
    shaped = []
    for d, r in zip(run_dirs, runs):
        c = int(r["chain"].max()) + 1
        if r["x"].shape[0] % c:
            raise BoltzflowError(f"{d}: {r['x'].shape[0]} samples are not whole saves of {c} chains")
        shaped.append({k: r[k].reshape(-1, c, *r[k].shape[1:]) for k in ("x", "energy", "chain", "time_ps")})
    saves = {s["x"].shape[0] for s in shaped}
    temps = {float(r.get("temperature", np.nan)) for r in runs}
    if len(saves) != 1 or len(temps) != 1:
        raise BoltzflowError(f"runs to combine need the same number of saves and temperature, got {sorted(saves)} "
                             f"saves and {sorted(temps)} K")
    offsets = np.cumsum([0] + [s["x"].shape[1] for s in shaped[:-1]])
    merged = {k: np.concatenate([s[k] + (off if k == "chain" else 0) for s, off in zip(shaped, offsets)], axis=1)
              for k in ("x", "energy", "chain", "time_ps")}
    if thin < 1:
        raise BoltzflowError(f"thin must be >= 1, got {thin}")
    return {**{k: v[::thin].reshape(-1, *v.shape[2:]) for k, v in merged.items()}, "temperature": temps.pop()}


def write_reference(out: str, molecule: MolecularSystem, run_dirs: list[str] | None = None, thin: int = 1,
                    n_blocks: int = 20) -> dict:
    """Write ``out/reference.npz`` and ``out/reference.json`` from the MD runs ``run_dirs`` (default: ``out``
    itself), combined and thinned by :func:`combine_runs` (module docstring)."""
    data = combine_runs(run_dirs or [out], thin)
    os.makedirs(out, exist_ok=True)
    x, chain = data["x"], data["chain"]
    if x.ndim != 2 or x.shape[1] != molecule.dim:
        raise BoltzflowError(f"samples have shape {x.shape}, the molecule needs (n, {molecule.dim})")
    torsions = named_torsions(molecule)
    angles = torsion_angles(x, torsions)
    n_chains = int(chain.max()) + 1 if chain.size else 0
    summary = {"molecule": molecule.name, "temperature": float(data["temperature"]), "runs": list(run_dirs or [out]),
               "thin": int(thin), "samples": int(x.shape[0]), "chains": n_chains,
               "torsions": {k: list(map(int, v)) for k, v in torsions.items()}}
    for phi_name, psi_name in ramachandran_pairs(molecule) if n_chains and x.shape[0] % n_chains == 0 else []:
        phi, psi, residue = angles[phi_name], angles[psi_name], residue_suffix(phi_name)
        saves = x.shape[0] // n_chains
        for basin in ("phi_negative", "phi_positive", "alpha_R", "beta"):
            # the fraction in the basin at each save (over chains), a time series for the block standard error
            series = np.array([basin_populations(phi[t * n_chains:(t + 1) * n_chains],
                                                 psi[t * n_chains:(t + 1) * n_chains])[basin] for t in range(saves)])
            p, se = float(series.mean()), block_standard_error(series, n_blocks)
            summary[f"population_{basin}{residue}"] = p
            summary[f"population_{basin}{residue}_se"] = se
            # samples worth as many independent ones: p (1 - p) / se^2
            summary[f"effective_samples_{basin}{residue}"] = p * (1 - p) / se**2 if se > 0 else None
    zm = ZMatrix.from_system(molecule)
    internal = np.asarray(zm.join(*zm.cartesian_to_internal(np.asarray(x, np.float64))), np.float32)
    arrays = {"x": x.astype(np.float32), "internal": internal, "internal_names": np.asarray(zm.names),
              "energy": data["energy"], "chain": chain, "time_ps": data["time_ps"],
              **{f"torsion_{k}": v.astype(np.float32) for k, v in angles.items()}}
    np.savez_compressed(os.path.join(out, REFERENCE), **arrays)
    with open(os.path.join(out, SUMMARY), "w") as f:
        json.dump(summary, f, indent=1)
    return summary
