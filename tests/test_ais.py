"""AIS: log Z on a Gaussian with known normaliser, both weight formulas, double well, alpha = 2, adaptation, jit."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from boltzflow.ais import AISSettings, ais_from_settings, build_ais, make_betas
from boltzflow.settings import parse
from boltzflow.errors import BoltzflowError
from boltzflow.estimators import effective_sample_size, log_z_estimate, self_normalised_expectation
from boltzflow.mcmc import make_kernel

# q = N(0, s_q^2 I) (normalised), p(x) = exp(c - |x - mu|^2 / (2 s_p^2)) (unnormalised), d = 3
D = 3
MU = np.array([1.0, -0.5, 0.5])
S_P, S_Q, C0 = 0.6, 1.0, 1.3


def log_p(x):
    return C0 - 0.5 * jnp.sum((x - jnp.asarray(MU, x.dtype)) ** 2, axis=1) / S_P**2


def log_q(x):
    return -0.5 * jnp.sum(x * x, axis=1) / S_Q**2 - 0.5 * x.shape[1] * math.log(2 * math.pi * S_Q**2)


def sample_q(key, n):
    x = S_Q * jax.random.normal(key, (n, D))
    return x, log_q(x)


def log_z_alpha(alpha):
    """log int p^alpha q^(1-alpha) for the Gaussians above (closed form)."""
    lam = alpha / S_P**2 + (1 - alpha) / S_Q**2
    m = (alpha * MU / S_P**2) / lam
    return (alpha * C0 - (1 - alpha) * 0.5 * D * math.log(2 * math.pi * S_Q**2)
            + 0.5 * lam * m @ m - 0.5 * alpha * MU @ MU / S_P**2 + 0.5 * D * math.log(2 * math.pi / lam))


LOG_Z = log_z_alpha(1.0)  # = C0 + D/2 log(2 pi S_P^2)


def run_once(ais, n, seed=0, adapt=False, state=None, sampler=sample_q, lq=log_q):
    state = ais.init_state() if state is None else state
    f = jax.jit(lambda k, s: ais.run(k, s, sampler, lq, n, adapt=adapt))
    return f(jax.random.key(seed), state)


def test_closed_form_log_z():
    assert abs(LOG_Z - (C0 + 0.5 * D * math.log(2 * math.pi * S_P**2))) < 1e-12


@pytest.mark.parametrize("name,kw,eps", [("metropolis", {}, 0.5), ("hmc", {"n_leapfrog": 3}, 0.3), ("mala", {}, 0.4)])
def test_mh_ais_log_z_and_both_weight_formulas_agree(name, kw, eps):
    ais = build_ais(log_p, make_kernel(name, **kw), n_intermediate=6, step_size=eps)
    res, _ = run_once(ais, 3000, seed=1)
    log_z, se = log_z_estimate(res.log_w)
    assert abs(float(log_z) - LOG_Z) < 3 * float(se), (float(log_z), LOG_Z, float(se))
    # (A3) path weights == (A2) Neal's increments for detailed-balance kernels
    np.testing.assert_allclose(res.log_w, res.info.log_w_standard, atol=2e-4, rtol=1e-5)
    assert res.x.shape == (3000, D) and res.log_w.shape == res.log_q.shape == res.log_p.shape == (3000,)
    np.testing.assert_allclose(res.log_p, log_p(res.x), rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(res.log_q, log_q(res.x), rtol=1e-5, atol=1e-4)
    assert int(res.info.n_nonfinite) == 0 and int(res.info.n_invalid_weights) == 0
    assert res.info.accept.shape == (6,) and float(jnp.min(res.info.accept)) > 0.2


def test_log_weight_variance_falls_with_more_distributions():
    variances = []
    for k in (1, 4, 16):
        ais = build_ais(log_p, make_kernel("hmc", n_leapfrog=2), n_intermediate=k, step_size=0.3)
        res, _ = run_once(ais, 2000, seed=2)
        variances.append(float(jnp.var(res.log_w)))
    assert variances[0] > 1.5 * variances[1] and variances[1] > 1.5 * variances[2], variances


@pytest.mark.parametrize("name,kw,eps", [("ula", {}, 0.4), ("underdamped", {"n_steps": 2}, 0.3)])
def test_unadjusted_ais_path_weights_are_unbiased(name, kw, eps):
    """AIS with ULA / BAOAB (no MH) and path weights (A3) is unbiased for log Z; Neal's formula (A2) is not exact
    for these kernels and differs from (A3)."""
    ais = build_ais(log_p, make_kernel(name, **kw), n_intermediate=8, step_size=eps)
    res, _ = run_once(ais, 4000, seed=3)
    log_z, se = log_z_estimate(res.log_w)
    assert abs(float(log_z) - LOG_Z) < 3 * float(se), (float(log_z), LOG_Z, float(se))
    assert float(jnp.max(jnp.abs(res.log_w - res.info.log_w_standard))) > 1e-2


def test_alpha_two_targets_p_squared_over_q():
    """FAB's AIS target g = p^2 / q (eq. 7 with alpha = 2): the weights estimate int p^2 / q."""
    ais = build_ais(log_p, make_kernel("hmc", n_leapfrog=3), n_intermediate=8, alpha=2.0, step_size=0.25)
    res, _ = run_once(ais, 3000, seed=4)
    log_z, se = log_z_estimate(res.log_w)
    assert abs(float(log_z) - log_z_alpha(2.0)) < 3 * float(se), (float(log_z), log_z_alpha(2.0), float(se))
    np.testing.assert_allclose(res.log_w, res.info.log_w_standard, atol=5e-4, rtol=1e-5)


def dw_log_p(x):
    x1, x2 = x[:, 0], x[:, 1]
    return -(x1**4 - 6 * x1**2 - 0.5 * x1) - 0.5 * x2**2


def test_double_well_recovers_p_x1_positive():
    """From q = N(0, 2^2 I): self-normalised P(x1 > 0) = 0.8443 within 3 s.e., and log Z = log(11784.50927
    sqrt(2 pi))."""
    scale = 2.0

    def sampler(key, n):
        x = scale * jax.random.normal(key, (n, 2))
        return x, lq(x)

    def lq(x):
        return -0.5 * jnp.sum(x * x, 1) / scale**2 - 2 * math.log(scale) - math.log(2 * math.pi)

    ais = build_ais(dw_log_p, make_kernel("hmc", n_leapfrog=4), n_intermediate=8, step_size=0.2)
    res, _ = run_once(ais, 4000, seed=5, sampler=sampler, lq=lq)
    frac, se = self_normalised_expectation(res.log_w, (res.x[:, 0] > 0).astype(jnp.float32))
    assert abs(float(frac) - 0.8443) < 3 * float(se), (float(frac), float(se))
    log_z, se_z = log_z_estimate(res.log_w)
    assert abs(float(log_z) - math.log(11784.50927 * math.sqrt(2 * math.pi))) < 3 * float(se_z)


def test_step_size_adaptation_moves_acceptance_to_target():
    ais = build_ais(log_p, make_kernel("hmc", n_leapfrog=3), n_intermediate=3, step_size=1.5)
    state0 = ais.init_state()

    @jax.jit
    def passes(key, state):
        def one(s, k):
            res, s = ais.run(k, s, sample_q, log_q, 128, adapt=True)
            return s, res.info.accept

        return jax.lax.scan(one, state, jax.random.split(key, 50))

    state, accepts = passes(jax.random.key(6), state0)
    acc0, acc = float(jnp.mean(accepts[0])), np.asarray(accepts[-5:]).mean(0)
    assert acc0 < 0.4  # started far too large
    assert np.all(np.abs(acc - 0.65) < 0.12), acc
    assert np.all(np.asarray(state.step_sizes) < 1.5)
    assert state.step_sizes.shape == (3,) and state.log_shared.dtype == state0.log_shared.dtype
    # frozen at evaluation
    _, frozen = ais.run(jax.random.key(0), state, sample_q, log_q, 64, adapt=False)
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree_util.tree_leaves(frozen),
                                                    jax.tree_util.tree_leaves(state)))


def test_runs_inside_an_outer_jit_with_closures_over_parameters():
    """The FAB pattern: the sampler and log q close over traced parameters of an outer jitted step."""
    ais = build_ais(log_p, make_kernel("hmc", n_leapfrog=2), n_intermediate=2, step_size=0.3)

    @jax.jit
    def train_step(params, state, key):
        shift, log_scale = params

        def lq(x):
            z = (x - shift) / jnp.exp(log_scale)
            return -0.5 * jnp.sum(z * z, 1) - D * log_scale - 0.5 * D * math.log(2 * math.pi)

        def sampler(k, n):
            x = shift + jnp.exp(log_scale) * jax.random.normal(k, (n, D))
            return x, lq(x)

        res, state = ais.run(key, state, sampler, lq, 128, adapt=True)
        return effective_sample_size(res.log_w), res, state

    params = (jnp.asarray(MU, jnp.float32), jnp.log(jnp.float32(0.7)))
    ess, res, state = train_step(params, ais.init_state(), jax.random.key(7))
    assert 0.0 < float(ess) <= 1.0 and np.isfinite(np.asarray(res.log_w)).all()
    assert state.log_local.shape == (2,)


def test_no_intermediate_is_plain_importance_sampling():
    ais = build_ais(log_p, "hmc", n_intermediate=0, alpha=2.0)
    res, state = run_once(ais, 100, seed=8, adapt=True)
    x, lq = sample_q(jax.random.split(jax.random.key(8))[0], 100)
    np.testing.assert_allclose(res.x, x)
    np.testing.assert_allclose(res.log_w, 2.0 * (log_p(x) - lq), rtol=1e-6, atol=1e-5)
    assert res.info.accept.shape == (0,) and state.log_local.shape == (0,)


def test_nonfinite_samples_and_densities_get_zero_weight():
    """A sampler that returns some NaN rows and a target that is NaN for x1 < -1: fixed shapes, no NaN weights,
    invalid samples get log w = -inf and are counted."""
    n, n_nan = 512, 7

    def sampler(key, n):
        x, lq = sample_q(key, n)
        x = x.at[:n_nan].set(jnp.nan)
        return x, lq.at[:n_nan].set(jnp.nan)

    def bad_log_p(x):
        return jnp.where(x[:, 0] < -1.0, jnp.nan, log_p(x))

    ais = build_ais(bad_log_p, make_kernel("hmc", n_leapfrog=3), n_intermediate=4, step_size=0.5)
    res, state = run_once(ais, n, seed=9, sampler=sampler, adapt=True)
    lw = np.asarray(res.log_w)
    assert res.x.shape == (n, D) and lw.shape == (n,)
    assert not np.isnan(lw).any() and np.isneginf(lw[:n_nan]).all()
    assert int(res.info.n_invalid_weights) >= n_nan
    assert np.isfinite(np.asarray(res.x)).all()
    assert np.all(np.asarray(res.x)[np.isfinite(lw), 0] >= -1.0)
    assert int(res.info.n_nonfinite) > 0
    assert np.isfinite(np.asarray(state.log_local)).all()


def test_schedules():
    np.testing.assert_allclose(make_betas(3, "linear"), [0, 1 / 4, 1 / 2, 3 / 4, 1])
    for k in (0, 1, 2, 3, 8, 30):
        b = make_betas(k, "geometric")
        assert len(b) == k + 2 and b[0] == 0 and b[-1] == 1 and np.all(np.diff(b) > 0)
    np.testing.assert_allclose(make_betas(3, "geometric"), make_betas(3, "linear"))
    b = make_betas(8, "geometric")
    assert b[-2] > 0.99 and b[1] > 0.5  # geometric in 1 - beta: dense near beta = 1, as in fab-torch
    with pytest.raises(BoltzflowError, match="schedule"):
        make_betas(3, "cosine")


def ais_from_config(log_p_fn, section, alpha=1.0):
    return ais_from_settings(log_p_fn, parse(AISSettings, section, "ais"), alpha)


def test_config_builder_and_errors():
    ais = ais_from_config(log_p, {"kernel": "hmc", "n_intermediate": 4, "schedule": "linear", "step_size": 0.1,
                                  "n_leapfrog": 4, "target_accept": 0.65}, alpha=2.0)
    assert ais.kernel.name == "hmc" and len(ais.betas) == 6 and ais.alpha == 2.0
    assert ais_from_config(log_p, {"kernel": "metropolis", "n_intermediate": 1, "step_size": 1.0,
                                   "n_inner_steps": 1}).kernel.target_accept == 0.3
    with pytest.raises(BoltzflowError, match="unknown MCMC kernel"):
        ais_from_config(log_p, {"kernel": "gibbs"})
    with pytest.raises(BoltzflowError, match="n_leapfrogs"):
        ais_from_config(log_p, {"kernel": "hmc", "n_leapfrogs": 4})
    with pytest.raises(BoltzflowError, match="n_intermediate"):
        ais_from_config(log_p, {"n_intermediate": -1})
    with pytest.raises(BoltzflowError, match="step_size"):
        ais_from_config(log_p, {"step_size": 0.0})
    with pytest.raises(BoltzflowError, match="target_accept"):
        build_ais(log_p, "ula", 2, target_accept=0.5)
    bad_dim = build_ais(log_p, "hmc", 2, step_size=[0.1, 0.2])
    with pytest.raises(BoltzflowError, match="per-dimension"):
        bad_dim.run(jax.random.key(0), bad_dim.init_state(), sample_q, log_q, 8)
    with pytest.raises(BoltzflowError, match="shape"):
        ais.run(jax.random.key(0), ais.init_state(), lambda k, n: (jnp.zeros((n, D)), jnp.zeros(n + 1)), log_q, 8)


def test_float64_and_per_dimension_step_sizes():
    with jax.enable_x64(True):
        ais = build_ais(log_p, make_kernel("hmc", n_leapfrog=2), n_intermediate=2, step_size=[0.2, 0.3, 0.4])
        state = ais.init_state(jnp.float64)

        def sampler(key, n):
            x = jax.random.normal(key, (n, D), jnp.float64)
            return x, log_q(x)

        res, new = run_once(ais, 64, seed=10, adapt=True, state=state, sampler=sampler)
        assert res.log_w.dtype == jnp.float64 and res.x.dtype == jnp.float64
        assert new.log_local.dtype == jnp.float64 and new.step_sizes.shape == (2, D)
        np.testing.assert_allclose(res.log_w, res.info.log_w_standard, atol=1e-9)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["hmc", "ula", "underdamped"])
def test_log_z_calibrated_over_seeds(name):
    """Over 200 independent AIS runs the z-scores (log Z^ - log Z) / se have mean ~0 and spread ~1 (path weights
    of unadjusted kernels included)."""
    ais = build_ais(log_p, make_kernel(name), n_intermediate=4, step_size=0.3)
    run = jax.jit(jax.vmap(lambda k: ais.run(k, ais.init_state(), sample_q, log_q, 1000)[0].log_w))
    log_z, se = jax.vmap(log_z_estimate)(run(jax.random.split(jax.random.key(100), 200)))
    z = (np.asarray(log_z, np.float64) - LOG_Z) / np.asarray(se, np.float64)
    assert abs(z.mean()) < 0.25 and 0.85 < z.std() < 1.2, (z.mean(), z.std())
