"""The E(n)-equivariant augmented coupling flow (boltzflow.flows.equivariant): equivariance of samples and
invariance of log q and of the path weights under rotations, reflections, translations and permutations; exact
inverses and log-determinants; unbiased log Z of a permutation-symmetric Gaussian; FAB's AIS below the layer that
drops the augmented points."""

import functools

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from boltzflow.errors import BoltzflowError
from boltzflow.flows.base import Flow
from boltzflow.flows.builders import make_eacf, make_flow
from boltzflow.flows.equivariant import orthonormal_frame, pack, unpack
from boltzflow.flows.paths import model_space, path_weights, samples_below_last
from boltzflow.targets.particles import ParticleTarget, dw4, lj13, random_rotation


def _random_flow(target, key, n_layers=2, noise=0.05, dtype=jnp.float32, angular=False):
    """An E-ACF flow with every parameter perturbed (a new flow is the identity, which would test nothing)."""
    flow = make_eacf(key, target.dim, target.particles, n_layers=n_layers, hidden=16, blocks=2, dtype=dtype,
                     angular=angular)
    params, static = eqx.partition(flow, eqx.is_inexact_array)
    leaves, tree = jax.tree_util.tree_flatten(params)
    keys = jax.random.split(jax.random.fold_in(key, 1), len(leaves))
    leaves = [p + noise * jax.random.normal(k, p.shape, p.dtype) for p, k in zip(leaves, keys)]
    return eqx.combine(jax.tree_util.tree_unflatten(tree, leaves), static)


def _act(target, z, rotation, perm, shift):
    """The joint vector of the configuration (X, A) rotated (or reflected), permuted and translated (the centre
    of mass of X then removed again, with A moved along, as the target's coordinates do)."""
    x, a_centred, centre = unpack(z, target.n_particles, target.spatial_dim)
    x, a = (x @ rotation.T)[:, perm] + shift, ((a_centred + centre) @ rotation.T)[:, perm] + shift
    com = jnp.mean(x, axis=1, keepdims=True)
    return pack(target.coordinates(x - com), None, a - com)


_forward = eqx.filter_jit(lambda model, z: model.forward(z))
_inverse = eqx.filter_jit(lambda model, z: model.inverse(z))
_act_jit = eqx.filter_jit(_act)


@eqx.filter_jit
def _invariants(flow, z, x):
    """What must not change when (z, x) move together: the base density of z, log q of the coupling layers at x,
    and the augmented target's log pi(A | y) of the last layer at x (one compilation, not one per operation)."""
    inner = Flow(flow.base, flow.layers[:-1])
    return inner.base.log_prob(z), inner.log_prob(x), flow.layers[-1].forward(x)[1]


@functools.partial(jax.jit, static_argnums=(1, 2, 3))
def _symmetry(key, d, n, reflect):
    kr, kp, kt = jax.random.split(key, 3)
    rotation = random_rotation(kr, d)
    if reflect:
        rotation = rotation.at[:, 0].multiply(-1.0)
    return rotation, jax.random.permutation(kp, n), jax.random.normal(kt, (1, 1, d))


def test_frame_is_orthonormal_and_equivariant_under_orthogonal_maps():
    v = jax.random.normal(jax.random.key(0), (3, 3))
    q, r = orthonormal_frame(v)
    np.testing.assert_allclose(q.T @ q, np.eye(3), atol=1e-6)
    assert float(jnp.dot(q[:, 0], v[0])) > 0
    np.testing.assert_allclose(r[0], jnp.linalg.norm(v[0]), rtol=1e-6)  # |R_11| = |v_1|
    for reflect in (False, True):
        rotation = _symmetry(jax.random.key(1), 3, 3, reflect)[0]
        q2, r2 = orthonormal_frame(v @ rotation.T)
        np.testing.assert_allclose(q2, rotation @ q, atol=1e-5)
        np.testing.assert_allclose(r2, r, rtol=1e-5)


# the angular spline (an option no preset uses) in the long run only
@pytest.mark.parametrize("make, angular", [(dw4, False), (lj13, False), pytest.param(dw4, True, marks=pytest.mark.slow),
                                           pytest.param(lj13, True, marks=pytest.mark.slow)])
def test_layers_are_equivariant_and_log_q_invariant(make, angular):
    """Rotating (or reflecting), permuting and translating the input of the coupling layers moves their output the
    same way and leaves log|det| unchanged; the base density and the path weights are invariant too: to 1e-8 in
    float64, to float32 rounding in float32 (ill-determined frames scale isotropically, so they amplify none)."""
    for x64 in (True, False):
        with jax.enable_x64(x64):
            dtype = jnp.float64 if x64 else jnp.float32
            target = make()
            n, d = target.n_particles, target.spatial_dim
            flow = _random_flow(target, jax.random.key(0), dtype=dtype, angular=angular)
            inner = Flow(flow.base, flow.layers[:-1])
            z = inner.base.sample(jax.random.key(1), 256)
            out, log_det = _forward(inner, z)
            assert float(jnp.std(out - z)) > 1e-2  # the perturbed flow is far from the identity
            expected = _invariants(flow, z, out)
            for k, reflect in enumerate((False, True, False)):
                rotation, perm, shift = _symmetry(jax.random.key(10 + k), d, n, reflect)
                rotation, shift = rotation.astype(dtype), shift.astype(dtype)
                zt, moved = _act_jit(target, z, rotation, perm, shift), _act_jit(target, out, rotation, perm, shift)
                out_t, log_det_t = _forward(inner, zt)
                err = np.max(np.abs(np.asarray(out_t - moved)), axis=1)
                assert err.max() < (1e-8 if x64 else 1e-4), err.max()
                tol = dict(rtol=1e-10, atol=1e-9) if x64 else dict(rtol=1e-5, atol=1e-3)
                np.testing.assert_allclose(log_det_t, log_det, **tol)
                # the base density, log q and the augmented target's log pi(A | y): moved paths, the same weights
                for got, want in zip(_invariants(flow, zt, moved), expected):
                    np.testing.assert_allclose(got, want, **tol)


# the angular spline (an option no preset uses) in the long run only
@pytest.mark.parametrize("make, angular", [(dw4, False), (lj13, False), pytest.param(dw4, True, marks=pytest.mark.slow),
                                           pytest.param(lj13, True, marks=pytest.mark.slow)])
def test_inverse_and_log_det_are_exact(make, angular):
    """float64: the inverse undoes the forward and log|det| equals autodiff's; float32: forward and inverse agree
    to rounding (the frames are built from the same floats both ways)."""
    with jax.enable_x64(True):
        target = make()
        flow = _random_flow(target, jax.random.key(2), dtype=jnp.float64, angular=angular)
        inner = Flow(flow.base, flow.layers[:-1])
        z = inner.base.sample(jax.random.key(3), 8)
        out, log_det = _forward(inner, z)
        back, log_det_inv = _inverse(inner, out)
        np.testing.assert_allclose(back, z, atol=1e-9)
        np.testing.assert_allclose(log_det_inv, -log_det, atol=1e-9)
        jac = eqx.filter_jit(jax.vmap(jax.jacfwd(lambda v: inner.forward(v[None])[0][0])))(z[:3])
        np.testing.assert_allclose(jnp.linalg.slogdet(jac)[1], log_det[:3], atol=1e-8)
    flow = _random_flow(target, jax.random.key(2), n_layers=4, angular=angular)  # errors compounding through layers
    inner = Flow(flow.base, flow.layers[:-1])
    z = inner.base.sample(jax.random.key(3), 1000)
    out, log_det = _forward(inner, z)
    back, log_det_inv = _inverse(inner, out)
    assert float(jnp.max(jnp.abs(back - z))) < 1e-4 and float(jnp.max(jnp.abs(log_det + log_det_inv))) < 1e-4


class Harmonic(ParticleTarget):
    """E = (k / 2) sum_i |x_i - mean x|^2 = (k / 2) |y|^2: log Z = ((N - 1) d / 2) log(2 pi / k), and every
    rotation and permutation leaves it invariant."""

    def __init__(self, n, d, k):
        super().__init__(n, d)
        self.k = k
        self.log_z = 0.5 * self.dim * np.log(2 * np.pi / k)

    @property
    def spacing(self):
        return 1.0

    def energy_of_positions(self, positions):
        centred = positions - jnp.mean(positions, axis=1, keepdims=True)
        return 0.5 * self.k * jnp.sum(centred * centred, axis=(1, 2))


def test_log_z_of_a_permutation_symmetric_gaussian_is_unbiased():
    """Importance sampling with the augmented path weights p(y) pi(A | y) / q(y, A) of a perturbed flow: log Z
    within 4 standard errors (delta method) of the exact value, on 4 independent draws."""
    target = Harmonic(5, 3, 4.0)  # std 1/2 per coordinate, as the base's
    flow = _random_flow(target, jax.random.key(4), noise=0.02)
    draw = jax.jit(lambda k: path_weights(flow, target, k, 20_000)[1])
    for s in range(4):
        log_w = np.asarray(draw(jax.random.key(100 + s)), np.float64)
        w = np.exp(log_w - log_w.max())
        est = np.log(w.mean()) + log_w.max()
        stderr = w.std() / w.mean() / np.sqrt(len(w))
        ess = w.sum() ** 2 / (w * w).sum() / len(w)
        assert 0.05 < ess < 0.99  # the flow is neither the target nor useless
        assert abs(est - target.log_z) < 4 * stderr + 1e-3, (est, target.log_z, stderr)


def test_fab_runs_below_the_layer_that_drops_the_augmented_points():
    """The space FAB's AIS uses: the joint points [y, b, c], q the flow below DropAugmented, and the pulled-back
    target log p(y) + log pi(A | y); no from_x (augmented points are drawn, not a function of y)."""
    target = dw4()
    flow = _random_flow(target, jax.random.key(5))
    assert flow.stochastic and samples_below_last(flow) and flow.dim == target.dim
    space = model_space(flow, target)
    z, log_q = space.sample_and_log_q(flow, jax.random.key(6), 16)
    assert z.shape == (16, flow.base.dim) and space.from_x is None
    y = space.to_x(z)
    x, a_centred, centre = unpack(z, 4, 2)
    eta = flow.layers[-1].scale  # log pi(A | y) = log N(A; X, eta^2 I), written out
    r = np.asarray(a_centred + centre - x, np.float64) / eta
    log_pi = -0.5 * np.sum(r**2, axis=(1, 2)) - 8 * (np.log(eta) + 0.5 * np.log(2 * np.pi))
    np.testing.assert_allclose(flow.layers[-1].forward(z)[1], log_pi, rtol=1e-5)
    np.testing.assert_allclose(space.log_p(z), target.log_prob(y) + log_pi, rtol=1e-6)
    np.testing.assert_allclose(space.log_q(flow, z), log_q, rtol=1e-5, atol=1e-4)
    # the same weights as the model's paths
    _, log_w, _ = path_weights(flow, target, jax.random.key(6), 16)
    np.testing.assert_allclose(log_w, space.log_p(z) - log_q, rtol=1e-5, atol=1e-3)


def test_eacf_needs_a_particle_target_and_matching_sizes():
    with pytest.raises(BoltzflowError, match="particle targets"):
        make_flow({"type": "eacf"}, jax.random.key(0), 6)
    with pytest.raises(BoltzflowError, match="coordinates"):
        make_eacf(jax.random.key(0), 7, (4, 2, 1.0))
