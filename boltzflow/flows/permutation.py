"""Fixed reorderings of dimensions (log-det 0) and a learnable invertible linear mixing of real dimensions.

- :class:`Permutation`: y = x[:, perm], log|det| = 0. Allowed on circular dimensions (a permutation maps the torus
  to itself), but the layers after it must know where the circular dimensions went; ``Permutation.random`` with a
  ``circular`` mask permutes circular and real dimensions only among themselves, so the mask is unchanged.
- :class:`LULinear` (Kingma & Dhariwal 2018, Glow; used between coupling layers in NSF, Durkan et al. 2019, and in
  every block of fab-torch's flows): y_R = W x_R + b on the real dimensions R, with W = L U, L unit lower
  triangular, U upper triangular with diagonal exp(s), so log|det dy/dx| = log|det W| = sum_i s_i (Glow section
  3.2, with the fixed permutation P left out: the coupling flows' random splits play its part). Initialised at
  W = I, b = 0 (the identity, exactly). Circular dimensions pass unchanged: a linear map does not act on a circle
  (y_C = x_C, so the Jacobian is block-triangular and the log-det is still sum_i s_i). Mixing the real dimensions
  makes a coupling flow independent of the target's axes: its couplings split fixed halves of the coordinates,
  and a target whose modes lie along other directions needs a learned rotation first.
"""

from __future__ import annotations

import math

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


def unit_triangular_inverse(n: jax.Array) -> jax.Array:
    """(I + N)^-1 for a strictly triangular (d, d) N, in ceil(log2 d) - 1 squarings: N is nilpotent (N^d = 0), so
    (I + N)^-1 = sum_{k<d} (-N)^k = (I - N)(I + N^2)(I + N^4)...(I + N^(2^(m-1))) exactly for 2^m >= d (each factor
    doubles the number of terms: (I + N)(I - N) = I - N^2, (I - N^2)(I + N^2) = I - N^4, ...). Its float32 error
    is within a small factor of a triangular solve's (tested against float64)."""
    d = n.shape[0]
    eye = jnp.eye(d, dtype=n.dtype)
    inv, power = eye - n, n @ n
    for _ in range(max(math.ceil(math.log2(d)) - 1, 0)):
        inv, power = inv @ (eye + power), power @ power
    return inv


class LULinear(Layer):
    """Learnable invertible linear map y = L U x + b of the real dimensions (identity at initialisation); circular
    dimensions (``circular``: mask or indices) pass unchanged."""

    lower: jax.Array
    upper: jax.Array
    log_diag: jax.Array
    bias: jax.Array
    real: jax.Array | None  # indices of the mixed dimensions; None: all of them

    def __init__(self, dim: int, circular=None, dtype=jnp.float32):
        circ = circular_mask(dim, circular)
        n = int((~circ).sum())
        if n == 0:
            raise BoltzflowError(f"LULinear needs at least one real dimension; all {dim} are circular")
        self.real = jnp.asarray(np.flatnonzero(~circ), jnp.int32) if circ.any() else None
        self.lower = jnp.zeros((n, n), dtype)
        self.upper = jnp.zeros((n, n), dtype)
        self.log_diag = jnp.zeros(n, dtype)
        self.bias = jnp.zeros(n, dtype)

    def _factors(self):
        eye = jnp.eye(self.log_diag.shape[0], dtype=self.log_diag.dtype)
        lo = jnp.tril(self.lower, -1) + eye
        up = jnp.triu(self.upper, 1) + jnp.diag(jnp.exp(self.log_diag))
        return lo, up

    def _apply(self, x, fn):
        """fn applied to the real dimensions of x, the circular ones left as they are."""
        if self.real is None:
            return fn(x)
        return x.at[:, self.real].set(fn(jnp.take(x, self.real, axis=1)))

    def forward(self, x, key=None):
        lo, up = self._factors()
        y = self._apply(x, lambda v: v @ (lo @ up).T + self.bias)
        return y, jnp.broadcast_to(jnp.sum(self.log_diag), x.shape[:1])

    def inverse(self, y, key=None):
        # W^-1 = U^-1 L^-1 as (d, d) matrices, then one matmul for the batch. U = (I + M) D with D = diag(exp(s))
        # and M = triu(upper, 1) D^-1 strictly upper, so U^-1 = D^-1 (I + M)^-1; both unit-triangular inverses by
        # unit_triangular_inverse (a few matmuls: 25x faster with its gradient than XLA's triangular solve on the
        # CPU at d = 32, which made a 32-D spline flow with LU maps 2.2x slower per log q and gradient)
        inv_diag = jnp.exp(-self.log_diag)
        l_inv = unit_triangular_inverse(jnp.tril(self.lower, -1))
        w_inv = inv_diag[:, None] * unit_triangular_inverse(jnp.triu(self.upper, 1) * inv_diag[None, :]) @ l_inv
        return (self._apply(y, lambda v: (v - self.bias) @ w_inv.T),
                jnp.broadcast_to(-jnp.sum(self.log_diag), y.shape[:1]))
