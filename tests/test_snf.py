"""Stochastic normalizing flows: exactness of path weights, equilibrium, log Z, backward paths, training."""

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from boltzflow.errors import BoltzflowError
from boltzflow.estimators import log_z_estimate
from boltzflow.flows import LULinear, make_flow
from boltzflow.flows.distributions import StandardBase
from boltzflow.flows.paths import backward_path, backward_log_q, path_weights
from boltzflow.settings import parse
from boltzflow.snf import SNFSettings, StochasticBlock, blocks_only_snf
from boltzflow.snf import make_snf as _make_snf
from boltzflow.targets.base import Target
from conftest import make_method


def make_snf(spec, key, target):
    spec = {k: v for k, v in spec.items() if k != "type"}
    return _make_snf(parse(SNFSettings, spec, "flow (snf)"), key, target)


def backward_log_weights(model, target, x, key):
    z, lq, _ = backward_path(model, x, key)
    return z, target.log_prob(x) - lq


class Gaussian(Target):
    """exp(c) N(mu, s^2 I): log Z = c (normalised density times e^c); exact samples."""

    def __init__(self, dim=2, mu=0.0, s=1.0, c=0.0):
        self.dim, self.mu, self.s, self.c = dim, mu, s, c
        self.log_z = c
        self.name = "gauss"

    def _log_prob(self, x):
        return (self.c - 0.5 * jnp.sum(((x - self.mu) / self.s) ** 2, -1)
                - self.dim * (0.5 * math.log(2 * math.pi) + math.log(self.s)))

    def sample(self, key, n):
        return self.mu + self.s * jax.random.normal(key, (n, self.dim))


def within(est, se, truth, k=3.0):
    """|est - truth| < k se: for an asymptotically normal estimate with its sample standard error, k = 3 is a
    two-sided p ~ 2.7e-3 per assertion (seeds are fixed, so a pass is reproducible). The 1e-6 is float32 round-off
    for estimates whose se is 0 up to round-off (exact weights)."""
    assert abs(float(est) - truth) < k * float(se) + 1e-6, (float(est), float(se), truth)


@pytest.mark.parametrize("kernel", ["metropolis", "hmc"])
def test_target_equal_prior_gives_unit_weights(kernel):
    prior = StandardBase(2)
    snf = blocks_only_snf(prior, Gaussian(), n_blocks=2, kernel=kernel, step_size=0.5, n_steps=2)
    x, log_w, _ = jax.jit(lambda k: path_weights(snf, Gaussian(), k, 512))(jax.random.key(0))
    assert x.shape == (512, 2) and log_w.shape == (512,)
    np.testing.assert_allclose(log_w, 0.0, atol=1e-4)
    _, log_wb = backward_log_weights(snf, Gaussian(), x, jax.random.key(1))
    np.testing.assert_allclose(log_wb, 0.0, atol=1e-4)


def test_metropolis_dS_at_equilibrium_averages_to_zero():
    """x ~ pi_lambda exactly (Gaussian), one MH move: E[dS] = E[log pi(x) - log pi(x')] = 0 (reversibility)."""
    lam, mu, s = 0.5, 1.0, 0.5
    target = Gaussian(mu=mu, s=s)
    prec = (1 - lam) + lam / s**2
    m = lam * mu / s**2 / prec
    x = m + jax.random.normal(jax.random.key(0), (40_000, 2)) / math.sqrt(prec)
    for step in (0.8, (0.3, 1.5)):  # one step, and one per dimension
        block = StochasticBlock("metropolis", StandardBase(2), target, lam, step, n_steps=1)
        y, ds = eqx.filter_jit(lambda b, x, k: b.forward(x, k))(block, x, jax.random.key(1))
        assert float(jnp.mean(jnp.any(y != x, -1))) > 0.2  # moves happen
        se = jnp.std(ds) / math.sqrt(ds.shape[0])
        within(jnp.mean(ds), se, 0.0)
    # per dimension, each dimension moves by its own scale
    block = StochasticBlock("metropolis", StandardBase(2), target, lam, (0.01, 1.0), n_steps=1)
    y = eqx.filter_jit(lambda b, x, k: b.forward(x, k))(block, x[:4000], jax.random.key(2))[0]
    moved = np.abs(np.asarray(y - x[:4000]))
    assert moved[:, 0].max() < 0.1 < moved[:, 1].max()
    with pytest.raises(BoltzflowError, match="needs 2 values"):
        StochasticBlock("metropolis", StandardBase(2), target, lam, (0.1, 0.2, 0.3))


@pytest.mark.parametrize("kernel, step_size", [("ula", 0.2), ("underdamped", 0.2), ("ula", (0.1, 0.3)),
                                               ("metropolis", (0.3, 1.0))])
def test_snf_log_z(kernel, step_size):
    """N(0, 1) prior -> e^c N(1, 0.6^2): logmeanexp(log w) = log Z = c within 3 s.e., with a step size per
    dimension too."""
    target = Gaussian(mu=1.0, s=0.6, c=2.5)
    snf = blocks_only_snf(StandardBase(2), target, n_blocks=4, kernel=kernel, step_size=step_size, n_steps=5)
    assert snf.layers[0].step_size.shape == np.shape(step_size)
    _, log_w, _ = jax.jit(lambda k: path_weights(snf, target, k, 20_000))(jax.random.key(0))
    log_z, se = log_z_estimate(log_w)
    assert float(se) < 0.05  # precise enough for the comparison to have power (and Jensen's se^2 / 2 negligible)
    within(log_z, se, target.log_z)


def test_backward_paths_have_exact_inverse_weights():
    """With p normalised: E_{p P_b}[1 / w(z -> x)] = 1 (checks the backward-path weight formula).

    The target is wider than the prior so that 1 / w (about q / p) has a finite variance."""
    target = Gaussian(mu=0.5, s=1.3)
    snf = blocks_only_snf(StandardBase(2), target, n_blocks=3, kernel="ula", step_size=0.2, n_steps=4)
    x = target.sample(jax.random.key(0), 20_000)
    _, log_w = jax.jit(lambda x, k: backward_log_weights(snf, target, x, k))(x, jax.random.key(1))
    est, se = log_z_estimate(-log_w)
    within(est, se, 0.0)


def _perturbed_realnvp(key, dim=2):
    flow = make_flow({"type": "realnvp", "n_layers": 2, "hidden": 8}, key, dim)
    params, static = eqx.partition(flow, eqx.is_inexact_array)
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(5), len(leaves))
    leaves = [a + 0.3 * jax.random.normal(k, a.shape, a.dtype) for a, k in zip(leaves, keys)]
    return eqx.combine(jax.tree.unflatten(tree, leaves), static)


def test_deterministic_snf_weights_equal_flow_weights():
    target = Gaussian(mu=0.5, s=0.7)
    flow = _perturbed_realnvp(jax.random.key(0))
    key = jax.random.key(1)

    @eqx.filter_jit
    def run(flow, key):
        x, log_w, _ = path_weights(flow, target, key, 256)
        x2, log_q = flow.sample_and_log_prob(key, 256)
        return x, log_w, x2, log_q, backward_log_q(flow, x, key), flow.log_prob(x)

    x, log_w, x2, log_q, lq_back, lq = run(flow, key)
    np.testing.assert_allclose(x, x2, atol=1e-6)
    np.testing.assert_allclose(log_w, target.log_prob(x) - log_q, atol=1e-4)
    np.testing.assert_allclose(lq_back, lq, atol=1e-4)


def test_make_snf_layout_and_errors():
    target = Gaussian()
    snf = make_snf({"type": "snf", "flow": {"type": "realnvp", "n_layers": 4, "hidden": 8},
                    "blocks": {"kernel": "hmc", "n_steps": 2, "every": 2, "n_leapfrog": 3}}, jax.random.key(0), target)
    kinds = ["b" if layer.stochastic else "L" if isinstance(layer, LULinear) else "f" for layer in snf.layers]
    assert kinds == list("ffLbffLb")  # a pair's LU map stays with it (the default lu: true)
    assert [float(layer.lam) for layer in snf.layers if layer.stochastic] == [0.5, 1.0]
    assert snf.stochastic
    ends_on_flow = make_snf({"type": "snf", "flow": {"type": "realnvp", "n_layers": 4, "hidden": 8, "lu": False},
                             "blocks": {"every": 1, "at_start": True, "at_end": False}}, jax.random.key(0), target)
    assert ["b" if layer.stochastic else "f" for layer in ends_on_flow.layers] == list("bfbfbfbf")
    assert [float(layer.lam) for layer in ends_on_flow.layers if layer.stochastic] == [0.0, 0.25, 0.5, 0.75]
    with pytest.raises(TypeError):
        snf.log_prob(jnp.zeros((3, 2)))
    for bad in ({"blocks": {"kernel": "nope"}}, {"blocks": {"kernel": "hmc", "n_leapfrog": 0}},
                {"blocks": {"n_blocks": 0}}, {"foo": 1}, {"blocks": {"step_size": -1.0}},
                {"blocks": {"torsion_step_size": 0.5}},  # no internal coordinates here
                {"flow": {"type": "realnvp", "n_layers": 2}, "blocks": {"torsion_step_size": 0.5}},
                {"blocks": {"torsion_step_size": 0.0}}):
        with pytest.raises(BoltzflowError):
            make_snf({"type": "snf", **bad}, jax.random.key(0), target)


def test_snf_methods_train_step():
    target = Gaussian(mu=1.0, s=0.8)
    snf = make_snf({"type": "snf", "flow": {"type": "realnvp", "n_layers": 2, "hidden": 8},
                    "blocks": {"kernel": "mala", "n_steps": 2, "every": 2, "learn_step_size": True,
                               "learn_lambda": True}}, jax.random.key(0), target)
    opt = optax.adam(1e-2)
    method = make_method("kl_ml", target, opt, ml_weight=0.5)
    opt_state = opt.init(eqx.filter(snf, eqx.is_inexact_array))
    step = eqx.filter_jit(method.step)
    new, opt_state, _, metrics = step(snf, opt_state, method.init(None, snf), jax.random.key(1))
    assert all(np.isfinite(float(metrics[k])) for k in ("loss", "loss_kl", "loss_ml", "ess", "grad_norm"))
    blk_old, blk_new = snf.layers[-1], new.layers[-1]
    assert float(blk_new.log_step) != float(blk_old.log_step)
    assert float(blk_new.raw_lambda) != float(blk_old.raw_lambda)
    assert metrics["block_accept"].shape == (1,) and float(metrics["block_accept"][0]) > 0  # (<= 1 by construction)
    for name in ("reverse_kl", "forward_kl", "alpha2_is"):
        make_method(name, target, opt)
    with pytest.raises(BoltzflowError, match="bogus"):
        make_method("reverse_kl", target, opt, bogus=1)


@pytest.mark.slow
def test_double_well_free_energy_reweighted():
    """RNVP + MC trained briefly by path KL; reweighted F(x1) on [-2, 2] matches quadrature within errors."""
    from boltzflow.targets.wells import DoubleWell, free_energy_x1

    target = DoubleWell()
    snf = make_snf({"type": "snf", "flow": {"type": "realnvp", "n_layers": 2, "hidden": 32},
                    "blocks": {"kernel": "metropolis", "n_steps": 10, "step_size": 0.3}}, jax.random.key(0), target)
    opt = optax.adam(3e-3)
    method = make_method("reverse_kl", target, opt, batch_size=256)
    state = opt.init(eqx.filter(snf, eqx.is_inexact_array))
    step = eqx.filter_jit(method.step)
    for i in range(150):
        snf, state, _, _ = step(snf, state, (), jax.random.key(100 + i))
    x, log_w, _ = jax.jit(lambda k: path_weights(snf, target, k, 50_000))(jax.random.key(7))
    w = np.asarray(jax.nn.softmax(log_w), np.float64)
    edges = np.linspace(-2.0, 2.0, 9)
    idx = np.digitize(np.asarray(x[:, 0]), edges) - 1
    mass = np.array([w[idx == b].sum() for b in range(8)])
    # the delta-method error of each bin's self-normalised mass (boltzflow.estimators)
    se = np.array([np.sqrt(np.sum(w**2 * ((idx == b) - mass[b]) ** 2)) for b in range(8)])
    centres = 0.5 * (edges[1:] + edges[:-1])
    grid = np.linspace(-2.0, 2.0, 4001)
    dens = np.exp(-np.asarray(free_energy_x1(jnp.asarray(grid))))
    exact = np.array([np.trapezoid(dens[(grid >= a) & (grid <= b)], grid[(grid >= a) & (grid <= b)])
                      for a, b in zip(edges[:-1], edges[1:])])
    # 4 delta-method standard errors per bin (two-sided p ~ 6e-5 each, ~5e-4 for the 8 bins together); the
    # self-normalised estimate's bias, of order mass / (n ESS) (ESS ~ 0.11: 1e-8 to 1.2e-4 across the bins), is
    # far below each bin's se (4e-5 to 6e-3)
    assert np.all(np.abs(mass - exact) < 4 * se), (centres, mass, exact, se)


# the Metropolis SNF in the long run (20 s): the same pooling, with its own kernel's path ratios
@pytest.mark.parametrize("kernel", ["ula", pytest.param("metropolis", marks=pytest.mark.slow)])
def test_pooled_paths_keep_log_z_and_lower_the_variance(kernel):
    """Weights pooling a forward path with K - 1 backward paths from its x (paths=K) are importance weights of p:
    logmeanexp(log w_K) = log Z within 3 s.e. for K = 1, 4, 16; their ESS grows with K (the same forward paths,
    so the comparison is paired); and E_p[log q] estimated with K backward paths rises with K (a tighter bound)."""
    target = Gaussian(mu=1.0, s=0.6, c=2.5)
    snf = blocks_only_snf(StandardBase(2), target, n_blocks=3, kernel=kernel, step_size=0.3, n_steps=3)
    ess, mean_log_q = [], []
    x_p = target.sample(jax.random.key(7), 20_000)
    for paths in (1, 4, 16):
        _, log_w, _ = jax.jit(lambda k: path_weights(snf, target, k, 20_000, paths))(jax.random.key(0))
        log_z, se = log_z_estimate(log_w)
        within(log_z, se, target.log_z)
        w = np.exp(np.asarray(log_w, np.float64) - float(jnp.max(log_w)))
        ess.append(w.sum() ** 2 / (w * w).sum() / len(w))
        mean_log_q.append(float(jnp.mean(jax.jit(lambda x: backward_log_q(snf, x, jax.random.key(3), paths))(x_p))))
    assert ess[0] < ess[1] < ess[2], ess
    assert mean_log_q[0] < mean_log_q[1] < mean_log_q[2], mean_log_q


def test_pooled_paths_change_nothing_for_a_flow():
    target = Gaussian(mu=0.5, s=0.7)
    flow = _perturbed_realnvp(jax.random.key(0))
    one = path_weights(flow, target, jax.random.key(1), 256)[1]
    four = path_weights(flow, target, jax.random.key(1), 256, paths=4)[1]
    np.testing.assert_array_equal(np.asarray(one), np.asarray(four))
