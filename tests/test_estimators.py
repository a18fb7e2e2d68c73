"""Estimators: ESS as a fraction, log Z with a calibrated standard error, self-normalised expectations."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from boltzflow.estimators import (WeightSums, effective_sample_size, log_z_estimate, normalised_weights,
                                  self_normalised_expectation)


def test_ess_of_equal_weights_is_one_and_of_one_weight_is_one_over_n():
    n = 50
    for c in (-1e3, 0.0, 3.7, 1e3):
        assert float(effective_sample_size(jnp.full(n, c))) == pytest.approx(1.0, rel=1e-6)
    lw = jnp.full(n, -jnp.inf).at[7].set(2.0)
    assert float(effective_sample_size(lw)) == pytest.approx(1 / n, rel=1e-6)


def test_nonfinite_log_weights_count_as_zero_weight():
    lw = jnp.array([0.0, 0.0, jnp.nan, jnp.inf, -jnp.inf, 0.0])
    assert float(effective_sample_size(lw)) == pytest.approx(3 / 6 * 1.0, rel=1e-6)  # (3)^2 / (6 * 3)
    log_z, se = log_z_estimate(lw)
    assert float(log_z) == pytest.approx(math.log(3 / 6), rel=1e-6) and np.isfinite(float(se))
    np.testing.assert_allclose(normalised_weights(lw), [1 / 3, 1 / 3, 0, 0, 0, 1 / 3], rtol=1e-6)
    none = jnp.full(4, jnp.nan)
    assert float(effective_sample_size(none)) == 0.0
    log_z, se = log_z_estimate(none)
    assert np.isneginf(float(log_z)) and np.isposinf(float(se))
    assert not np.isnan(np.asarray(normalised_weights(none))).any()


def test_log_z_of_equal_weights_is_exact_with_zero_error():
    log_z, se = log_z_estimate(jnp.full(10, 2.5))
    assert float(log_z) == pytest.approx(2.5, rel=1e-6) and float(se) == pytest.approx(0.0, abs=1e-6)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.floats(-30, 30), min_size=16, max_size=16), st.floats(-50, 50))
def test_ess_and_log_z_match_float64_reference_and_are_shift_invariant(values, shift):
    """Kish ESS and log Z^ against a float64 NumPy evaluation of the formulas. The upper bound ESS <= 1 is not
    checked on its own: the implementation clips to [0, 1], so it holds by construction; the reference value, which
    is in [1/n, 1] by Cauchy-Schwarz without any clip, is what the float32 result must equal."""
    lw = jnp.asarray(values, jnp.float32)
    lw64 = np.asarray(lw, np.float64)  # the float32-rounded inputs, so only the arithmetic differs
    w = np.exp(lw64 - lw64.max())
    ess_ref = w.sum() ** 2 / (len(w) * (w * w).sum())
    log_z_ref = np.log(w.mean()) + lw64.max()
    ess = float(effective_sample_size(lw))
    # float32 softmax of 16 terms: relative round-off ~1e-7 per operation, 1e-5 is a wide margin
    assert ess == pytest.approx(ess_ref, rel=1e-5)
    assert ess >= 1 / 16 * (1 - 1e-5)  # the lower bound is not enforced by the clip (it clips at 0)
    assert float(effective_sample_size(lw + shift)) == pytest.approx(ess, rel=1e-4)  # lw + shift rounds in float32
    log_z, _ = log_z_estimate(lw)
    assert float(log_z) == pytest.approx(log_z_ref, abs=1e-5 * max(1.0, abs(log_z_ref)))
    # |lw + shift| <= 80: float32 spacing there is ~1e-5, a few roundings of that stay below 1e-3
    assert float(log_z_estimate(lw + shift)[0]) == pytest.approx(float(log_z) + shift, abs=1e-3)


def test_standard_error_relation_to_ess():
    """se^2 (ddof = 0) = (1/ESS - 1) / n: the delta-method se and the Kish ESS are the same statistic."""
    lw = jax.random.normal(jax.random.key(0), (1000,)) * 1.5
    n = lw.shape[0]
    _, se = log_z_estimate(lw)
    ess = float(effective_sample_size(lw))
    # an identity between two float32 computations over 1000 weights: rel 1e-3 is round-off, not sampling error
    assert float(se) ** 2 * (n - 1) / n == pytest.approx((1 / ess - 1) / n, rel=1e-3)


def _is_problem(key, n):
    """q = N(0, 1); p~(x) = exp(1.2) N(x; 0.5, 0.8^2): Z = exp(1.2), E_p[x] = 0.5."""
    x = jax.random.normal(key, (n,))
    log_q = -0.5 * x**2 - 0.5 * math.log(2 * math.pi)
    log_p = 1.2 - 0.5 * ((x - 0.5) / 0.8) ** 2 - math.log(0.8) - 0.5 * math.log(2 * math.pi)
    return x, log_p - log_q


def test_log_z_and_expectation_standard_errors_are_calibrated():
    """Over R = 400 seeds the z-scores of log Z^ and of E^[x] have mean 0 and standard deviation 1.

    Both are checked to 4 standard errors computed from the R z-scores (two-sided p ~ 6e-5 per assertion under a
    normal approximation): se(mean) = s / sqrt(R), and the delta-method se(s) = sd((z - zbar)^2) / (2 s sqrt(R))
    (no normality assumed: the z-scores of a ratio estimator have heavier tails). The standard errors are
    asymptotic in the IS sample size n = 500; at this n the true mean and sd of the z-scores are off 0 and 1 by
    about 0.02 (measured over 20000 seeds), under half a standard error at R = 400, so they do not bias the test."""

    @jax.jit
    @jax.vmap
    def one(key):
        x, lw = _is_problem(key, 500)
        log_z, se = log_z_estimate(lw)
        m, se_m = self_normalised_expectation(lw, x)
        return (log_z - 1.2) / se, (m - 0.5) / se_m

    z_logz, z_mean = (np.asarray(v, np.float64) for v in one(jax.random.split(jax.random.key(1), 400)))
    r = len(z_logz)
    for z in (z_logz, z_mean):
        s = z.std(ddof=1)
        se_mean = s / math.sqrt(r)
        se_sd = np.std((z - z.mean()) ** 2, ddof=1) / (2 * s * math.sqrt(r))
        assert abs(z.mean()) < 4 * se_mean, (z.mean(), se_mean)
        assert abs(s - 1) < 4 * se_sd, (s, se_sd)


def test_self_normalised_expectation_shapes_and_ignored_values():
    lw = jnp.array([0.0, 0.0, -jnp.inf])
    v = jnp.array([[1.0, 2.0], [3.0, 4.0], [jnp.nan, jnp.inf]])
    est, se = self_normalised_expectation(lw, v)
    np.testing.assert_allclose(est, [2.0, 3.0])
    assert est.shape == se.shape == (2,) and np.isfinite(np.asarray(se)).all()


def test_usable_inside_jit():
    """Under jit the estimators give the closed-form values: w = (1, e^-1, 0), n = 3."""
    f = jax.jit(lambda lw: (effective_sample_size(lw), *log_z_estimate(lw)))
    ess, log_z, se = f(jnp.array([0.0, -1.0, jnp.nan]))
    w = np.array([1.0, math.exp(-1.0), 0.0])
    # float32 arithmetic on three O(1) numbers: rel 1e-5 is round-off with margin
    assert float(ess) == pytest.approx(w.sum() ** 2 / (3 * (w**2).sum()), rel=1e-5)
    assert float(log_z) == pytest.approx(math.log(w.mean()), rel=1e-5)
    assert float(se) == pytest.approx(w.std(ddof=1) / (math.sqrt(3) * w.mean()), rel=1e-5)


def test_weight_sums_merged_over_chunks_give_the_whole_array_estimates():
    """Streaming (WeightSums): chunks of very different scales (the shift must follow the largest log w), a chunk
    without a finite weight, padding rows masked out; ESS, log Z, its se and E^[f] equal the whole-array ones."""
    rng = np.random.default_rng(1)
    lw = rng.normal(0.0, 2.0, 3000).astype(np.float32)
    lw[:1000] -= 40.0  # first chunk far below the others
    lw[1000:1500] = -np.inf
    lw[[7, 2222]] = np.nan
    f = rng.normal(1.0, 1.0, 3000).astype(np.float32)
    sums, of = None, jax.jit(WeightSums.of)
    for lo in range(0, 3000, 1000):
        pad = np.zeros(1024, np.float32), np.zeros(1024, np.float32)  # chunks of 1024 rows, 24 of them padding
        pad[0][:1000], pad[1][:1000] = lw[lo:lo + 1000], f[lo:lo + 1000]
        pad[0][1000:] = 50.0  # huge weights on the padding: they would dominate if the mask failed
        chunk = of(jnp.asarray(pad[0]), jnp.arange(1024) < 1000, jnp.asarray(pad[1]))
        sums = chunk if sums is None else sums.merge(chunk)
    assert int(sums.n) == 3000 and int(sums.n_nonfinite) == 502
    np.testing.assert_allclose(float(sums.ess()), float(effective_sample_size(lw)), rtol=1e-5)
    (log_z, se), (log_z_ref, se_ref) = sums.log_z(), log_z_estimate(lw)
    np.testing.assert_allclose([float(log_z), float(se)], [float(log_z_ref), float(se_ref)], rtol=1e-5)
    np.testing.assert_allclose(float(sums.expectation()), float(self_normalised_expectation(lw, f)[0]), rtol=1e-5)
    empty = WeightSums.of(jnp.full(4, -jnp.inf))
    assert float(empty.ess()) == 0.0 and float(empty.log_z()[0]) == -np.inf and np.isnan(float(empty.expectation()))
