"""The JAX engine on every force field / implicit solvent openmm.app builds for alanine dipeptide (issue 36, part 1):
max error against OpenMM's Reference platform, float64 and float32, energies and forces.

    python benchmarks/forcefield_coverage.py --n 200 --out runs/bench/forcefield_coverage.json

Conformations: the energy minimum plus 0.01-0.03 nm Gaussian noise per coordinate (energies up to ~1e4 kJ/mol).
float32 errors are relative: energy to max(|E|, 1), forces to the conformation's largest force component.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import openmm
import openmm.app as app

from boltzflow.molecules.forcefield import batched_energy, read_forcefield
from boltzflow.molecules.system import as_one_residue, openmmtools_data_dir

ALDP = os.path.join(openmmtools_data_dir(), "alanine-dipeptide-gbsa", "alanine-dipeptide")
SYSTEMS = {
    **{f"amber14 + {m}": ("xml", ("amber14-all.xml", f"implicit/{m}.xml"), {})
       for m in ("hct", "obc1", "obc2", "gbn", "gbn2")},
    "amber14 + gbn2, kappa 1.27/nm": ("xml", ("amber14-all.xml", "implicit/gbn2.xml"), {"implicitSolventKappa": 1.27}),
    "ff96 prmtop + GBn2": ("prmtop", app.GBn2, {}),
    "ff96 prmtop + HCT": ("prmtop", app.HCT, {}),
    "amber19-all (ff19SB, CMAP)": ("xml", ("amber19-all.xml",), {}),
    "charmm36 (ALAD)": ("xml", ("charmm36.xml",), {}),
    "charmm36_2024 (ALAD)": ("xml", ("charmm36_2024.xml",), {}),
}


def build(kind, what, kwargs):
    if kind == "prmtop":
        prmtop = app.AmberPrmtopFile(ALDP + ".prmtop")
        system = prmtop.createSystem(implicitSolvent=what, constraints=None, nonbondedMethod=app.NoCutoff)
        return system, app.AmberInpcrdFile(ALDP + ".crd").positions
    pdb = app.PDBFile(ALDP + ".pdb")
    top = pdb.topology
    if what[0].startswith("charmm"):  # CHARMM's whole-molecule template; three residues take ~30 s to match
        top = as_one_residue(top, "ALAD")
        kwargs = {**kwargs, "residueTemplates": {next(top.residues()): "ALAD"}}
    system = app.ForceField(*what).createSystem(top, nonbondedMethod=app.NoCutoff, constraints=None, **kwargs)
    return system, pdb.positions


def compare(system, positions, n, seed=0):
    ctx = openmm.Context(system, openmm.VerletIntegrator(1e-3), openmm.Platform.getPlatformByName("Reference"))
    ctx.setPositions(positions)
    openmm.LocalEnergyMinimizer.minimize(ctx, 1.0, 500)
    x0 = ctx.getState(getPositions=True).getPositions(asNumpy=True).value_in_unit(openmm.unit.nanometer)
    rng = np.random.default_rng(seed)
    x = x0 + rng.uniform(0.01, 0.03, (n, 1, 1)) * rng.standard_normal((n,) + x0.shape)
    e_ref, f_ref = [], []
    t0 = time.perf_counter()
    for xi in x:
        ctx.setPositions(xi)
        s = ctx.getState(getEnergy=True, getForces=True)
        e_ref.append(s.getPotentialEnergy().value_in_unit(openmm.unit.kilojoule_per_mole))
        f_ref.append(s.getForces(asNumpy=True).value_in_unit(openmm.unit.kilojoule_per_mole / openmm.unit.nanometer))
    t_ref = (time.perf_counter() - t0) / n
    e_ref, f_ref = np.asarray(e_ref), np.asarray(f_ref).reshape(n, -1)
    params = read_forcefield(system)

    def total(y):
        e = batched_energy(params)(y)
        return jnp.sum(e), e

    both = jax.jit(jax.value_and_grad(total, has_aux=True))
    flat = x.reshape(n, -1)
    with jax.enable_x64(True):
        (_, e64), g64 = both(jnp.asarray(flat, jnp.float64))
    (_, e32), g32 = both(jnp.asarray(flat, jnp.float32))
    e64, g64, e32, g32 = (np.asarray(a, np.float64) for a in (e64, g64, e32, g32))
    return {"forces": sorted({type(f).__name__ for f in system.getForces()} - {"CMMotionRemover"}),
            "energy_range": [float(e_ref.min()), float(e_ref.max())],
            "f64_energy": float(np.abs(e64 - e_ref).max()), "f64_force": float(np.abs(-g64 - f_ref).max()),
            "f32_energy_rel": float(np.max(np.abs(e32 - e_ref) / np.maximum(np.abs(e_ref), 1))),
            "f32_force_rel": float(np.max(np.abs(-g32 - f_ref).max(axis=1) / np.abs(f_ref).max(axis=1))),
            "openmm_reference_s": t_ref}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    rows = {}
    print("| system | forces | float64 max abs error E (kJ/mol) / F (kJ/mol/nm) | float32 max rel error E / F |")
    print("|---|---|---|---|")
    for name, spec in SYSTEMS.items():
        r = compare(*build(*spec), n=args.n)
        rows[name] = r
        custom = ", ".join(f for f in r["forces"] if f.startswith(("Custom", "CMAP", "GBSA")))
        print(f"| {name} | {custom} | {r['f64_energy']:.1e} / {r['f64_force']:.1e} | "
              f"{r['f32_energy_rel']:.1e} / {r['f32_force_rel']:.1e} |", flush=True)
    if args.out:
        os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
        with open(args.out, "w") as f:
            json.dump({"n": args.n, "date": time.strftime("%Y-%m-%d %H:%M"), "systems": rows}, f, indent=1)


if __name__ == "__main__":
    main()
