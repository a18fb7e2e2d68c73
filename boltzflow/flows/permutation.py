"""Fixed reorderings of dimensions (log-det 0) and a learnable invertible linear mixing of real dimensions.

- :class:`Permutation`: y = x[:, perm], log|det| = 0. Allowed on circular dimensions (a permutation maps the torus
  to itself), but the layers after it must know where the circular dimensions went; ``Permutation.random`` with a
  ``circular`` mask permutes circular and real dimensions only among themselves, so the mask is unchanged.
- :class:`LULinear` (Kingma & Dhariwal 2018, Glow; used between coupling layers in NSF, Durkan et al. 2019):
  y = W x + b with W = L U, L unit lower triangular, U upper triangular with diagonal exp(s), so
  log|det W| = sum_i s_i (Glow section 3.2, with the fixed permutation P left to a separate layer).
  Initialised at W = I, b = 0 (the identity, exactly). Real dimensions only: a linear map does not act on a circle,
  so constructing one with any circular dimension raises.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from boltzflow.errors import BoltzflowError
from boltzflow.flows.base import Layer
from boltzflow.flows.distributions import circular_mask


class Permutation(Layer):
    """y = x[:, perm]; inverse x = y[:, argsort(perm)]; zero log-det."""

    perm: jax.Array
    inv: jax.Array

    def __init__(self, perm):
        perm = np.asarray(perm, int)
        if perm.ndim != 1 or sorted(perm.tolist()) != list(range(perm.shape[0])):
            raise BoltzflowError(f"not a permutation: {perm.tolist()}")
        self.perm = jnp.asarray(perm, jnp.int32)
        self.inv = jnp.asarray(np.argsort(perm), jnp.int32)

    @classmethod
    def reverse(cls, dim: int) -> "Permutation":
        return cls(np.arange(dim)[::-1])

    @classmethod
    def random(cls, key, dim: int, circular=None) -> "Permutation":
        """A random permutation; with ``circular`` given, one that maps circular to circular and real to real."""
        circ = circular_mask(dim, circular)
        perm = np.arange(dim)
        for group in (np.flatnonzero(~circ), np.flatnonzero(circ)):
            key, sub = jax.random.split(key)
            perm[group] = group[np.asarray(jax.random.permutation(sub, len(group)))]
        return cls(perm)

    def forward(self, x, key=None):
        return jnp.take(x, self.perm, axis=1), jnp.zeros(x.shape[0], x.dtype)

    def inverse(self, y, key=None):
        return jnp.take(y, self.inv, axis=1), jnp.zeros(y.shape[0], y.dtype)


class LULinear(Layer):
    """Learnable invertible linear map y = L U x + b (identity at initialisation); real dimensions only."""

    lower: jax.Array
    upper: jax.Array
    log_diag: jax.Array
    bias: jax.Array

    def __init__(self, dim: int, circular=None, dtype=jnp.float32):
        circ = circular_mask(dim, circular)
        if circ.any():
            raise BoltzflowError(
                f"LULinear cannot mix circular dimensions {np.flatnonzero(circ).tolist()}; "
                "circular dimensions can only be permuted (use Permutation)"
            )
        self.lower = jnp.zeros((dim, dim), dtype)
        self.upper = jnp.zeros((dim, dim), dtype)
        self.log_diag = jnp.zeros(dim, dtype)
        self.bias = jnp.zeros(dim, dtype)

    def _factors(self):
        eye = jnp.eye(self.log_diag.shape[0], dtype=self.log_diag.dtype)
        lo = jnp.tril(self.lower, -1) + eye
        up = jnp.triu(self.upper, 1) + jnp.diag(jnp.exp(self.log_diag))
        return lo, up

    def forward(self, x, key=None):
        lo, up = self._factors()
        y = x @ (lo @ up).T + self.bias
        return y, jnp.broadcast_to(jnp.sum(self.log_diag), x.shape[:1])

    def inverse(self, y, key=None):
        lo, up = self._factors()
        r = (y - self.bias).T
        z = jax.scipy.linalg.solve_triangular(lo, r, lower=True, unit_diagonal=True)
        x = jax.scipy.linalg.solve_triangular(up, z, lower=False).T
        return x, jnp.broadcast_to(-jnp.sum(self.log_diag), y.shape[:1])
