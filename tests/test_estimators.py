"""Estimators: ESS as a fraction, log Z with a calibrated standard error, self-normalised expectations."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from boltzflow.estimators import (effective_sample_size, log_z_estimate, normalised_weights,
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
def test_ess_in_unit_interval_and_shift_invariant(values, shift):
    lw = jnp.asarray(values, jnp.float32)
    ess = float(effective_sample_size(lw))
    assert 1 / 16 - 1e-6 <= ess <= 1.0 + 1e-6
    assert float(effective_sample_size(lw + shift)) == pytest.approx(ess, rel=1e-4)
    log_z, _ = log_z_estimate(lw)
    assert float(log_z_estimate(lw + shift)[0]) == pytest.approx(float(log_z) + shift, abs=1e-3)


def test_standard_error_relation_to_ess():
    """se^2 (ddof = 0) = (1/ESS - 1) / n: the delta-method se and the Kish ESS are the same statistic."""
    lw = jax.random.normal(jax.random.key(0), (1000,)) * 1.5
    n = lw.shape[0]
    _, se = log_z_estimate(lw)
    ess = float(effective_sample_size(lw))
    assert float(se) ** 2 * (n - 1) / n == pytest.approx((1 / ess - 1) / n, rel=1e-3)


def _is_problem(key, n):
    """q = N(0, 1); p~(x) = exp(1.2) N(x; 0.5, 0.8^2): Z = exp(1.2), E_p[x] = 0.5."""
    x = jax.random.normal(key, (n,))
    log_q = -0.5 * x**2 - 0.5 * math.log(2 * math.pi)
    log_p = 1.2 - 0.5 * ((x - 0.5) / 0.8) ** 2 - math.log(0.8) - 0.5 * math.log(2 * math.pi)
    return x, log_p - log_q


def test_log_z_and_expectation_standard_errors_are_calibrated():
    """Over 400 seeds the z-scores of log Z^ and of E^[x] have mean ~0 and standard deviation ~1."""

    @jax.jit
    @jax.vmap
    def one(key):
        x, lw = _is_problem(key, 500)
        log_z, se = log_z_estimate(lw)
        m, se_m = self_normalised_expectation(lw, x)
        return (log_z - 1.2) / se, (m - 0.5) / se_m

    z_logz, z_mean = (np.asarray(v, np.float64) for v in one(jax.random.split(jax.random.key(1), 400)))
    for z in (z_logz, z_mean):
        assert abs(z.mean()) < 0.2 and 0.85 < z.std() < 1.15, (z.mean(), z.std())


def test_self_normalised_expectation_shapes_and_ignored_values():
    lw = jnp.array([0.0, 0.0, -jnp.inf])
    v = jnp.array([[1.0, 2.0], [3.0, 4.0], [jnp.nan, jnp.inf]])
    est, se = self_normalised_expectation(lw, v)
    np.testing.assert_allclose(est, [2.0, 3.0])
    assert est.shape == se.shape == (2,) and np.isfinite(np.asarray(se)).all()


def test_usable_inside_jit():
    f = jax.jit(lambda lw: (effective_sample_size(lw), *log_z_estimate(lw)))
    ess, log_z, se = f(jnp.array([0.0, -1.0, jnp.nan]))
    assert 0 < float(ess) < 1 and np.isfinite(float(log_z)) and np.isfinite(float(se))
