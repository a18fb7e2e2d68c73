"""Neal's funnel (Neal 2003, "Slice sampling", sec. 8): a hierarchical density with scales that vary over orders of
magnitude.

    x0 ~ N(0, 3^2),      x_i | x0 ~ N(0, exp(x0))   (i = 1 .. dim-1; exp(x0) is the variance),

    log p(x) = -x0^2 / 18 - 0.5 log(18 pi) + sum_i [ -0.5 x_i^2 exp(-x0) - 0.5 x0 - 0.5 log(2 pi) ].

The density is normalised (``log_z = 0``) and sampled exactly by ancestral sampling.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from boltzflow.errors import BoltzflowError
from boltzflow.targets.base import Target

FUNNEL_X0_STD = 3.0


def funnel_log_marginal_x0(x0: jax.Array) -> jax.Array:
    """Exact normalised log density of x0, ``log N(x0; 0, 3^2)`` (elementwise)."""
    s = FUNNEL_X0_STD
    return -0.5 * (x0 / s) ** 2 - math.log(s) - 0.5 * math.log(2.0 * math.pi)


class Funnel(Target):
    """Neal's funnel in ``dim`` dimensions (default 10); normalised, exact samples.

    Args:
        dim: dimension >= 2 (x0 plus dim-1 conditionally Gaussian coordinates).
    """

    name = "funnel"
    log_z = 0.0

    def __init__(self, dim: int = 10):
        if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) or dim < 2:
            raise BoltzflowError(f"Funnel dim must be an integer >= 2, got {dim!r}")
        self.dim = int(dim)

    def _log_prob(self, x: jax.Array) -> jax.Array:
        if not jnp.issubdtype(x.dtype, jnp.floating):
            x = x.astype(jnp.zeros(()).dtype)
        x0 = x[:, 0]
        rest = x[:, 1:]
        m = self.dim - 1
        z = rest * jnp.exp(-0.5 * x0)[:, None]  # standardised conditionals
        log_cond = -0.5 * jnp.sum(z * z, axis=1) - 0.5 * m * x0 - 0.5 * m * math.log(2 * math.pi)
        return funnel_log_marginal_x0(x0) + log_cond

    def sample(self, key: jax.Array, n: int) -> jax.Array:
        """``n`` exact samples ``(n, dim)`` by ancestral sampling; jittable with static ``n``."""
        n = int(n)
        dt = jnp.zeros(()).dtype
        eps = jax.random.normal(key, (n, self.dim), dtype=dt)
        x0 = FUNNEL_X0_STD * eps[:, :1]
        return jnp.concatenate([x0, jnp.exp(0.5 * x0) * eps[:, 1:]], axis=1)

    @staticmethod
    def log_marginal_x0(x0: jax.Array) -> jax.Array:
        """Exact normalised log density of x0 (elementwise)."""
        return funnel_log_marginal_x0(x0)

    def __repr__(self) -> str:
        return f"Funnel(dim={self.dim})"
