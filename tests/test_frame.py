"""The target's own axes from its Hessians (boltzflow.frame), and the fixed rotation layer that uses them."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.stats import multivariate_normal

from boltzflow.autoflow import AutoSettings, resolve
from boltzflow.errors import BoltzflowError
from boltzflow.flows import make_flow
from boltzflow.flows.standardize import Standardize
from boltzflow.frame import hessian_frame
from boltzflow.targets import FunctionTarget, make_target, random_rotation


def _points(dim, n=128, seed=0):
    return np.random.default_rng(seed).standard_normal((n, dim)) * 1.5


def test_the_frame_of_a_rotated_many_well_is_its_double_well_axes():
    """The Many Well's log p is a sum over coordinates, so in the rotated target every Hessian is
    Q diag(g) Q^T (boltzflow.frame's module docstring). The double-well directions have curvature that varies
    from point to point, hence distinct eigenvalues in a random combination: each must be found to 4 digits. The
    Gaussian directions all have curvature -1 everywhere and may come out mixed among themselves (p is isotropic
    there)."""
    dim, seed = 8, 3
    target = make_target({"name": "many_well", "dim": dim, "rotation": seed})
    q_true = random_rotation(dim, seed)  # log p_Q(x) = log p(x Q): inner coordinate i is x . Q[:, i]
    frame = hessian_frame(target.log_prob, _points(dim), jax.random.key(0))
    assert frame.rotated and frame.off_diagonal < 1e-6 < 0.3 < frame.off_diagonal_axes
    np.testing.assert_allclose(frame.rotation.T @ frame.rotation, np.eye(dim), atol=1e-12)
    overlap = np.abs(q_true.T @ frame.rotation).max(axis=1)
    double_well = np.arange(0, dim, 2)
    assert np.all(overlap[double_well] > 1 - 1e-4), overlap
    # the Gaussian directions span the same subspace as the true ones (projection onto it is complete)
    gauss = q_true[:, 1::2]
    found = frame.rotation[:, np.argsort(-np.abs(gauss.T @ frame.rotation).sum(0))[: dim // 2]]
    np.testing.assert_allclose(np.linalg.svd(gauss.T @ found, compute_uv=False), 1.0, atol=1e-4)


def test_an_axis_aligned_target_keeps_its_axes():
    target = make_target({"name": "many_well", "dim": 8})
    frame = hessian_frame(target.log_prob, _points(8), jax.random.key(0))
    assert not frame.rotated and frame.off_diagonal == frame.off_diagonal_axes < 1e-12
    assert np.array_equal(frame.rotation, np.eye(8))


def test_the_frame_of_a_correlated_gaussian_is_its_principal_axes():
    rng = np.random.default_rng(1)
    q = np.linalg.qr(rng.standard_normal((4, 4)))[0]
    prec = q @ np.diag([0.25, 1.0, 4.0, 9.0]) @ q.T
    target = FunctionTarget(lambda x: -0.5 * jnp.einsum("ni,ij,nj->n", x, jnp.asarray(prec, jnp.float32), x), 4)
    frame = hessian_frame(target.log_prob, _points(4, 16), jax.random.key(2))
    assert frame.off_diagonal < 1e-10
    overlap = np.abs(q.T @ frame.rotation)
    assert np.all(overlap.max(axis=1) > 1 - 1e-6), overlap


def test_a_target_that_is_not_separable_gets_an_orthogonal_frame_and_a_score_in_0_1():
    target = make_target("gmm40")
    frame = hessian_frame(target.log_prob, _points(2, 64) * 20, jax.random.key(0), min_gain=0.0)
    np.testing.assert_allclose(frame.rotation.T @ frame.rotation, np.eye(2), atol=1e-12)
    assert 0.0 <= frame.off_diagonal <= frame.off_diagonal_axes <= 1.0
    with pytest.raises(BoltzflowError, match="at least 2 points"):
        hessian_frame(target.log_prob, np.zeros((1, 2)), jax.random.key(0))


@pytest.mark.parametrize("rotation", ["orthogonal", "general"])
def test_the_rotated_standardize_layer_inverts_and_its_log_det_is_the_jacobian(rotation):
    rng = np.random.default_rng(0)
    r = np.linalg.qr(rng.standard_normal((3, 3)))[0] if rotation == "orthogonal" else rng.standard_normal((3, 3))
    layer = Standardize(3, [1.0, -2.0, 0.5], [0.5, 2.0, 3.0], r)
    y = jnp.asarray(rng.standard_normal((5, 3)), jnp.float32)
    x, ld = layer.forward(y)
    np.testing.assert_allclose(np.asarray(x), np.array([1.0, -2.0, 0.5]) + (np.asarray(y) * [0.5, 2.0, 3.0]) @ r.T,
                               rtol=1e-5, atol=1e-5)
    back, ld_inv = layer.inverse(x)
    np.testing.assert_allclose(np.asarray(back), np.asarray(y), atol=1e-4)
    jac = jax.jacfwd(lambda v: layer.forward(v[None])[0][0])(y[0])
    np.testing.assert_allclose(float(ld[0]), np.linalg.slogdet(np.asarray(jac, np.float64))[1], atol=1e-5)
    np.testing.assert_allclose(np.asarray(ld_inv), -np.asarray(ld))
    with pytest.raises(BoltzflowError, match="invertible"):
        Standardize(2, 0.0, 1.0, [[1.0, 2.0], [2.0, 4.0]])


def test_an_auto_flow_on_a_rotated_target_starts_as_the_gaussian_in_the_targets_frame():
    """With bounds, the frame is read at points of the box; the new flow (identity layers) is then exactly
    N(loc, R diag(scale^2) R^T), whose density we compare with scipy's."""
    dim = 4
    target = make_target({"name": "many_well", "dim": dim, "rotation": 1})
    chosen, report = resolve(AutoSettings(bounds=[-3.0, 3.0]), target, jax.random.key(0))
    s = chosen.settings
    assert report["frame"]["rotated"] and report["frame"]["off_diagonal"] < 1e-6
    r = np.asarray(s.rotation)
    np.testing.assert_allclose(s.scale, 1.0, atol=1e-6)  # a cube's std is the same along every axis
    flow = make_flow(chosen, jax.random.key(1), dim)
    x = jnp.asarray(_points(dim, 16), jnp.float32)
    cov = r @ np.diag(np.asarray(s.scale) ** 2) @ r.T
    np.testing.assert_allclose(np.asarray(flow.log_prob(x)),
                               multivariate_normal(np.asarray(s.loc), cov).logpdf(np.asarray(x)), atol=1e-4)
    axes, report = resolve(AutoSettings(bounds=[-3.0, 3.0], frame="axes"), target, jax.random.key(0))
    assert axes.settings.rotation is None and "frame" not in report
