"""The JAX CMAPTorsionForce against OpenMM's Reference platform (energies and forces, float64 and float32)."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

openmm = pytest.importorskip("openmm", reason="OpenMM is not installed (pip install 'boltzflow[molecules]')")
app = pytest.importorskip("openmm.app")

from conftest import openmm_reference  # noqa: E402

from boltzflow.errors import BoltzflowError  # noqa: E402
from boltzflow.molecules.cmap import cmap_energy, read_cmap  # noqa: E402
from boltzflow.molecules.geometry import Geometry  # noqa: E402
from boltzflow.molecules.system import as_one_residue, openmmtools_data_dir  # noqa: E402

EPS = 1e-9  # rad: "just next to" a grid line or the +-pi seam


def _pdb():
    return app.PDBFile(os.path.join(openmmtools_data_dir(), "alanine-dipeptide-gbsa", "alanine-dipeptide.pdb"))


def _cmap_force(system):
    (force,) = [f for f in system.getForces() if isinstance(f, openmm.CMAPTorsionForce)]
    return force


def _reference(system, x):
    """Energies (n,) and forces (n, N, 3) of the CMAPTorsionForce alone (force group 1), Reference platform."""
    for f in system.getForces():
        f.setForceGroup(1 if isinstance(f, openmm.CMAPTorsionForce) else 0)
    return openmm_reference(system, x, groups={1})


def _energy_and_forces(params, x):
    """Energies (B,) and forces -grad (B, N, 3) in x's dtype, one jitted call."""

    def total(y):
        e = cmap_energy(params, Geometry(y))
        return jnp.sum(e), e

    (_, e), g = jax.jit(jax.value_and_grad(total, has_aux=True))(x)
    assert e.dtype == x.dtype and g.dtype == x.dtype
    return e, -g


def _jax64(params, x):
    """Energies and forces in float64."""
    with jax.enable_x64(True):
        e, f = _energy_and_forces(params, jnp.asarray(x, jnp.float64))
        return np.asarray(e), np.asarray(f)


def _dihedral(x, i, j, k, m):
    b0, b1, b2 = x[j] - x[i], x[k] - x[j], x[m] - x[k]
    n1, n2 = np.cross(b0, b1), np.cross(b1, b2)
    return np.arctan2(np.linalg.norm(b1) * np.dot(b0, n2), np.dot(n1, n2))


def _side(n_atoms, bonds, j, k):
    """Atoms on k's side of the bond j-k (the bond graph with j-k removed)."""
    adj = {a: set() for a in range(n_atoms)}
    for a, b in bonds:
        if {a, b} != {j, k}:
            adj[a].add(b)
            adj[b].add(a)
    seen, todo = {k}, [k]
    while todo:
        for b in adj[todo.pop()] - seen:
            seen.add(b)
            todo.append(b)
    assert j not in seen  # the bond is not in a ring
    return np.asarray(sorted(seen))


def _set_dihedral(x, bonds, quad, target):
    """Rotate k's side of the bond j-k rigidly about it so the dihedral i-j-k-m becomes ``target``."""
    i, j, k, m = quad
    angle = target - _dihedral(x, i, j, k, m)
    axis = (x[k] - x[j]) / np.linalg.norm(x[k] - x[j])
    kx = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    rot = np.eye(3) + np.sin(angle) * kx + (1 - np.cos(angle)) * kx @ kx  # Rodrigues
    idx = _side(len(x), bonds, j, k)
    x = x.copy()
    x[idx] = (x[idx] - x[j]) @ rot.T + x[j]
    return x


def _aldp_conformations(topology, x0, force):
    """50 conformations: 22 with (phi, psi) set exactly at the +-pi seam, at 0, on and next to grid lines (15 deg),
    and 28 at uniform random (phi, psi) with 0.02-0.05 nm Gaussian noise on every atom."""
    rng = np.random.default_rng(0)
    row = force.getTorsionParameters(0)
    phi_atoms, psi_atoms = row[1:5], row[5:9]
    bonds = [(b[0].index, b[1].index) for b in topology.bonds()]
    g = 2 * np.pi / force.getMapParameters(row[0])[0]
    special = [np.pi - EPS, -np.pi + EPS, np.pi, EPS, -EPS, 0.0, g, g + EPS, g - EPS, -g, 7 * g - EPS, -11 * g + EPS]
    pairs = [(a, b) for a, b in zip(special, special[::-1])] + [(a, a) for a in special[:6]]
    pairs += [tuple(rng.choice(special, 2)) for _ in range(4)]
    pairs += [tuple(rng.uniform(-np.pi, np.pi, 2)) for _ in range(28)]
    out = []
    for n, (phi, psi) in enumerate(pairs):
        x = _set_dihedral(_set_dihedral(x0, bonds, phi_atoms, phi), bonds, psi_atoms, psi)
        if n >= 22:
            x = x + rng.uniform(0.02, 0.05) * rng.standard_normal(x.shape)
        out.append(x)
    x = np.asarray(out)
    phis = np.array([_dihedral(xi, *phi_atoms) for xi in x])
    psis = np.array([_dihedral(xi, *psi_atoms) for xi in x])
    # the whole torus is visited: both seams and every quadrant
    assert np.abs(np.abs(phis) - np.pi).min() < 1e-8 and np.abs(np.abs(psis) - np.pi).min() < 1e-8
    assert len({(a > 0, b > 0) for a, b in zip(phis, psis)}) == 4
    return x


def _check(system, x, force_tol=1e-5):
    params = read_cmap(_cmap_force(system))
    e_ref, f_ref = _reference(system, x)
    e, f = _jax64(params, x)
    e_err = np.abs(e - e_ref).max()
    f_err = (np.abs(f - f_ref).max(axis=(1, 2)) / np.maximum(1.0, np.abs(f_ref).max(axis=(1, 2)))).max()
    print(f"max |dE| = {e_err:.2e} kJ/mol, max relative |dF| = {f_err:.2e}")
    assert e_err < 1e-6
    assert f_err < force_tol
    assert np.ptp(e_ref) > 1.0  # the conformations do explore the map
    return params, e


@pytest.fixture(scope="module")
def aldp():
    pdb = _pdb()
    x0 = np.asarray(pdb.getPositions(asNumpy=True).value_in_unit(openmm.unit.nanometer), np.float64)
    return pdb.topology, x0


@pytest.mark.parametrize("ff", ["amber19-all.xml",
                                pytest.param("charmm36_2024.xml", marks=pytest.mark.slow)])  # its XML takes ~5 s
def test_forcefield_cmap_matches_openmm(aldp, ff):
    topology, x0 = aldp
    top = as_one_residue(topology, "ALAD") if ff.startswith("charmm") else topology
    system = app.ForceField(ff).createSystem(top, nonbondedMethod=app.NoCutoff, constraints=None)
    x = _aldp_conformations(topology, x0, _cmap_force(system))
    params, e64 = _check(system, x)
    _check_float32(params, x, e64)


def _synthetic(rng):
    """Six atoms, three maps (sizes 24, 10, 5) with random energies and five torsions that use all three."""
    force = openmm.CMAPTorsionForce()
    for size in (24, 10, 5):
        force.addMap(size, rng.normal(0.0, 5.0, size * size))
    for m, atoms in [(0, (0, 1, 2, 3, 1, 2, 3, 4)), (1, (1, 2, 3, 4, 2, 3, 4, 5)), (2, (5, 4, 3, 2, 3, 2, 1, 0)),
                     (1, (0, 1, 2, 3, 2, 3, 4, 5)), (0, (3, 2, 1, 0, 4, 3, 2, 1))]:
        force.addTorsion(m, *atoms)
    system = openmm.System()
    for _ in range(6):
        system.addParticle(1.0)
    system.addForce(force)
    return system


def _chains(rng, n, n_atoms=6, bond=0.15):
    """Random chains: successive atoms 0.15 nm apart in random directions, bond angles kept away from 0 and pi."""
    out = np.zeros((n, n_atoms, 3))
    for c in range(n):
        prev = None
        for a in range(1, n_atoms):
            while True:
                d = rng.standard_normal(3)
                d /= np.linalg.norm(d)
                if prev is None or abs(np.dot(d, prev)) < 0.9:
                    break
            out[c, a] = out[c, a - 1] + bond * d
            prev = d
    return out + rng.uniform(-1, 1, (n, 1, 3))


def test_synthetic_maps_of_several_sizes():
    rng = np.random.default_rng(1)
    system = _synthetic(rng)
    params = read_cmap(_cmap_force(system))
    assert list(params.size) == [24, 10, 5] and list(params.torsion_map) == [0, 1, 2, 1, 0]
    x = _chains(rng, 50)
    _, e64 = _check(system, x)
    _check_float32(params, x, e64)


def _check_float32(params, x, e64):
    """float32 energies against the float64 ones; with x64 switched on, a float32 input still keeps every
    intermediate of the energy and of its gradient in float32 (no float64 constant leaks in)."""
    assert not jax.config.jax_enable_x64
    e32 = jax.jit(lambda y: cmap_energy(params, Geometry(y)))(jnp.asarray(x, jnp.float32))
    assert e32.dtype == jnp.float32
    err = np.abs(np.asarray(e32, np.float64) - e64)
    print(f"float32: max |dE| = {err.max():.2e} kJ/mol, max |dE| / max(1e-5 |E|, 1e-4) = "
          f"{(err / np.maximum(1e-5 * np.abs(e64), 1e-4)).max():.2f}")
    assert np.all(err <= np.maximum(1e-5 * np.abs(e64), 1e-4))
    with jax.enable_x64(True):
        jaxpr = jax.make_jaxpr(jax.value_and_grad(lambda y: jnp.sum(cmap_energy(params, Geometry(y)))))(
            jnp.asarray(x[:2], jnp.float32))
    assert "f64" not in str(jaxpr) and "f32" in str(jaxpr)  # the printed jaxpr shows nested ones too
    assert all(v.aval.dtype == np.float32 for v in jaxpr.jaxpr.outvars)


def test_refuses_periodic_force_and_handles_empty():
    force = openmm.CMAPTorsionForce()
    force.addMap(4, np.zeros(16))
    force.setUsesPeriodicBoundaryConditions(True)
    with pytest.raises(BoltzflowError, match="periodic") as e:
        read_cmap(force)
    assert "\n" not in str(e.value)
    empty = read_cmap(openmm.CMAPTorsionForce())
    out = cmap_energy(empty, Geometry(jnp.zeros((3, 4, 3))))
    assert out.shape == (3,) and out.dtype == jnp.float32 and not np.any(np.asarray(out))


def test_constant_map_and_grid_values():
    """A constant map gives that constant everywhere; at a grid point the patch returns the tabulated value."""
    rng = np.random.default_rng(2)
    force = openmm.CMAPTorsionForce()
    force.addMap(6, np.full(36, 2.5))
    energies = rng.normal(size=64)
    force.addMap(8, energies)
    force.addTorsion(0, 0, 1, 2, 3, 1, 2, 3, 4)
    force.addTorsion(1, 0, 1, 2, 3, 1, 2, 3, 4)
    params = read_cmap(force)
    x = _chains(rng, 1, n_atoms=5)
    bonds = [(a, a + 1) for a in range(4)]
    i, j = 3, 5  # grid point (3 h, 5 h) of the 8-map, phi in (0, 2 pi) mapped to (-pi, pi]
    h = 2 * np.pi / 8
    x = _set_dihedral(x[0], bonds, (0, 1, 2, 3), np.angle(np.exp(1j * i * h)))
    x = _set_dihedral(x, bonds, (1, 2, 3, 4), np.angle(np.exp(1j * j * h)))
    with jax.enable_x64(True):
        e = float(cmap_energy(params, Geometry(jnp.asarray(x[None])))[0])
    assert abs(e - 2.5 - energies[i + 8 * j]) < 1e-9
