"""The JAX engine on every force OpenMM's app layer builds for small molecules and peptides, against OpenMM's Reference
platform: each generalized Born model (HCT, OBC1, OBC2, GBn, GBn2; with salt; from XML and from a prmtop), CHARMM36
(CustomNonbondedForce with tables, CustomBondForce, CMAP), Amber ff19SB (CMAP), and synthetic Custom*Forces."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

openmm = pytest.importorskip("openmm", reason="OpenMM is not installed (pip install 'boltzflow[molecules]')")
import openmm.app as app  # noqa: E402

from conftest import openmm_reference  # noqa: E402

from boltzflow.errors import BoltzflowError  # noqa: E402
from boltzflow.molecules.forcefield import batched_energy, energy_terms, read_forcefield  # noqa: E402
from boltzflow.molecules.system import as_one_residue, openmmtools_data_dir  # noqa: E402

ALDP = os.path.join(openmmtools_data_dir(), "alanine-dipeptide-gbsa", "alanine-dipeptide")


def _reference(system, x):
    e, f = openmm_reference(system, x)
    return e, f.reshape(len(x), -1)


def _conformations(system, positions, n=24, seed=0):
    """The energy minimum and n - 1 perturbations of it (0.01-0.03 nm per coordinate)."""
    context = openmm.Context(system, openmm.VerletIntegrator(1e-3), openmm.Platform.getPlatformByName("Reference"))
    context.setPositions(positions)
    openmm.LocalEnergyMinimizer.minimize(context, 1.0, 500)
    x0 = context.getState(getPositions=True).getPositions(asNumpy=True).value_in_unit(openmm.unit.nanometer)
    rng = np.random.default_rng(seed)
    scale = rng.uniform(0.01, 0.03, (n - 1, 1, 1))
    return np.concatenate([x0[None], x0 + scale * rng.standard_normal((n - 1,) + x0.shape)])


def _assert_matches_openmm(system, x):
    """float64 within 1e-6 kJ/mol and 1e-5 kJ/mol/nm; float32 within 1e-5 of |E| and of the largest force (not at
    the minimum x[0], where forces of ~1 kJ/mol/nm are sums of terms of ~1e4, so float32 is good to ~0.03)."""
    e_ref, f_ref = _reference(system, x)
    params = read_forcefield(system)
    flat = x.reshape(len(x), -1)

    def total(y):
        e = batched_energy(params)(y)
        return jnp.sum(e), e

    both = jax.value_and_grad(total, has_aux=True)
    with jax.enable_x64(True):
        (_, e64), g64 = jax.jit(both)(jnp.asarray(flat, jnp.float64))
        e64, g64 = np.asarray(e64), np.asarray(g64)
    assert np.abs(e64 - e_ref).max() < 1e-6, np.abs(e64 - e_ref).max()
    assert np.abs(-g64 - f_ref).max() < 1e-5, np.abs(-g64 - f_ref).max()
    (_, e32), g32 = jax.jit(both)(jnp.asarray(flat, jnp.float32))
    e32 = np.asarray(e32)
    assert e32.dtype == np.float32 and np.asarray(g32).dtype == np.float32
    assert np.max(np.abs(e32 - e_ref) / np.maximum(np.abs(e_ref), 1.0)) < 1e-5
    f_err = (np.abs(-np.asarray(g32, np.float64) - f_ref).max(axis=1) / np.abs(f_ref).max(axis=1))[1:]
    assert f_err.max() < 1e-5, f_err.max()
    return params


def _aldp_from_xml(*files, **kwargs):
    pdb = app.PDBFile(ALDP + ".pdb")
    top = pdb.topology
    if files[0].startswith("charmm"):  # the whole-molecule template ALAD (charmm36.xml also matches AANM)
        top = as_one_residue(top, "ALAD")
        kwargs["residueTemplates"] = {next(top.residues()): "ALAD"}
    system = app.ForceField(*files).createSystem(top, nonbondedMethod=app.NoCutoff, constraints=None,
                                                 **kwargs)
    return system, pdb.positions


SLOW = pytest.mark.slow  # the default run keeps GBn2 (tables), ff19SB (CMAP) and the synthetic forces (CHARMM's
#                         kinds: tabulated CustomNonbondedForce, CustomBond/TorsionForce); the rest with -m slow


@pytest.mark.parametrize("model", [pytest.param(m, marks=SLOW) for m in ("hct", "obc1", "obc2", "gbn")] + ["gbn2"])
def test_every_implicit_solvent_of_openmm_app(model):
    system, positions = _aldp_from_xml("amber14-all.xml", f"implicit/{model}.xml")
    params = _assert_matches_openmm(system, _conformations(system, positions))
    assert any(f.kind == "CustomGBForce" for f in params.custom)


@SLOW
def test_gbn2_with_salt_and_from_a_prmtop():
    system, positions = _aldp_from_xml("amber14-all.xml", "implicit/gbn2.xml",
                                       implicitSolventKappa=1.27)  # 1/nm, about 0.15 M
    _assert_matches_openmm(system, _conformations(system, positions, n=8))
    prmtop = app.AmberPrmtopFile(ALDP + ".prmtop")
    for model in (app.GBn2, app.HCT):
        system = prmtop.createSystem(implicitSolvent=model, constraints=None, nonbondedMethod=app.NoCutoff)
        _assert_matches_openmm(system, _conformations(system, app.AmberInpcrdFile(ALDP + ".crd").positions, n=8))


@pytest.mark.parametrize("files", [pytest.param(("charmm36.xml",), marks=SLOW),
                                   pytest.param(("charmm36_2024.xml",), marks=SLOW), ("amber19-all.xml",)])
def test_charmm36_and_amber19_with_cmap(files):
    system, positions = _aldp_from_xml(*files)
    names = {type(f).__name__ for f in system.getForces()}
    assert "CMAPTorsionForce" in names
    params = _assert_matches_openmm(system, _conformations(system, positions))
    terms = energy_terms(params, jnp.asarray(_conformations(system, positions, n=2), jnp.float32))
    assert any(k.startswith("cmap") for k in terms)


def _toy_system(n=6):
    system = openmm.System()
    for _ in range(n):
        system.addParticle(12.0)
    return system


def test_synthetic_custom_forces_with_parameters_groups_exclusions_and_computed_values():
    system = _toy_system()
    bond = openmm.CustomBondForce("k*(r-r0)^2 + g")
    bond.addGlobalParameter("g", 0.25)
    for name in ("k", "r0"):
        bond.addPerBondParameter(name)
    bond.addBond(0, 1, [100.0, 0.15])
    bond.addBond(2, 3, [50.0, 0.2])
    angle = openmm.CustomAngleForce("k*(theta-t0)^2")
    angle.addPerAngleParameter("k")
    angle.addPerAngleParameter("t0")
    angle.addAngle(0, 1, 2, [10.0, 1.9])
    torsion = openmm.CustomTorsionForce("k*min(dt, 2*pi-dt)^2; dt=abs(theta-t0); pi=3.141592653589793")
    torsion.addPerTorsionParameter("k")
    torsion.addPerTorsionParameter("t0")
    torsion.addTorsion(0, 1, 2, 3, [5.0, 2.5])
    torsion.addTorsion(1, 2, 3, 4, [3.0, -1.0])
    external = openmm.CustomExternalForce("k*((x-x0)^2+(y-y0)^2+(z-z0)^2)")
    for name in ("k", "x0", "y0", "z0"):
        external.addPerParticleParameter(name)
    external.addParticle(5, [20.0, 0.1, 0.2, 0.3])
    external.addParticle(0, [10.0, 0.0, 0.0, 0.0])
    nb = openmm.CustomNonbondedForce("s*q1*q2/r + table(t1, t2)*exp(-r); s=scale")
    nb.addGlobalParameter("scale", 2.0)
    nb.addPerParticleParameter("q")
    nb.addPerParticleParameter("t")
    nb.addComputedValue("qq", "q*q")  # per-particle computed value, unused in the energy but read
    nb.addTabulatedFunction("table", openmm.Discrete2DFunction(2, 2, [1.0, 2.0, 2.0, 3.0]))
    for i in range(6):
        nb.addParticle([0.3 * (-1) ** i, i % 2])
    nb.addExclusion(0, 1)
    nb.addInteractionGroup([0, 1, 2], [1, 2, 3, 4, 5])
    for f in (bond, angle, torsion, external, nb):
        system.addForce(f)
    rng = np.random.default_rng(3)
    x = rng.uniform(0, 0.6, (12, 6, 3))
    params = _assert_matches_openmm(system, x)
    assert [f.kind for f in params.custom] == ["CustomBondForce", "CustomAngleForce", "CustomTorsionForce",
                                               "CustomExternalForce", "CustomNonbondedForce"]


@pytest.mark.parametrize("kind", ["ParticlePair", "ParticlePairNoExclusions"])
def test_a_custom_gb_force_with_exclusions_and_both_pair_kinds(kind):
    system = _toy_system(5)
    gb = openmm.CustomGBForce()
    gb.addPerParticleParameter("q")
    gb.addPerParticleParameter("a")
    # OpenMM's Reference platform takes one pair-computed value; the other pair kind is covered by the terms
    gb.addComputedValue("s", "a2*exp(-r^2)", getattr(openmm.CustomGBForce, kind))
    gb.addComputedValue("t", "s + a*z^2", openmm.CustomGBForce.SingleParticle)
    gb.addComputedValue("u", "t*s^2", openmm.CustomGBForce.SingleParticle)
    gb.addEnergyTerm("q*t + u", openmm.CustomGBForce.SingleParticle)
    gb.addEnergyTerm("q1*q2*t1*s2/r", openmm.CustomGBForce.ParticlePair)
    gb.addEnergyTerm("0.1*u1*u2*r^2", openmm.CustomGBForce.ParticlePairNoExclusions)
    for i in range(5):
        gb.addParticle([(-1) ** i * 0.4, 0.5 + 0.1 * i])
    gb.addExclusion(0, 2)
    gb.addExclusion(1, 4)
    system.addForce(gb)
    x = np.random.default_rng(4).uniform(0, 0.8, (10, 5, 3))
    _assert_matches_openmm(system, x)


def test_what_the_engine_cannot_read_is_named_in_one_line():
    system = _toy_system()
    nb = openmm.CustomNonbondedForce("r")
    nb.setNonbondedMethod(openmm.CustomNonbondedForce.CutoffNonPeriodic)
    for _ in range(6):
        nb.addParticle([])
    system.addForce(nb)
    with pytest.raises(BoltzflowError, match="cutoff") as e:
        read_forcefield(system)
    assert "\n" not in str(e.value)
    system = _toy_system()
    system.addForce(openmm.CustomCompoundBondForce(2, "distance(p1, p2)"))
    with pytest.raises(BoltzflowError, match="CustomCompoundBondForce") as e:
        read_forcefield(system)
    assert "\n" not in str(e.value)
    system = _toy_system()
    bond = openmm.CustomBondForce("r*mystery")
    bond.addBond(0, 1, [])
    system.addForce(bond)
    with pytest.raises(BoltzflowError, match="mystery") as e:
        energy_terms(read_forcefield(system), jnp.zeros((1, 6, 3)))
    assert "\n" not in str(e.value)


@SLOW
def test_a_pdb_typed_by_a_whole_molecule_template_keeps_its_residues():
    """``{"pdb", "forcefield", "template"}``: CHARMM36 types alanine dipeptide by its ALAD template, and the molecule
    keeps the PDB's three residues (so phi and psi are found)."""
    from boltzflow.molecules.metrics import named_torsions
    from boltzflow.molecules.system import load_system

    mol = load_system({"pdb": ALDP + ".pdb", "forcefield": ["charmm36_2024.xml"], "template": "ALAD"})
    assert "CMAPTorsionForce" in mol.force_names() and sorted(set(mol.residue_names)) == ["ACE", "ALA", "NME"]
    assert {"phi", "psi"} <= set(named_torsions(mol))
    with pytest.raises(BoltzflowError, match="could not build"):
        load_system({"pdb": ALDP + ".pdb", "forcefield": ["charmm36_2024.xml"], "template": "NOSUCH"})
