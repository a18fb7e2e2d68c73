"""The prioritised replay buffer: ring insertion, sampling proportional to w without replacement, corrections."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from boltzflow.errors import BoltzflowError
from boltzflow.train.buffer import build_prioritised_buffer


def _filled(log_w, dim=2):
    buf = build_prioritised_buffer(dim, max_length=len(log_w), min_length=1)
    x = jnp.arange(len(log_w) * dim, dtype=jnp.float32).reshape(len(log_w), dim)
    return buf, buf.add(buf.init(), x, jnp.asarray(log_w, jnp.float32), jnp.zeros(len(log_w)))


def test_ring_insertion_overwrites_oldest_and_drops_nonfinite():
    buf = build_prioritised_buffer(1, max_length=5, min_length=1)
    s = buf.init()
    s = buf.add(s, jnp.ones((3, 1)), jnp.zeros(3), jnp.zeros(3))
    assert int(s.length) == 3 and int(s.index) == 3
    s = buf.add(s, 2 * jnp.ones((3, 1)), jnp.array([0.0, jnp.nan, 1.0]), jnp.zeros(3))
    assert int(s.length) == 5 and int(s.index) == 1
    np.testing.assert_array_equal(np.asarray(s.x[:, 0]), [2, 1, 1, 2, 0])  # slot 0 overwritten, NaN slot zeroed
    assert np.isneginf(np.asarray(s.log_w)[4]) and np.isfinite(np.asarray(s.log_w)[:4]).all()


def test_first_draw_is_proportional_to_weights_chi_square():
    w = np.array([1.0, 2.0, 3.0, 4.0, 10.0])
    buf, s = _filled(np.log(w))
    draws = jax.vmap(lambda k: buf.sample(k, s, 3).idx)(jax.random.split(jax.random.key(0), 20000))
    first = np.asarray(draws[:, 0])
    counts = np.bincount(first, minlength=len(w))
    assert stats.chisquare(counts, len(first) * w / w.sum()).pvalue > 1e-3
    # without replacement: no index repeats inside a draw
    assert all(len(set(row)) == 3 for row in np.asarray(draws[:200]).tolist())


def test_ordered_pairs_follow_sampling_without_replacement():
    """P(i then j) = w_i/W * w_j/(W - w_i): the Gumbel top-k order is a Plackett-Luce draw."""
    w = np.array([1.0, 2.0, 3.0, 6.0])
    buf, s = _filled(np.log(w))
    draws = np.asarray(jax.vmap(lambda k: buf.sample(k, s, 2).idx)(jax.random.split(jax.random.key(1), 30000)))
    pairs = list(itertools.permutations(range(len(w)), 2))
    counts = np.array([np.sum((draws[:, 0] == i) & (draws[:, 1] == j)) for i, j in pairs])
    W = w.sum()
    expected = np.array([w[i] / W * w[j] / (W - w[i]) for i, j in pairs]) * len(draws)
    assert stats.chisquare(counts, expected).pvalue > 1e-3


def test_padding_is_marked_invalid_when_few_entries_are_finite():
    buf, s = _filled([0.0, -np.inf, -np.inf, -np.inf])
    sample = buf.sample(jax.random.key(0), s, 3)
    assert int(sample.valid.sum()) == 1 and int(sample.idx[0]) == 0


def test_adjust_multiplies_weights_and_drops_nonfinite():
    buf, s = _filled([0.0, 1.0, 2.0])
    s2 = buf.adjust(s, jnp.array([0, 2]), jnp.array([0.5, jnp.inf]), jnp.array([-1.0, -2.0]))
    np.testing.assert_allclose(np.asarray(s2.log_w), [0.5, 1.0, -np.inf])
    np.testing.assert_allclose(np.asarray(s2.log_q_old)[0], -1.0)


def test_bad_sizes_are_clear_errors():
    with pytest.raises(BoltzflowError, match="min_length"):
        build_prioritised_buffer(2, max_length=10, min_length=20)
    buf = build_prioritised_buffer(2, max_length=4, min_length=2)
    with pytest.raises(BoltzflowError, match="cannot add"):
        buf.add(buf.init(), jnp.zeros((5, 2)), jnp.zeros(5), jnp.zeros(5))
