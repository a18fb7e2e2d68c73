"""The JAX force field against OpenMM's Reference platform, and the molecular target built on it."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

openmm = pytest.importorskip("openmm", reason="OpenMM is not installed (pip install 'boltzflow[molecules]')")

from conftest import openmm_reference  # noqa: E402

from boltzflow.errors import BoltzflowError  # noqa: E402
from boltzflow.molecules.forcefield import batched_energy, read_forcefield  # noqa: E402
from boltzflow.molecules.openmm_engine import close_all  # noqa: E402
from boltzflow.molecules.reference import load_reference  # noqa: E402
from boltzflow.molecules.system import load_system, minimize, molecular_system, openmmtools_data_dir  # noqa: E402
from boltzflow.targets import make_target  # noqa: E402
from boltzflow.targets.molecule import GAS_CONSTANT, MoleculeTarget, regularize_energy  # noqa: E402

N_CONFS = 1000
DATA = os.path.join(os.path.dirname(__file__), "..", "boltzflow", "molecules", "data")


def _pdb_obc():
    pdb = os.path.join(openmmtools_data_dir(), "alanine-dipeptide-gbsa", "alanine-dipeptide.pdb")
    return {"pdb": pdb, "forcefield": ["amber99sb.xml", "amber99_obc.xml"], "name": "aldp_amber99_obc"}


def _reference(molecule, x):
    """Energies and flattened forces (n, 3N) on OpenMM's Reference platform."""
    e, f = openmm_reference(molecule, x)
    return e, f.reshape(len(x), -1)


def _conformations(molecule, name):
    """1000 conformations: 500 random (the minimum with 0.01 nm Gaussian noise per coordinate, energies up to
    ~1e3 kJ/mol) and 500 from the shipped MD reference set where there is one (else more random ones)."""
    rng = np.random.default_rng(0)
    x_min = minimize(molecule)
    n_rand = N_CONFS
    out = []
    path = os.path.join(DATA, f"{name}.npz")
    if os.path.exists(path):
        ref = load_reference(path)["x"].astype(np.float64)
        out.append(ref[rng.choice(len(ref), N_CONFS // 2, replace=False)].reshape(-1, molecule.n_atoms, 3))
        n_rand -= N_CONFS // 2
    out.append(x_min + 0.01 * rng.standard_normal((n_rand,) + x_min.shape))
    return np.concatenate(out)


CASES = {"aldp_implicit": "aldp_implicit_300K", "aldp_vacuum": "aldp_vacuum_1000K"}


@pytest.mark.parametrize("name", sorted(CASES))
def test_jax_engine_matches_openmm_reference(name):
    molecule = load_system(name)
    x = _conformations(molecule, CASES[name])
    e_ref, f_ref = _reference(molecule, x)
    params = read_forcefield(molecule.openmm_system())
    flat = x.reshape(len(x), -1)
    with jax.enable_x64(True):
        fn = jax.jit(jax.value_and_grad(lambda y: jnp.sum(batched_energy(params)(y))))
        e64 = np.asarray(jax.jit(batched_energy(params))(jnp.asarray(flat, jnp.float64)))
        _, g64 = fn(jnp.asarray(flat, jnp.float64))
    assert np.abs(e64 - e_ref).max() < 1e-6  # kJ/mol
    assert np.abs(-np.asarray(g64) - f_ref).max() < 1e-5  # kJ/mol/nm
    fn32 = jax.jit(jax.value_and_grad(lambda y: jnp.sum(batched_energy(params)(y))))
    e32 = np.asarray(jax.jit(batched_energy(params))(jnp.asarray(flat, jnp.float32)), np.float64)
    _, g32 = fn32(jnp.asarray(flat, jnp.float32))
    assert e32.dtype == np.float64 and np.asarray(g32).dtype == np.float32
    # float32: energy relative to |E|; forces relative to the largest force component of the conformation
    assert np.max(np.abs(e32 - e_ref) / np.abs(e_ref)) < 1e-5
    f_err = np.abs(-np.asarray(g32, np.float64) - f_ref).max(axis=1) / np.abs(f_ref).max(axis=1)
    assert f_err.max() < 1e-5


def test_native_gbsaobc_force_from_pdb_and_xml():
    """A PDB + force-field XML source (amber99sb + amber99_obc.xml builds OpenMM's native GBSAOBCForce)."""
    molecule = load_system(_pdb_obc())
    assert "GBSAOBCForce" in molecule.force_names()
    x = minimize(molecule) + 0.01 * np.random.default_rng(1).standard_normal((50, molecule.n_atoms, 3))
    e_ref, f_ref = _reference(molecule, x)
    params = read_forcefield(molecule.openmm_system())
    with jax.enable_x64(True):
        e, g = jax.vmap(jax.value_and_grad(lambda y: batched_energy(params)(y[None])[0]))(
            jnp.asarray(x.reshape(50, -1)))
    assert np.abs(np.asarray(e) - e_ref).max() < 1e-6
    assert np.abs(-np.asarray(g) - f_ref).max() < 1e-5


def test_unsupported_force_is_named_in_one_line():
    molecule = load_system("aldp_vacuum")
    system = molecule.openmm_system()
    system.addForce(openmm.CustomCentroidBondForce(2, "distance(g1, g2)"))
    with pytest.raises(BoltzflowError, match="CustomCentroidBondForce") as e:
        read_forcefield(system)
    assert "\n" not in str(e.value)


def test_systems_with_constraints_are_refused():
    app = openmm.app
    base = os.path.join(openmmtools_data_dir(), "alanine-dipeptide-gbsa", "alanine-dipeptide")
    prmtop = app.AmberPrmtopFile(base + ".prmtop")
    system = prmtop.createSystem(constraints=app.HBonds, nonbondedMethod=app.NoCutoff)

    with pytest.raises(BoltzflowError, match="constraints"):
        molecular_system(system, prmtop.topology, app.AmberInpcrdFile(base + ".crd").getPositions(), "x")


def test_openmmtools_source_keeps_jax_32_bit():
    assert not jax.config.jax_enable_x64
    molecule = load_system({"openmmtools": "AlanineDipeptideVacuum"})
    assert not jax.config.jax_enable_x64  # pymbar's import turns x64 on; load_system puts it back
    assert molecule.n_atoms == 22


def test_molecule_target_log_prob_is_minus_energy_over_kt():
    target = make_target({"name": "aldp_implicit"})
    assert target.dim == 66 and isinstance(target, MoleculeTarget) and target.temperature == 300.0
    hot = make_target({"name": "aldp_vacuum", "temperature": 1000})
    assert hot.temperature == 1000.0 and hot.kT == pytest.approx(GAS_CONSTANT * 1000)
    x = minimize(target.molecule)[None] + 0.005 * np.random.default_rng(2).standard_normal((8, 22, 3))
    e_ref, _ = _reference(target.molecule, x)
    lp = np.asarray(jax.jit(target.log_prob)(jnp.asarray(x.reshape(8, -1), jnp.float32)), np.float64)
    np.testing.assert_allclose(lp, -e_ref / (GAS_CONSTANT * 300), rtol=1e-5, atol=5e-4)  # float32, in kT


def test_coincident_atoms_give_minus_inf_and_huge_energies_are_regularised():
    target = make_target("aldp_vacuum")
    x = minimize(target.molecule).reshape(1, -1).repeat(3, 0)
    x[1, 3:6] = x[1, 0:3]  # atoms 0 and 1 on top of each other
    x[2, 63:66] = x[2, 0:3] + 0.01  # two hydrogens far apart in the bond graph 0.017 nm apart: ~1e15 kT
    lp = np.asarray(target.log_prob(jnp.asarray(x, jnp.float32)))
    assert np.isfinite(lp[0]) and lp[1] == -np.inf
    assert np.isfinite(lp[2]) and lp[2] < -1e8 and lp[2] > -1e8 - 100  # linear-log above u_cut = 1e8
    with jax.enable_x64(True):
        reg = np.asarray(regularize_energy(jnp.asarray([1.0, 1e8 + 1.0, 1e30], jnp.float64), 1e8, 1e20))
    np.testing.assert_allclose(reg,
                               [1.0, 1e8 + np.log(2.0), 1e8 + np.log1p(1e20 - 1e8)], rtol=1e-12)


def test_openmm_engine_target_equals_jax_engine_target():
    a = make_target({"name": "aldp_implicit", "engine": "openmm", "platform": "Reference", "n_workers": 1})
    b = make_target({"name": "aldp_implicit"})
    x = minimize(a.molecule).reshape(1, -1) + 0.01 * np.random.default_rng(3).standard_normal((16, 66))
    with jax.enable_x64(True):
        la, ga = jax.jit(jax.value_and_grad(lambda y: jnp.sum(a.log_prob(y))))(jnp.asarray(x))
        lb, gb = jax.jit(jax.value_and_grad(lambda y: jnp.sum(b.log_prob(y))))(jnp.asarray(x))
    np.testing.assert_allclose(float(la), float(lb), rtol=1e-10)
    np.testing.assert_allclose(np.asarray(ga), np.asarray(gb), rtol=1e-8, atol=1e-8)
    close_all()


def test_bad_molecule_specs_fail_in_one_line():
    for spec, match in [({"name": "aldp_implicit", "engine": "gpu"}, "engine"),
                        ({"name": "aldp_implicit", "temperature": -3}, "temperature"),
                        ({"name": "molecule", "molecule": {"pdb": "nope.pdb", "forcefield": ["amber99sb.xml"]}},
                         "no such file"),
                        ({"name": "molecule", "molecule": "benzene"}, "unknown molecule")]:
        with pytest.raises(BoltzflowError, match=match) as e:
            make_target(spec)
        assert "\n" not in str(e.value)


def test_mirror_images_are_outside_the_target_unless_asked_for():
    """The default target is the starting structure's stereoisomer (L-alanine): x -> -x has the same energy but
    log p = -inf; with chirality: false it has the same log p."""
    target = make_target("aldp_implicit")
    anyform = make_target({"name": "aldp_implicit", "chirality": False})
    x = minimize(target.molecule).reshape(1, -1)
    both = jnp.asarray(np.concatenate([x, -x]), jnp.float32)
    lp, lp_any = np.asarray(target.log_prob(both)), np.asarray(anyform.log_prob(both))
    assert np.isfinite(lp[0]) and lp[1] == -np.inf
    np.testing.assert_allclose(lp_any[1], lp_any[0], rtol=1e-5)
    np.testing.assert_allclose(lp_any[0], lp[0])


def test_missing_openmm_is_one_clear_line(tmp_path):
    import subprocess
    import sys

    code = ("import sys; sys.modules['openmm'] = None; sys.modules['openmm.app'] = None\n"
            "from boltzflow.cli import main\n"
            "sys.exit(main(['train', 'quick_gmm', '--target', 'aldp_implicit', '--out', sys.argv[1]]))")
    r = subprocess.run([sys.executable, "-c", code, str(tmp_path / "run")], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().splitlines() == ["boltzflow: error: molecular targets need OpenMM: pip install "
                                             "'boltzflow[molecules]' (or pip install openmm)"]


def test_minimize_is_kept_per_start_and_returns_a_copy():
    """The minimum is computed once per (system, start, tolerance): a second call returns the same structure, a
    caller's changes to it do not reach the next caller, and another start is minimised on its own."""
    molecule = load_system("aldp_vacuum")
    a = minimize(molecule)
    a += 1.0
    b = minimize(molecule)
    np.testing.assert_array_equal(b, minimize(molecule))
    assert np.abs(a - b).max() == 1.0
    other = minimize(molecule, molecule.positions + 0.02, max_iterations=5)
    assert np.abs(other - b).max() > 1e-4
