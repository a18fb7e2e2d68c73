"""Base (latent) distributions: a standard normal on real dimensions times a uniform on circular ones.

One class covers the three cases (all real, all circular, mixed) through a boolean ``circular`` mask:

    q0(z) = prod_{i real} N(z_i; mu_i, sigma_i^2)  *  prod_{i circular} 1 / (2 pi),   z_i in [-pi, pi) if circular.

mu = 0, sigma = 1 unless ``learnable=True``, in which case mu and log sigma of the real dimensions are parameters
(initialised at 0, so the distribution starts standard). The circle density is periodic: a circular coordinate
outside [-pi, pi) is the same point as its wrapped value and has the same density.
"""

from __future__ import annotations

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from boltzflow.errors import BoltzflowError
from boltzflow.flows.base import Base
from boltzflow.errors import check_batch
from boltzflow.sharding import shard_batch


def circular_mask(dim: int, circular=None) -> np.ndarray:
    """Normalise ``circular`` (None, a bool mask of length ``dim``, or a list of indices) to a bool array."""
    if circular is None:
        return np.zeros(dim, bool)
    arr = np.asarray(circular)
    if arr.dtype == bool:
        if arr.shape != (dim,):
            raise BoltzflowError(f"circular mask must have shape ({dim},), got {arr.shape}")
        return arr.copy()
    if arr.size and (arr.ndim != 1 or not np.issubdtype(arr.dtype, np.integer)):
        raise BoltzflowError(f"circular must be a bool mask or a list of indices, got {circular!r}")
    mask = np.zeros(dim, bool)
    idx = arr.astype(int)
    if idx.size and (idx.min() < -dim or idx.max() >= dim):
        raise BoltzflowError(f"circular index out of range for dim={dim}: {list(idx)}")
    mask[idx] = True
    return mask


class StandardBase(Base):
    """N(0, I) on real dimensions x U[-pi, pi) on circular ones (optionally a learnable diagonal normal).

    Args:
        dim: dimension.
        circular: bool mask of length ``dim`` or list of circular indices; default none circular.
        learnable: make the mean and log standard deviation of the real dimensions trainable (init 0).
        dtype: floating dtype of samples and parameters (default float32).
    """

    circular: tuple[bool, ...] = eqx.field(static=True)
    dtype: np.dtype = eqx.field(static=True)
    loc: jax.Array | None
    log_scale: jax.Array | None

    def __init__(self, dim: int, circular=None, learnable: bool = False, dtype=jnp.float32):
        self.dim = int(dim)
        self.circular = tuple(bool(c) for c in circular_mask(self.dim, circular))
        self.dtype = np.dtype(dtype)
        if learnable:
            self.loc = jnp.zeros(self.dim, dtype)
            self.log_scale = jnp.zeros(self.dim, dtype)
        else:
            self.loc = self.log_scale = None

    @property
    def _circ(self) -> np.ndarray:
        return np.asarray(self.circular, bool)

    def sample(self, key: jax.Array, n: int) -> jax.Array:
        kn, ku = jax.random.split(key)
        z = jax.random.normal(kn, (n, self.dim), self.dtype)
        if self.loc is not None:
            z = self.loc + jnp.exp(self.log_scale) * z
        if any(self.circular):
            u = jax.random.uniform(ku, (n, self.dim), self.dtype, minval=-math.pi, maxval=math.pi)
            z = jnp.where(self._circ, u, z)
        return shard_batch(z)  # the batch of model samples starts here: split over the devices of a mesh

    def log_prob(self, z: jax.Array) -> jax.Array:
        check_batch(z, self.dim, "z")
        real = ~self._circ
        if self.loc is not None:
            eps = (z - self.loc) * jnp.exp(-self.log_scale)
            lp = -0.5 * eps**2 - 0.5 * math.log(2 * math.pi) - self.log_scale
        else:
            lp = -0.5 * z**2 - 0.5 * math.log(2 * math.pi)
        lp = jnp.where(real, lp, -math.log(2 * math.pi))
        return jnp.sum(lp, axis=-1)
