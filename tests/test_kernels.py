"""MCMC kernels: invariance of pi_w, path ratios dS, non-finite handling, blackjax as an oracle.

Invariance tests start n independent chains from exact samples of pi and look only at the final states: if the
kernel leaves pi invariant these are n i.i.d. exact samples, so the standard errors below are exact i.i.d. ones
(no autocorrelation to estimate). Tolerances are 4 standard errors (or KS p-values > 1e-3); seeds are fixed.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from boltzflow.errors import BoltzflowError
from boltzflow.estimators import log_z_estimate, self_normalised_expectation
from boltzflow.mcmc import annealed_log_prob, make_kernel, make_point

N = 4000
MH_KERNELS = [("metropolis", 0.9, {}), ("hmc", 0.35, {"n_leapfrog": 4}), ("mala", 0.6, {})]

# --- a correlated 2-D Gaussian, annealed: pi = q^0.5 p^0.5 with q = N(0, I), p = N(m, C) -------------------------
M = np.array([1.0, -1.0])
C = np.array([[1.0, 0.8], [0.8, 1.0]])
C_INV = np.linalg.inv(C)
W_HALF = (0.5, 0.5)
PI_COV = np.linalg.inv(0.5 * np.eye(2) + 0.5 * C_INV)
PI_MEAN = PI_COV @ (0.5 * C_INV @ M)
PI_CHOL = np.linalg.cholesky(PI_COV)


def gauss_log_p(x):
    d = x - jnp.asarray(M, x.dtype)
    return -0.5 * jnp.einsum("ni,ij,nj->n", d, jnp.asarray(C_INV, x.dtype), d)


def std_normal_log_q(x):
    return -0.5 * jnp.sum(x * x, axis=1) - 0.5 * x.shape[1] * math.log(2 * math.pi)


def pi_samples(key, n):
    return jnp.asarray(PI_MEAN, jnp.float32) + jax.random.normal(key, (n, 2)) @ jnp.asarray(PI_CHOL.T, jnp.float32)


# --- the double well u = x1^4 - 6 x1^2 - 0.5 x1 + 0.5 x2^2 (SNF paper), with an exact sampler ----------------------
_GRID = np.linspace(-3.5, 3.5, 70001)
_DENS = np.exp(-(_GRID**4 - 6 * _GRID**2 - 0.5 * _GRID))
_CDF = np.concatenate([[0.0], np.cumsum(0.5 * (_DENS[1:] + _DENS[:-1]) * np.diff(_GRID))])
_CDF /= _CDF[-1]
P_X1_POS = 1.0 - float(np.interp(0.0, _GRID, _CDF))  # 0.84431 (trapezoid quadrature, error << 1e-6)


def dw_log_p(x):
    x1, x2 = x[:, 0], x[:, 1]
    return -(x1**4 - 6 * x1**2 - 0.5 * x1) - 0.5 * x2**2


def dw_samples(seed, n):
    rng = np.random.default_rng(seed)
    x1 = np.interp(rng.uniform(size=n), _CDF, _GRID)
    return jnp.asarray(np.stack([x1, rng.standard_normal(n)], 1), jnp.float32)


def dw_x1_cdf(v):
    return np.interp(v, _GRID, _CDF)


# --- running chains ------------------------------------------------------------------------------------------------
def run_chains(kernel, x0, w, step_size, n_steps, log_q_fn, log_p_fn, seed=0):
    """n_steps moves of every chain (lax.scan); returns (start point, final point, dS summed, accept, nonfinite)."""

    @jax.jit
    def go(x0, key):
        p0 = make_point(x0, log_q_fn, log_p_fn, kernel.needs_grad)

        def body(carry, k):
            p, ds = carry
            p, info = kernel.step(k, p, w, step_size, log_q_fn, log_p_fn)
            return (p, ds + info.dS), (info.accept, info.n_nonfinite)

        (p, ds), (acc, bad) = jax.lax.scan(body, (p0, jnp.zeros(x0.shape[0])), jax.random.split(key, n_steps))
        return p0, p, ds, acc, jnp.sum(bad)

    return go(x0, jax.random.key(seed))


def assert_gaussian_moments(x, mean, cov, n_se=4.0):
    x = np.asarray(x, np.float64)
    n = x.shape[0]
    se_mean = np.sqrt(np.diag(cov) / n)
    assert np.all(np.abs(x.mean(0) - mean) < n_se * se_mean), (x.mean(0), mean, se_mean)
    emp = np.cov(x.T)
    # Gaussian: Var(s_ij) = (S_ij^2 + S_ii S_jj) / n
    se_cov = np.sqrt((cov**2 + np.outer(np.diag(cov), np.diag(cov))) / n)
    assert np.all(np.abs(emp - cov) < n_se * se_cov), (emp, cov, se_cov)


def assert_same_law(x, y, p_min=1e-3):
    """Two-sample KS on four projections (Bonferroni-ish threshold)."""
    x, y = np.asarray(x), np.asarray(y)
    for d in ([1, 0], [0, 1], [1, 1], [1, -1]):
        p = stats.ks_2samp(x @ np.array(d), y @ np.array(d)).pvalue
        assert p > p_min, (d, p)


# --- invariance -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name,eps,kw", MH_KERNELS)
def test_mh_kernels_leave_annealed_gaussian_invariant(name, eps, kw):
    kernel = make_kernel(name, **kw)
    x0 = pi_samples(jax.random.key(1), N)
    _, p, ds, acc, bad = run_chains(kernel, x0, W_HALF, eps, 20, std_normal_log_q, gauss_log_p)
    assert p.x.shape == (N, 2) and int(bad) == 0
    assert 0.2 < float(jnp.mean(acc)) < 0.99  # the chains really move
    assert_gaussian_moments(p.x, PI_MEAN, PI_COV)
    assert_same_law(p.x, pi_samples(jax.random.key(2), N))
    # the cached densities are those of the final positions
    np.testing.assert_allclose(p.log_p, gauss_log_p(p.x), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(p.log_q, std_normal_log_q(p.x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name,eps,kw", MH_KERNELS)
def test_mh_kernels_leave_double_well_invariant(name, eps, kw):
    kernel = make_kernel(name, **kw)
    x0 = dw_samples(0, N)
    _, p, _, acc, _ = run_chains(kernel, x0, (0.0, 1.0), eps * 0.6, 20, std_normal_log_q, dw_log_p)
    x = np.asarray(p.x, np.float64)
    frac = np.mean(x[:, 0] > 0)
    assert abs(frac - P_X1_POS) < 4 * math.sqrt(P_X1_POS * (1 - P_X1_POS) / N), frac
    assert stats.kstest(x[:, 0], dw_x1_cdf).pvalue > 1e-3
    assert stats.kstest(x[:, 1], "norm").pvalue > 1e-3
    assert float(jnp.mean(acc)) > 0.2


@pytest.mark.parametrize("name,eps,kw", [("ula", 0.7, {}), ("underdamped", 0.7, {"n_steps": 1, "friction": 1.0})])
def test_unadjusted_kernels_are_biased_but_path_weights_correct_it(name, eps, kw):
    """ULA / BAOAB do not leave pi invariant (O(eps^2) bias, visible here), but the path weight
    log w = log pi(x_T) - log pi(x_0) + sum dS (SNF eq. 11 with q0 = pi) has E[w] = 1 and reweights exactly."""
    kernel = make_kernel(name, **kw)
    x0 = pi_samples(jax.random.key(3), N)
    p0, p, ds, acc, bad = run_chains(kernel, x0, W_HALF, eps, 5, std_normal_log_q, gauss_log_p)
    assert int(bad) == 0 and float(jnp.min(acc)) == 1.0
    var_unweighted = np.var(np.asarray(p.x, np.float64), axis=0)
    # the chains' law is Gaussian (linear moves from a Gaussian start): se of a sample variance = var sqrt(2 / N),
    # from the sample's own variance (the larger, biased one: the stricter choice)
    se_var = var_unweighted * math.sqrt(2 / N)
    assert np.all(var_unweighted - np.diag(PI_COV) > 4 * se_var), var_unweighted  # the bias is real
    log_w = annealed_log_prob(p, W_HALF) - annealed_log_prob(p0, W_HALF) + ds
    log_z, se = log_z_estimate(log_w)
    # log Z = 0 within 4 s.e., plus the estimator's Jensen bias of about se^2 / 2 (boltzflow.estimators)
    assert abs(float(log_z)) < 4 * float(se) + float(se) ** 2 / 2, (log_z, se)
    mean, se_mean = self_normalised_expectation(log_w, p.x)
    assert np.all(np.abs(np.asarray(mean) - PI_MEAN) < 4 * np.asarray(se_mean))
    var, se_v = self_normalised_expectation(log_w, (p.x - jnp.asarray(PI_MEAN, jnp.float32)) ** 2)
    assert np.all(np.abs(np.asarray(var) - np.diag(PI_COV)) < 4 * np.asarray(se_v)), (var, se_v)


# --- detailed balance and dS ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("name,eps,kw", MH_KERNELS)
def test_mh_ds_is_log_pi_difference_and_averages_to_zero(name, eps, kw):
    """At equilibrium x ~ pi and x' ~ K(x, .): dS = log pi(x) - log pi(x') (SNF eq. 22) has mean 0, and detailed
    balance makes (x, x') exchangeable, so E[g(x) h(x') - h(x) g(x')] = 0 and E[tanh dS] = 0 (dS symmetric)."""
    n = 20000
    kernel = make_kernel(name, **kw)
    x0 = pi_samples(jax.random.key(4), n)
    p0, p1, ds, acc, _ = run_chains(kernel, x0, W_HALF, eps, 1, std_normal_log_q, gauss_log_p, seed=5)
    expected = annealed_log_prob(p0, W_HALF) - annealed_log_prob(p1, W_HALF)
    np.testing.assert_allclose(ds, expected, atol=1e-5)
    ds = np.asarray(ds, np.float64)
    for stat in (ds, np.tanh(ds)):
        assert abs(stat.mean()) < 4 * stat.std() / math.sqrt(n), stat.mean()
    a, b = np.asarray(p0.x, np.float64), np.asarray(p1.x, np.float64)
    asym = a[:, 0] * b[:, 1] ** 2 - b[:, 0] * a[:, 1] ** 2
    assert abs(asym.mean()) < 4 * asym.std() / math.sqrt(n)


def test_ula_ds_is_snf_eq20():
    """dS of one ULA move equals -(|eta_b|^2 - |eta|^2)/2 recomputed by hand (SNF eq. 20)."""
    kernel = make_kernel("ula")
    x0 = pi_samples(jax.random.key(6), 64)
    eps = 0.4
    p0, p1, ds, _, _ = run_chains(kernel, x0, W_HALF, eps, 1, std_normal_log_q, gauss_log_p, seed=7)
    g = lambda p: 0.5 * p.grad_log_q + 0.5 * p.grad_log_p  # noqa: E731
    eta = (p1.x - p0.x - 0.5 * eps**2 * g(p0)) / eps
    eta_b = (p0.x - p1.x - 0.5 * eps**2 * g(p1)) / eps
    np.testing.assert_allclose(ds, -0.5 * (jnp.sum(eta_b**2, 1) - jnp.sum(eta**2, 1)), atol=1e-4)


# --- non-finite densities -------------------------------------------------------------------------------------------
def _half_space_log_p(bad_value):
    def log_p(x):
        return jnp.where(x[:, 0] < 0, bad_value, -0.5 * jnp.sum(x * x, axis=1))

    return log_p


def test_make_point_cleans_nonfinite_values_and_gradients():
    x = jnp.array([[1.0, 0.0], [-1.0, 0.0], [2.0, 1.0]])
    log_p = lambda x: jnp.where(x[:, 0] < 0, jnp.nan, -jnp.sqrt(x[:, 0] - 1.0))  # noqa: E731 (grad inf at x0=1)
    p = make_point(x, std_normal_log_q, log_p, with_grad=True)
    assert np.isneginf(np.asarray(p.log_p)[1]) and np.isfinite(np.asarray(p.log_p)[[0, 2]]).all()
    assert np.isfinite(np.asarray(p.grad_log_p)).all() and np.all(np.asarray(p.grad_log_p)[1] == 0)
    assert not np.isnan(np.asarray(annealed_log_prob(p, (-1.0, 2.0)))).any()
    with pytest.raises(BoltzflowError, match="shape"):
        make_point(x, std_normal_log_q, lambda x: x, with_grad=False)


@pytest.mark.parametrize("name,eps,kw,bad", [
    ("metropolis", 1.0, {}, -jnp.inf), ("hmc", 0.5, {"n_leapfrog": 3}, jnp.nan), ("mala", 0.8, {}, jnp.nan),
    ("ula", 0.5, {}, -jnp.inf), ("underdamped", 0.5, {}, jnp.nan)])
def test_nonfinite_half_space_keeps_shape_rejects_and_counts(name, eps, kw, bad):
    """pi = N(0, I) restricted to x1 > 0, log p = -inf or NaN elsewhere. Chains started inside stay inside (moves
    out are rejected and counted), chains started outside stay put with dS = 0, nothing is NaN; for MH kernels the
    truncated Gaussian stays exact (E[x1] = sqrt(2/pi))."""
    kernel = make_kernel(name, **kw)
    n, n_out = 2000, 16
    rng = np.random.default_rng(8)
    x0 = rng.standard_normal((n, 2))
    x0[:, 0] = np.abs(x0[:, 0])
    x0[-n_out:, 0] = -1.0
    x0 = jnp.asarray(x0, jnp.float32)
    _, p, ds, acc, n_bad = run_chains(kernel, x0, (0.0, 1.0), eps, 10, std_normal_log_q, _half_space_log_p(bad))
    x = np.asarray(p.x)
    assert x.shape == (n, 2) and np.isfinite(x).all()
    assert np.isfinite(np.asarray(ds)).all() and np.isfinite(np.asarray(acc)).all()
    assert np.all(x[:-n_out, 0] >= 0)
    np.testing.assert_array_equal(x[-n_out:], np.asarray(x0)[-n_out:])
    np.testing.assert_array_equal(np.asarray(ds)[-n_out:], 0.0)
    assert 0 < int(n_bad) <= 10 * (n - n_out)
    assert not np.isnan(np.asarray(p.log_p)).any()
    if kernel.metropolised:
        m1 = x[:-n_out, 0].mean()
        se = math.sqrt((1 - 2 / math.pi) / (n - n_out))
        assert abs(m1 - math.sqrt(2 / math.pi)) < 4 * se, m1


# --- blackjax as an oracle ------------------------------------------------------------------------------------------
def test_hmc_matches_blackjax_acceptance_and_law():
    """Same algorithm, same settings: the mean acceptance probability at equilibrium and the law after one step
    must agree with blackjax's HMC (identity mass matrix) on the same annealed Gaussian."""
    blackjax = pytest.importorskip("blackjax")
    eps, n_leap, n = 0.6, 5, 4000
    x0 = pi_samples(jax.random.key(9), n)
    _, p, _, acc, _ = run_chains(make_kernel("hmc", n_leapfrog=n_leap), x0, W_HALF, eps, 1, std_normal_log_q,
                                 gauss_log_p, seed=10)

    def logdensity(x):
        return 0.5 * std_normal_log_q(x[None])[0] + 0.5 * gauss_log_p(x[None])[0]

    hmc = blackjax.hmc(logdensity, step_size=eps, inverse_mass_matrix=jnp.ones(2), num_integration_steps=n_leap)

    @jax.jit
    def bj(x0, key):
        def one(x, k):
            state, info = hmc.step(k, hmc.init(x))
            return state.position, info.acceptance_rate

        return jax.vmap(one)(x0, jax.random.split(key, x0.shape[0]))

    xb, acc_b = bj(x0, jax.random.key(11))
    a, b = np.asarray(acc[0], np.float64), np.asarray(acc_b, np.float64)
    assert a.mean() < 0.99  # a non-trivial acceptance rate to compare
    se = math.sqrt(a.var() / n + b.var() / n)
    assert abs(a.mean() - b.mean()) < 4 * se, (a.mean(), b.mean(), se)
    assert_same_law(p.x, xb)


# --- the factory ----------------------------------------------------------------------------------------------------
def test_make_kernel_errors_and_properties():
    with pytest.raises(BoltzflowError, match="unknown MCMC kernel 'nuts'"):
        make_kernel("nuts")
    with pytest.raises(BoltzflowError, match="n_leapfrog"):
        make_kernel("metropolis", n_leapfrog=3)
    with pytest.raises(BoltzflowError, match="positive integer"):
        make_kernel("hmc", n_leapfrog=0)
    k = make_kernel("hmc", n_leapfrog=3)
    assert k.needs_grad and k.metropolised and k.target_accept == 0.65
    assert make_kernel("ula").target_accept is None and not make_kernel("ula").metropolised
    assert not make_kernel("metropolis").needs_grad


def test_per_dimension_step_size_and_float64():
    """A (d,) step size broadcasts; in float64 everything stays float64."""
    with jax.enable_x64(True):
        x0 = pi_samples(jax.random.key(12), 512).astype(jnp.float64)
        _, p, ds, acc, _ = run_chains(make_kernel("hmc", n_leapfrog=3), x0, W_HALF, jnp.array([0.3, 0.5]), 3,
                                      std_normal_log_q, gauss_log_p)
        assert p.x.dtype == jnp.float64 and ds.dtype == jnp.float64 and p.log_p.dtype == jnp.float64
        assert np.isfinite(np.asarray(ds)).all() and float(jnp.mean(acc)) > 0.3
