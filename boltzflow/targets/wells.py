"""Double well (2-D) and Many Well (dim = 2k): the SNF and FAB toy benchmarks.

The double-well energy of Wu, Koehler & Noe (NeurIPS 2020, "Stochastic Normalizing Flows", sec. 5 and
supplement) and Midgley et al. (ICLR 2023, "Flow Annealed Importance Sampling Bootstrap", sec. 5.2)::

    u(x1, x2) = x1^4 - 6 x1^2 - 0.5 x1 + 0.5 x2^2 ,        p(x) = exp(-u(x)) / Z .

x1 and x2 are independent, so ``Z = Z_x1 * sqrt(2 pi)`` with ``Z_x1 = int exp(-(x^4 - 6 x^2 - 0.5 x)) dx
= 11784.50927`` (adaptive quadrature; the test suite recomputes it). The minima are x1 = -1.7108 (u = -8.139) and
x1 = +1.7525 (u = -9.871), separated by a barrier at x1 = -0.04169; P(x1 > 0) = 0.8443.

Many Well (FAB) puts k = dim / 2 independent copies of the double well on the pairs (x0, x1), (x2, x3), ...:
``log Z = k (log Z_x1 + 0.5 log 2 pi)`` (164.6957 for dim 32) and 2^k modes.

Exact samples: x2 ~ N(0, 1); x1 by rejection sampling (Midgley et al., appendix) from the proposal
``g = 0.2 N(-1.7, 0.5^2) + 0.8 N(1.7, 0.5^2)`` with bound ``p_x1 <= 3 g`` (the supremum of ``p_x1 / g`` is
2.591, at x1 = 1.762, so the bound holds; acceptance rate 1/3). The sampler is jittable with a static ``n``: it
draws a batch of ~3.3 n proposals and keeps the first n accepted, looping (``lax.while_loop``) in the rare case
that fewer than n were accepted, so it always returns exactly n exact samples.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from boltzflow.errors import BoltzflowError
from boltzflow.targets.base import Target

#: ``int exp(-(x^4 - 6 x^2 - 0.5 x)) dx`` over R (scipy.integrate.quad, absolute error ~1e-10).
Z_X1 = 11784.509265127828
LOG_Z_X1 = math.log(Z_X1)
LOG_Z_PAIR = LOG_Z_X1 + 0.5 * math.log(2.0 * math.pi)
#: Local maximum of the x1 energy (the barrier between the two wells): the middle root of 4x^3 - 12x - 0.5.
X1_BARRIER = -0.041690821280395855
#: Minima of the x1 energy.
X1_MINIMA = (-1.7108290437397553, 1.7525198625890717)
#: Mode test set coordinate (FAB): x1 in {-1.7, +1.7}, x2 = 0.
X1_MODE = 1.7

_PROPOSAL_MEANS = (-1.7, 1.7)
_PROPOSAL_WEIGHTS = (0.2, 0.8)
_PROPOSAL_STD = 0.5
_LOG_BOUND = math.log(3.0)  # p_x1(x) <= 3 g(x) for all x


def energy_x1(x1: jax.Array) -> jax.Array:
    """The double-well energy along x1, ``x1^4 - 6 x1^2 - 0.5 x1`` (elementwise)."""
    x2 = x1 * x1
    return x2 * (x2 - 6.0) - 0.5 * x1  # factored: +inf (not inf - inf) for huge |x1|


def log_marginal_x1(x1: jax.Array) -> jax.Array:
    """Exact normalised marginal log density of x1: ``-energy_x1(x1) - log Z_x1`` (elementwise)."""
    return -energy_x1(x1) - LOG_Z_X1


def free_energy_x1(x1: jax.Array) -> jax.Array:
    """Exact free energy along x1 in units of kT, ``F(x1) = -log p(x1)`` (normalised, elementwise).

    This is the reference curve of the SNF paper's double-well free-energy benchmark (Wu et al. 2020, fig. 3).
    """
    return -log_marginal_x1(x1)


def _proposal_log_prob(x: jax.Array) -> jax.Array:
    """log g(x) for the two-Gaussian proposal."""
    s = _PROPOSAL_STD
    comps = [
        math.log(w) - 0.5 * ((x - m) / s) ** 2 - math.log(s) - 0.5 * math.log(2.0 * math.pi)
        for m, w in zip(_PROPOSAL_MEANS, _PROPOSAL_WEIGHTS)
    ]
    return jnp.logaddexp(comps[0], comps[1])


def _proposal_sample(key: jax.Array, m: int, dtype) -> jax.Array:
    k_comp, k_norm = jax.random.split(key)
    right = jax.random.uniform(k_comp, (m,), dtype=dtype) < _PROPOSAL_WEIGHTS[1]
    mean = jnp.where(right, _PROPOSAL_MEANS[1], _PROPOSAL_MEANS[0]).astype(dtype)
    return mean + _PROPOSAL_STD * jax.random.normal(k_norm, (m,), dtype=dtype)


def sample_x1(key: jax.Array, m: int, dtype=None, oversample: float = 3.3) -> jax.Array:
    """``m`` exact samples of the double-well x1 marginal, shape ``(m,)``; jittable with static ``m``.

    Rejection sampling: accept a proposal y ~ g with probability ``p_x1(y) / (3 g(y))``. Each round draws
    ``ceil(oversample * m) + 32`` proposals (one round almost always suffices at the default) and keeps accepted
    ones, in order, until m are collected.
    """
    dtype = jnp.zeros(()).dtype if dtype is None else dtype
    m = int(m)
    batch = int(math.ceil(oversample * m)) + 32

    def body(state):
        key, buf, count = state
        key, k_prop, k_acc = jax.random.split(key, 3)
        y = _proposal_sample(k_prop, batch, dtype)
        log_ratio = log_marginal_x1(y) - _LOG_BOUND - _proposal_log_prob(y)
        u = jax.random.uniform(k_acc, (batch,), dtype=dtype)
        accept = jnp.log(u) < log_ratio
        pos = count + jnp.cumsum(accept, dtype=jnp.int32) - 1
        idx = jnp.where(accept & (pos < m), pos, m)  # index m is out of bounds: dropped
        buf = buf.at[idx].set(y, mode="drop")
        count = jnp.minimum(count + jnp.sum(accept, dtype=jnp.int32), m).astype(jnp.int32)
        return key, buf, count

    init = (key, jnp.zeros((m,), dtype), jnp.zeros((), jnp.int32))
    _, buf, _ = jax.lax.while_loop(lambda s: s[2] < m, body, init)
    return buf


class ManyWell(Target):
    """k = dim / 2 independent double wells on the pairs (x0, x1), (x2, x3), ... (Midgley et al. 2023).

    ``log p(x) = -sum_i u(x_{2i}, x_{2i+1})`` (unnormalised), ``log_z = k (log Z_x1 + 0.5 log 2 pi)``.

    Args:
        dim: an even dimension >= 2 (default 32, the FAB benchmark).
    """

    name = "many_well"

    def __init__(self, dim: int = 32):
        if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) or dim < 2 or dim % 2:
            raise BoltzflowError(f"ManyWell dim must be an even integer >= 2, got {dim!r}")
        self.dim = int(dim)
        self.n_pairs = self.dim // 2
        self.log_z = self.n_pairs * LOG_Z_PAIR

    def _log_prob(self, x: jax.Array) -> jax.Array:
        if not jnp.issubdtype(x.dtype, jnp.floating):
            x = x.astype(jnp.zeros(()).dtype)
        x1 = x[:, 0::2]
        x2 = x[:, 1::2]
        return -jnp.sum(energy_x1(x1) + 0.5 * x2 * x2, axis=1)

    @staticmethod
    def pair_log_prob(x: jax.Array) -> jax.Array:
        """Unnormalised log density of one copy (x1, x2), ``(n, 2) -> (n,)``: every pair's exact marginal."""
        return -(energy_x1(x[:, 0]) + 0.5 * x[:, 1] ** 2)

    # Exact samples -------------------------------------------------------------------------------------------------
    def sample(self, key: jax.Array, n: int) -> jax.Array:
        """``n`` exact samples ``(n, dim)``; jittable with static ``n``."""
        n = int(n)
        dtype = jnp.zeros(()).dtype
        k1, k2 = jax.random.split(key)
        x1 = sample_x1(k1, n * self.n_pairs, dtype).reshape(n, self.n_pairs)
        x2 = jax.random.normal(k2, (n, self.n_pairs), dtype=dtype)
        return jnp.stack([x1, x2], axis=-1).reshape(n, self.dim)

    # Marginals -----------------------------------------------------------------------------------------------------
    @staticmethod
    def log_marginal_x1(x1: jax.Array) -> jax.Array:
        """Exact normalised log density of one copy's x1 coordinate (elementwise); see :func:`log_marginal_x1`."""
        return log_marginal_x1(x1)

    @staticmethod
    def free_energy_x1(x1: jax.Array) -> jax.Array:
        """Exact free energy ``-log p(x1)`` (kT units, normalised) of one copy's x1 coordinate (elementwise)."""
        return free_energy_x1(x1)

    # Modes ---------------------------------------------------------------------------------------------------------
    @property
    def n_modes(self) -> int:
        return 2**self.n_pairs

    def mode_points(self) -> jax.Array:
        """The FAB mode test set: all 2^k points with x1 = +-1.7 in every copy and x2 = 0, shape ``(2^k, dim)``.

        Row r has x1 of copy i equal to +1.7 if bit i of r is 1, else -1.7.
        """
        if self.n_pairs > 20:
            raise BoltzflowError(
                f"the mode set of ManyWell(dim={self.dim}) has 2^{self.n_pairs} points: too many to build"
            )
        bits = (np.arange(self.n_modes)[:, None] >> np.arange(self.n_pairs)[None, :]) & 1
        pts = np.zeros((self.n_modes, self.dim), dtype=np.float32)
        pts[:, 0::2] = np.where(bits == 1, X1_MODE, -X1_MODE)
        return jnp.asarray(pts, dtype=jnp.zeros(()).dtype)

    def modes_covered(self, samples) -> int:
        """Number of distinct modes visited: a sample is in the mode given by which side of the barrier
        (x1 = -0.0417, the local maximum of the x1 energy) each copy's x1 lies on. Non-finite rows are ignored."""
        x = np.asarray(samples, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise BoltzflowError(f"samples must have shape (n, {self.dim}), got {x.shape}")
        x = x[np.all(np.isfinite(x), axis=1)]
        if len(x) == 0:
            return 0
        signs = x[:, 0::2] > X1_BARRIER
        return int(np.unique(np.packbits(signs, axis=1), axis=0).shape[0])

    def __repr__(self) -> str:
        return f"ManyWell(dim={self.dim})"


class DoubleWell(ManyWell):
    """The 2-D double well of the SNF paper (Wu, Koehler & Noe 2020) and FAB: ``ManyWell(dim=2)``.

    ``log p(x1, x2) = -(x1^4 - 6 x1^2 - 0.5 x1) - 0.5 x2^2`` (unnormalised), ``log_z = log Z_x1 + 0.5 log 2 pi``.
    """

    name = "double_well"

    def __init__(self):
        super().__init__(dim=2)

    def __repr__(self) -> str:
        return "DoubleWell()"
