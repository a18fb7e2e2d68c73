"""Z-matrix from the bond graph, internal <-> Cartesian maps, their Haar-measure Jacobian, the InternalCoordinates
layer and the chirality filter, on alanine dipeptide and toluene (a ring and a methyl rotor)."""

import functools
import importlib.util
import os

import pytest

pytest.importorskip("openmm", reason="molecular tests need OpenMM (pip install openmm)")

import equinox as eqx  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from boltzflow.errors import BoltzflowError  # noqa: E402
from boltzflow.flows import Flow, InternalCoordinates, StandardBase, make_nsf  # noqa: E402
from boltzflow.molecules.chirality import Chirality, find_stereocentres  # noqa: E402
from boltzflow.molecules.system import load_system, minimize, openmmtools_data_dir  # noqa: E402
from boltzflow.molecules.zmatrix import (  # noqa: E402
    ZMatrix, build_zmatrix, cartesian_to_internal, internal_to_cartesian, log_det_jacobian, ring_bonds)

if importlib.util.find_spec("openmmtools") is None:  # not imported: its pymbar import may switch JAX to 64 bits
    pytest.skip("the molecule files come with openmmtools", allow_module_level=True)


def _toluene():
    d = os.path.join(openmmtools_data_dir(), "benzene-toluene-implicit")
    return {"prmtop": os.path.join(d, "solvent.prmtop"), "inpcrd": os.path.join(d, "solvent.inpcrd"),
            "name": "toluene"}


SOURCES = {"aldp": "aldp_implicit", "toluene": _toluene(), "hostguest": {"openmmtools": "HostGuestVacuum"}}


@functools.lru_cache(maxsize=None)
def _molecule(name):
    """(molecule, Z-matrix, minimum (N, 3) nm float64, layer built on that minimum), made once per session."""
    m = load_system(SOURCES[name])
    xmin = minimize(m)
    return m, ZMatrix.from_system(m), xmin, InternalCoordinates(m, reference=xmin)


@pytest.fixture(params=[pytest.param(name, marks=pytest.mark.slow) if name == "hostguest" else name
                        for name in SOURCES])  # host-guest's own test runs by default; these with -m slow
def mol(request):
    return _molecule(request.param)


@pytest.fixture
def aldp():
    return _molecule("aldp")


def _rotation(rng):
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    return q if np.linalg.det(q) > 0 else -q


def _wrap(a):
    return (np.asarray(a) + np.pi) % (2 * np.pi) - np.pi


def _perturbed_ic(zm, xmin, rng, n):
    """Internal coordinates of the minimum plus noise (float64 numpy): (bonds, angles, dihedrals)."""
    b, a, d = (np.asarray(v, np.float64) for v in cartesian_to_internal(zm, jnp.asarray(xmin.reshape(1, -1))))
    nd = d.shape[1]
    dd = np.where(zm.circular, rng.uniform(-np.pi, np.pi, (n, nd)), 0.2 * rng.normal(size=(n, nd)))
    return b + 0.005 * rng.normal(size=(n, b.shape[1])), a + 0.1 * rng.normal(size=(n, a.shape[1])), d + dd


def _pairwise(x):
    X = np.asarray(x, np.float64).reshape(x.shape[0], -1, 3)
    return np.linalg.norm(X[:, :, None] - X[:, None], axis=-1)


def _rigid_jacobian_logdet(embed, qs):
    """log|det| of (q, t, w) -> exp([w]x) X(q) + t at t = w = 0, X = embed(q) (N, 3): the full 3N x 3N Jacobian,
    for each row of ``qs``."""

    def F(v):
        qq, t, w = v[:-6], v[-6:-3], v[-3:]
        skew = jnp.array([[0.0, -w[2], w[1]], [w[2], 0.0, -w[0]], [-w[1], w[0], 0.0]])
        return (embed(qq) @ jax.scipy.linalg.expm(skew).T + t).reshape(-1)

    @jax.jit
    def logdet(q):
        return jnp.linalg.slogdet(jax.jacfwd(F)(jnp.concatenate([q, jnp.zeros(6, q.dtype)])))[1]

    return np.asarray([float(logdet(q)) for q in qs])


# ---- the Z-matrix ----------------------------------------------------------------------------------------------


def test_zmatrix_places_every_atom_once_from_bonded_placed_atoms(mol):
    m, zm, _, _ = mol
    n = m.n_atoms
    assert sorted(zm.order.tolist()) == list(range(n))
    assert zm.dim == 3 * n - 6 == zm.n_bonds + zm.n_angles + zm.n_dihedrals
    assert len(zm.names) == zm.dim and len(set(zm.names)) == zm.dim
    assert m.elements[zm.order[0]] != "H" and m.elements[zm.order[1]] != "H" and m.elements[zm.order[2]] != "H"
    chemical = {tuple(sorted(b)) for b in m.bonds.tolist()}
    bonded = chemical | {tuple(sorted(b)) for b in zm.links.tolist()}  # links join molecules (host-guest)
    inter = zm.split(zm.intermolecular_mask)[2]
    pos = {a: p for p, a in enumerate(zm.order.tolist())}
    for p in range(1, n):
        i, j, k, l = zm.order[p], zm.j[p], zm.k[p], zm.l[p]
        assert tuple(sorted((i, j))) in bonded and pos[j] < p
        if p >= 2:
            assert tuple(sorted((j, k))) in bonded and pos[k] < p and k != i
        if p >= 3:
            assert pos[l] < p and len({i, j, k, l}) == 4
            rel = zm.relative[p - 3]
            # a proper torsion's l is bonded to k (chain i-j-k-l); a sibling's l is bonded to j on the same axis
            assert tuple(sorted((l, j if rel else k))) in bonded
            if rel and not inter[p - 3]:
                assert zm.j[pos[l]] == j and zm.k[pos[l]] == k and not zm.circular[p - 3]
    # no intermolecular dihedral is circular (a complex stays near its pose); every rotatable bond (both atoms of
    # degree > 1, not in a ring) carries exactly one circular torsion of its own molecule
    assert not np.any(zm.circular[inter])
    degree = np.bincount(m.bonds.reshape(-1), minlength=n)
    rings = ring_bonds(n, m.bonds)
    rotatable = {b for b in chemical if degree[b[0]] > 1 and degree[b[1]] > 1 and b not in rings}
    axes = [tuple(sorted(r[1:3])) for r in zm.dihedral_atoms[zm.circular & ~inter].tolist()]
    assert sorted(axes) == sorted(rotatable)


def test_alanine_dipeptide_circular_torsions_are_phi_psi_omegas_and_methyls(aldp):
    m, zm, _, _ = aldp
    assert (zm.n_bonds, zm.n_angles, zm.n_dihedrals) == (21, 20, 19)
    assert zm.order[0] == 8 and m.atom_names[8] == "CA"  # the graph centre is the root
    circ = {tuple(r) for r in zm.dihedral_atoms[zm.circular].tolist()}
    expected = {
        (4, 6, 8, 14),  # phi  C-N-CA-C
        (16, 14, 8, 6),  # psi  N-C-CA-N (as N-CA-C-N reversed)
        (1, 4, 6, 8),  # omega (ACE)  CH3-C-N-CA
        (18, 16, 14, 8),  # omega (NME)  CH3-N-C-CA
        (0, 1, 4, 6),  # ACE methyl
        (11, 10, 8, 6),  # CB methyl
        (19, 18, 16, 14),  # NME methyl
    }
    assert circ == expected
    assert zm.circular_mask.sum() == 7 and zm.circular_mask[:41].sum() == 0


def test_toluene_ring_torsions_are_not_circular():
    m, zm, _, _ = _molecule("toluene")
    assert len(ring_bonds(m.n_atoms, m.bonds)) == 6
    assert zm.circular.sum() == 1  # the methyl rotor
    (i, j, k, _), = zm.dihedral_atoms[zm.circular].tolist()
    assert {j, k} == {5, 6} and m.elements[i] == "H"


def test_host_guest_is_joined_by_one_link_with_six_intermolecular_coordinates():
    m, zm, xmin, _ = _molecule("hostguest")
    assert np.bincount(zm.component).tolist() == [126, 30] and zm.dim == 3 * m.n_atoms - 6
    ((a, b),) = zm.links.tolist()
    assert zm.component[a] != zm.component[b] and "H" not in (m.elements[a], m.elements[b])
    # the closest heavy-atom pair of the two molecules in the starting structure
    x = m.positions
    heavy = np.array([e != "H" for e in m.elements])
    host, guest = np.flatnonzero(heavy & (zm.component == 0)), np.flatnonzero(heavy & (zm.component == 1))
    d = np.linalg.norm(x[host][:, None] - x[guest][None], axis=-1)
    assert np.isclose(np.linalg.norm(x[a] - x[b]), d.min())
    inter = zm.intermolecular_mask
    b_, a_, d_ = zm.split(inter)
    assert (b_.sum(), a_.sum(), d_.sum()) == (1, 2, 3)  # position (r, angle, dihedral), orientation (2 angles, 1)
    assert not np.any(zm.circular[d_])
    # float32 round trip x -> internal -> x: every interatomic distance within 1e-5 nm (6e-7 nm measured)
    y = (xmin + 0.01 * np.random.default_rng(0).normal(size=(16,) + xmin.shape)).reshape(16, -1)
    back = jax.jit(lambda v: internal_to_cartesian(zm, *cartesian_to_internal(zm, v)))(jnp.asarray(y, jnp.float32))
    assert back.dtype == jnp.float32
    assert np.abs(_pairwise(np.asarray(back)) - _pairwise(y)).max() < 1e-5


def test_several_small_molecules_get_six_coordinates_each():
    """Three waters and an ion: 3 N - 6 coordinates, 6 intermolecular per extra water and 3 for the ion."""
    rng = np.random.default_rng(5)
    water = np.array([[0.0, 0, 0], [0.096, 0, 0], [-0.024, 0.093, 0]])
    x = np.concatenate([water + [0.3 * w, 0, 0] + 0.01 * rng.normal(size=(3, 3)) for w in range(3)]
                       + [np.array([[0.1, 0.3, 0.1]])])
    bonds = [[3 * w, 3 * w + 1] for w in range(3)] + [[3 * w, 3 * w + 2] for w in range(3)]
    elements = ["O", "H", "H"] * 3 + ["Na"]
    zm = build_zmatrix(10, bonds, elements, positions=x)
    assert zm.dim == 24 and len(zm.links) == 3 and int(zm.intermolecular_mask.sum()) == 6 + 6 + 3
    with jax.enable_x64(True):
        q = cartesian_to_internal(zm, jnp.asarray(x.reshape(1, -1)))
        back = internal_to_cartesian(zm, *q)
        np.testing.assert_allclose(_pairwise(back), _pairwise(x.reshape(1, -1)), atol=1e-12)
        def embed(v):
            return internal_to_cartesian(zm, *zm.split(v[None]))[0].reshape(-1, 3)
        qs = jnp.concatenate(q, axis=-1)
        got = _rigid_jacobian_logdet(embed, qs)
        np.testing.assert_allclose(got, np.asarray(log_det_jacobian(q[0], q[1])), atol=1e-8)


def test_zmatrix_rejects_bad_graphs():
    with pytest.raises(BoltzflowError, match="components"):
        build_zmatrix(4, [[0, 1], [2, 3]])
    with pytest.raises(BoltzflowError, match="at least 3"):
        build_zmatrix(2, [[0, 1]])
    with pytest.raises(BoltzflowError, match="out of range"):
        build_zmatrix(3, [[0, 1], [1, 5]])


# ---- the maps and the Jacobian (float64) -------------------------------------------------------------------------


def test_internal_cartesian_round_trips_float64(mol):
    _, zm, xmin, _ = mol
    rng = np.random.default_rng(0)
    with jax.enable_x64(True):
        b, a, d = _perturbed_ic(zm, xmin, rng, 16)
        x = jax.jit(lambda *q: internal_to_cartesian(zm, *q))(b, a, d)
        assert x.dtype == jnp.float64 and x.shape == (16, 3 * zm.n_atoms)
        X = np.asarray(x).reshape(16, -1, 3)
        o = zm.order
        np.testing.assert_array_equal(X[:, o[0]], 0)  # canonical frame
        np.testing.assert_array_equal(X[:, o[1], 1:], 0)
        assert np.all(X[:, o[1], 0] > 0) and np.all(X[:, o[2], 2] == 0) and np.all(X[:, o[2], 1] > 0)
        b2, a2, d2 = cartesian_to_internal(zm, x)
        np.testing.assert_allclose(b2, b, rtol=0, atol=1e-10)
        np.testing.assert_allclose(a2, a, rtol=0, atol=1e-10)
        np.testing.assert_allclose(_wrap(np.asarray(d2) - d), 0, atol=1e-10)
        assert np.all(np.asarray(d2) > -np.pi) and np.all(np.asarray(d2) <= np.pi)

        # Cartesian -> internal -> Cartesian: the same structure up to a rigid motion
        R, t = _rotation(rng), rng.normal(size=3)
        y = (X @ R.T + t).reshape(16, -1)
        y = y + 0.01 * rng.normal(size=y.shape)  # any structure, not only ones made by the map
        back = internal_to_cartesian(zm, *cartesian_to_internal(zm, jnp.asarray(y)))
        np.testing.assert_allclose(_pairwise(back), _pairwise(y), rtol=0, atol=1e-10)


def test_log_det_is_the_rigid_motion_jacobian(mol):
    """d^3N x = d^3t dR(Haar) J(q) dq: autodiff of (q, t, w) -> exp([w]x) X(q) + t at the identity."""
    _, zm, xmin, _ = mol
    rng = np.random.default_rng(1)
    with jax.enable_x64(True):
        b, a, d = _perturbed_ic(zm, xmin, rng, 2)

        def embed(q):
            return internal_to_cartesian(zm, *zm.split(q[None]))[0].reshape(-1, 3)

        got = _rigid_jacobian_logdet(embed, jnp.asarray(np.concatenate([b, a, d], axis=1)))
        expected = np.asarray(log_det_jacobian(jnp.asarray(b), jnp.asarray(a)))
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-8)


# ---- the layer ---------------------------------------------------------------------------------------------------


def _latent(layer, rng, n, dtype):
    circ = layer.circular_mask
    z = np.where(circ, rng.uniform(-np.pi, np.pi, (n, layer.latent_dim)), rng.normal(size=(n, layer.latent_dim)))
    return jnp.asarray(z, dtype)


def test_layer_layout_and_no_trainable_parameters(mol):
    m, zm, xmin, layer = mol
    assert layer.latent_dim == 3 * m.n_atoms - 6 and layer.data_dim == 3 * m.n_atoms
    assert layer.out_dim(layer.latent_dim) == layer.data_dim
    assert layer.names == zm.names and layer.circular_indices == np.flatnonzero(zm.circular_mask).tolist()
    s = layer.slices
    assert [s["bonds"].stop, s["angles"].stop, s["dihedrals"].stop] == [zm.n_bonds, zm.n_bonds + zm.n_angles,
                                                                          layer.latent_dim]
    assert jax.tree.leaves(eqx.filter(layer, eqx.is_inexact_array)) == []
    np.testing.assert_array_equal(layer.reference_positions, xmin)
    # the minimum is z = 0, in any orientation
    R = _rotation(np.random.default_rng(2))
    z0, _ = layer.inverse(jnp.asarray((xmin @ R.T + 1.0).reshape(1, -1), jnp.float32))
    assert float(jnp.abs(z0).max()) < 1e-2
    with pytest.raises(BoltzflowError, match="internal coordinates"):
        layer.out_dim(layer.data_dim)
    with pytest.raises(BoltzflowError, match="reference structure"):
        InternalCoordinates(zm)


def test_layer_default_reference_is_the_energy_minimum(aldp):
    m, _, xmin, _ = aldp
    layer = InternalCoordinates(m)
    np.testing.assert_allclose(layer.reference_positions, xmin, atol=1e-6)


def test_layer_round_trip_and_log_det_float64(mol):
    _, _, _, layer = mol
    rng = np.random.default_rng(3)
    with jax.enable_x64(True):
        z = _latent(layer, rng, 8, jnp.float64)
        x, ds = jax.jit(layer.forward)(z)
        assert x.dtype == ds.dtype == jnp.float64 and x.shape == (8, layer.data_dim) and ds.shape == (8,)
        # any orientation and position maps back to the same z
        X = np.asarray(x).reshape(8, -1, 3)
        R, t = _rotation(rng), rng.normal(size=3)
        z2, ds_inv = jax.jit(layer.inverse)(jnp.asarray((X @ R.T + t).reshape(8, -1)))
        np.testing.assert_allclose(ds_inv, -ds, rtol=0, atol=1e-10)
        circ = layer.circular_mask
        err = np.where(circ, _wrap(np.asarray(z2) - np.asarray(z)), np.asarray(z2) - np.asarray(z))
        assert np.abs(err).max() < 1e-10
        assert np.all(np.asarray(z2)[:, circ] >= -np.pi) and np.all(np.asarray(z2)[:, circ] < np.pi)
        # dS (normalisation included) is the full Jacobian of (z, t, w) -> exp([w]x) X(q0 + s z) + t
        got = _rigid_jacobian_logdet(lambda zz: layer.forward(zz[None])[0][0].reshape(-1, 3), z[:2])
        np.testing.assert_allclose(got, ds[:2], rtol=0, atol=1e-8)


def test_layer_float32_under_jit(mol):
    _, _, _, layer = mol
    z = _latent(layer, np.random.default_rng(4), 64, jnp.float32)
    x, ds = jax.jit(layer.forward)(z)
    z2, ds_inv = jax.jit(layer.inverse)(x)
    assert x.dtype == ds.dtype == z2.dtype == jnp.float32
    assert bool(jnp.all(jnp.isfinite(x))) and bool(jnp.all(jnp.isfinite(ds)))
    err = jnp.where(jnp.asarray(layer.circular_mask), (z2 - z + jnp.pi) % (2 * jnp.pi) - jnp.pi, z2 - z)
    assert float(jnp.abs(err).max()) < 1e-4  # float32: ~1e-5 measured (1e-8 nm on the 0.005 nm bond scale)
    np.testing.assert_allclose(ds_inv, -ds, rtol=1e-5)


def test_flow_with_internal_coordinates_layer_has_the_data_dimension(aldp):
    m, _, xmin, layer = aldp
    nsf = make_nsf(jax.random.key(0), layer.latent_dim, n_layers=2, circular=layer.circular_mask, hidden=16)
    flow = Flow(nsf.base, nsf.layers + (layer,))
    assert flow.base.dim == layer.latent_dim and flow.dim == 3 * m.n_atoms

    plain = Flow(StandardBase(layer.latent_dim, layer.circular_mask), (layer,))
    xm = jnp.asarray(xmin.reshape(1, -1), jnp.float32)

    @eqx.filter_jit
    def run(flow, plain, key):
        x, log_q = flow.sample_and_log_prob(key, 32)
        return x, log_q, flow.log_prob(x), plain.log_prob(xm)

    x, log_q, log_q2, log_q_plain = run(flow, plain, jax.random.key(1))
    assert x.shape == (32, 3 * m.n_atoms) and bool(jnp.all(jnp.isfinite(log_q)))
    np.testing.assert_allclose(log_q2, log_q, rtol=1e-4, atol=1e-2)
    # a plain base + the layer: log q(x) = log q0(z) + dS_inv, z = 0 at the minimum
    circ = layer.circular_mask
    log_q0 = -0.5 * (~circ).sum() * np.log(2 * np.pi) - circ.sum() * np.log(2 * np.pi)
    b, a, _ = cartesian_to_internal(layer.zmatrix, xmin.reshape(1, -1))
    expected = log_q0 - float(log_det_jacobian(b, a)[0]) - layer.log_scale
    assert abs(float(log_q_plain[0]) - expected) < 1e-2
    with pytest.raises(BoltzflowError, match="x must have shape"):
        flow.log_prob(jnp.zeros((2, layer.latent_dim)))
    with pytest.raises(BoltzflowError, match="z must have shape"):
        flow.forward(jnp.zeros((2, flow.dim)))


# ---- chirality -----------------------------------------------------------------------------------------------------


def test_chirality_alanine_dipeptide_rejects_the_d_form(aldp):
    m, _, xmin, layer = aldp
    assert [c for c, _ in find_stereocentres(m.n_atoms, m.bonds, m.elements)] == [8]
    chir = Chirality.from_system(m, xmin)
    assert chir.centres.tolist() == [8]
    rng = np.random.default_rng(5)
    R = _rotation(rng)
    l_forms = np.stack([xmin, xmin @ R.T + 2.0]).reshape(2, -1)
    d_forms = -l_forms  # mirror images
    x = jnp.asarray(np.concatenate([l_forms, d_forms]), jnp.float32)
    assert jax.jit(chir.mask)(x).tolist() == [True, True, False, False]
    # samples of an internal-coordinate layer are L whatever their dihedrals; a flipped improper makes them D
    z = _latent(layer, rng, 16, jnp.float32)
    forward = jax.jit(layer.forward)
    assert bool(jnp.all(chir.mask(forward(z)[0])))
    z_flip = z
    for name in ("dihedral CB:10-CA:8-N:6-C:14", "dihedral HA:9-CA:8-N:6-C:14"):  # mirror CB, HA in N-CA-C
        i = layer.names.index(name)
        z_flip = z_flip.at[:, i].set(_wrap(-2 * layer.reference_ic[i]) / layer.scales[i])
    assert not bool(jnp.any(chir.mask(forward(z_flip)[0])))


def test_chirality_of_a_molecule_without_stereocentres():
    m = _molecule("toluene")[0]
    chir = Chirality.from_system(m)
    assert chir.centres.size == 0
    x = jnp.asarray(np.stack([m.positions, -m.positions]).reshape(2, -1))
    assert chir.mask(x).tolist() == [True, True]
