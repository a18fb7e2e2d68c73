"""log q in the canonical-frame convention of the FAB paper (CA at the origin, N on +x, C in the xy plane) against
boltzflow's Cartesian one (uniform orientation): boltzflow.molecules.metrics.frame_log_jacobian and the report's
``mean_log_q_reference_frame``."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

pytest.importorskip("openmm", reason="molecular tests need OpenMM (pip install 'boltzflow[molecules]')")

from boltzflow.flows import InternalCoordinates  # noqa: E402
from boltzflow.molecules.metrics import frame_log_jacobian, named_torsions  # noqa: E402
from boltzflow.molecules.reference import builtin_reference, load_reference  # noqa: E402
from boltzflow.molecules.system import load_system  # noqa: E402
from boltzflow.molecules.zmatrix import ZMatrix  # noqa: E402
from boltzflow.targets.report import ModelSamples  # noqa: E402


@pytest.fixture(scope="module")
def aldp():
    return load_system("aldp_implicit")


def _fab_frame(aldp):
    """(CA, N, C) of alanine dipeptide from its phi = C' - N - CA - C (fab-torch: cart_indices [8, 6, 14])."""
    _, n, ca, c = named_torsions(aldp)["phi"]
    return ca, n, c


def _frame_coordinates(x, atoms):
    """The 3N - 6 free coordinates of one conformation x (3N,) in the frame of atoms (o, a, p): o moved to the
    origin, a rotated onto +x, p into the xy plane with y > 0; a's x, p's x and y, then every other atom's xyz."""
    o, a, p = atoms
    X = x.reshape(-1, 3)
    e1 = X[a] - X[o]
    e1 = e1 / jnp.linalg.norm(e1)
    e3 = jnp.cross(e1, X[p] - X[o])
    e3 = e3 / jnp.linalg.norm(e3)
    e2 = jnp.cross(e3, e1)
    Y = (X - X[o]) @ jnp.stack([e1, e2, e3], axis=1)  # rows: atoms in the frame's axes
    others = np.setdiff1d(np.arange(X.shape[0]), atoms)
    return jnp.concatenate([Y[a, :1], Y[p, :2], Y[others].reshape(-1)])


@pytest.mark.parametrize("root", [None, 1], ids=["frame_CA_N_C", "frame_from_ACE_methyl"])
def test_frame_log_jacobian_is_the_density_change_to_the_canonical_frame(aldp, root):
    """A flow made of the internal-coordinate layer on a standard normal z: its log q(x) (boltzflow's convention)
    plus frame_log_jacobian must equal the log density of the canonical-frame coordinates y, found from
    log q_z(z) - log|det dy/dz| by automatic differentiation (the map z -> y is R^60 -> R^60). With root=1 the
    layer's own frame starts at the ACE methyl carbon, not at CA, so y is a re-canonicalisation of x."""
    zm = ZMatrix.from_system(aldp, root=root)
    frame = _fab_frame(aldp)
    assert (root is None) == (tuple(zm.order[:3]) == frame)  # the default Z-matrix frame is FAB's CA, N, C
    with jax.enable_x64(True):
        layer = InternalCoordinates(zm, reference=aldp.positions)
        z = jnp.asarray(0.5 * np.random.default_rng(0).standard_normal((4, layer.latent_dim)))
        log_q_z = -0.5 * jnp.sum(z ** 2, axis=-1) - 0.5 * layer.latent_dim * np.log(2 * np.pi)
        x, log_det = layer.forward(z)
        log_q = np.asarray(log_q_z - log_det)
        assert x.dtype == jnp.float64

        def y_of_z(z1):
            return _frame_coordinates(layer.forward(z1[None])[0][0], frame)

        jac = jax.vmap(jax.jacfwd(y_of_z))(z)
        assert jac.shape == (4, 60, 60)
        sign, log_abs_det = jnp.linalg.slogdet(jac)
        assert np.all(np.asarray(sign) != 0)
        log_q_frame = np.asarray(log_q_z - log_abs_det)
    term = frame_log_jacobian(np.asarray(x), frame)
    np.testing.assert_allclose(log_q + term, log_q_frame, rtol=0, atol=1e-8)
    assert np.all(term < -5)  # nm: b1^2 b2 sin a ~ 0.15^3 nm^3, so the check is not vacuous


def test_frame_log_jacobian_on_the_shipped_reference(aldp):
    """Against the formula written out, and its mean over alanine dipeptide's 300 K reference (48,000
    conformations): -5.7819 nats."""
    x = load_reference(builtin_reference("aldp_implicit", 300.0))["x"]
    ca, n, c = _fab_frame(aldp)
    term = frame_log_jacobian(x, (ca, n, c))
    X = x[:1000].astype(np.float64).reshape(-1, 22, 3)
    u, v = X[:, n] - X[:, ca], X[:, c] - X[:, ca]
    b1, b2 = np.linalg.norm(u, axis=1), np.linalg.norm(v, axis=1)
    angle = np.arccos(np.sum(u * v, axis=1) / (b1 * b2))
    np.testing.assert_allclose(term[:1000], np.log(b1 ** 2 * b2 * np.sin(angle)), rtol=0, atol=1e-10)
    assert term.dtype == np.float64 and term.shape == (len(x),)
    assert abs(term.mean() + 5.7819) < 5e-4


def test_report_has_the_frame_convention_beside_the_cartesian_one(tmp_path):
    """MoleculeTarget.metrics on a small reference: mean_log_q_reference_frame - mean_log_q_reference is the mean
    frame term over the reference; mean_log_p_reference is E_ref[log p~] less the weights' log Z (here 2.5: all
    log weights 2.5), on both scales, and forward_kl_reference its distance from mean_log_q_reference."""
    from boltzflow.estimators import WeightSums
    from boltzflow.targets import make_target

    x = load_reference(builtin_reference("aldp_implicit", 300.0))["x"][::960]  # 50 conformations
    np.savez(tmp_path / "ref.npz", x=x)
    target = make_target({"name": "aldp_implicit", "reference": str(tmp_path / "ref.npz")})
    angles = np.stack([np.zeros(20, np.float32)] * len(target.torsions), axis=1)
    kept = {"angles": angles, "chiral": np.ones(20, bool), "log_w": np.zeros(20),
            "pose_rmsd": np.zeros((20, 0), np.float32)}
    samples = ModelSamples(n=20, chunk=20, weights=WeightSums.of(jnp.full(20, 2.5)), kept=kept,
                           log_q=lambda v: -jnp.sum(v ** 2, axis=-1), key=jax.random.key(0),
                           reference_key=jax.random.key(1))
    report = target.metrics(samples)
    _, n, ca, c = target.torsions["phi"]
    expected = np.mean(frame_log_jacobian(x, (ca, n, c)))
    assert np.isfinite(report["mean_log_q_reference"])
    np.testing.assert_allclose(report["mean_log_q_reference_frame"] - report["mean_log_q_reference"], expected,
                               rtol=0, atol=1e-4)
    assert -5.9 < expected < -5.6
    log_p = np.mean(np.asarray(target.log_prob(jnp.asarray(x)), np.float64))
    np.testing.assert_allclose(report["mean_log_p_reference"], log_p - 2.5, rtol=1e-6)
    np.testing.assert_allclose(report["mean_log_p_reference_frame"] - report["mean_log_p_reference"], expected,
                               rtol=0, atol=1e-4)
    np.testing.assert_allclose(report["forward_kl_reference"],
                               report["mean_log_p_reference"] - report["mean_log_q_reference"], rtol=1e-12)
