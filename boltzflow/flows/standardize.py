"""A fixed affine change of coordinates into the target's units: x = loc + scale * y, per dimension.

A target whose mass sits far from the origin, or at a scale far from 1, is hard for a flow whose base is N(0, I)
and whose splines live on [-B, B]. With loc and scale taken from the target (user bounds, or a short exploration:
boltzflow.autoflow), the flow below this layer models standardized coordinates y = (x - loc) / scale, where the
base, the spline bounds and the samplers' step sizes have their natural size:

    x = loc + scale * y,      dS_forward = log|det dx/dy| = sum_i log scale_i,      dS_inverse = -dS_forward.

The layer has no trainable parameters (loc and scale are static): it is a fixed map into the target's coordinates,
like :class:`~boltzflow.flows.internal.InternalCoordinates`, so it is kept last and samplers run below it
(``coordinate_map``; boltzflow.flows.paths.model_space, boltzflow.snf.builder), in the standardized coordinates
where one scalar HMC step size fits every dimension.
"""

from __future__ import annotations

import math

import equinox as eqx
import jax.numpy as jnp
import numpy as np

from boltzflow.errors import BoltzflowError
from boltzflow.flows.base import Layer


def _per_dim(value, dim: int, name: str) -> np.ndarray:
    arr = np.broadcast_to(np.asarray(value, np.float64), (dim,)) if np.ndim(value) == 0 else np.asarray(value,
                                                                                                         np.float64)
    if arr.shape != (dim,):
        raise BoltzflowError(f"{name} must be a number or a list of {dim} numbers, got {len(arr)} numbers")
    if not np.all(np.isfinite(arr)):
        raise BoltzflowError(f"{name} must be finite, got {arr.tolist()}")
    return arr


class Standardize(Layer):
    """x = loc + scale * y (forward), y = (x - loc) / scale (inverse); ``loc`` and ``scale`` are numbers or one per
    dimension (scale > 0)."""

    loc: tuple[float, ...] = eqx.field(static=True)
    scale: tuple[float, ...] = eqx.field(static=True)

    def __init__(self, dim: int, loc=0.0, scale=1.0):
        loc_arr, scale_arr = _per_dim(loc, dim, "loc"), _per_dim(scale, dim, "scale")
        if not np.all(scale_arr > 0):
            raise BoltzflowError(f"scale must be positive, got {scale_arr.tolist()}")
        self.loc = tuple(float(v) for v in loc_arr)
        self.scale = tuple(float(v) for v in scale_arr)

    @property
    def coordinate_map(self) -> bool:
        return True

    def _log_det(self, n: int, dtype):
        return jnp.full((n,), sum(math.log(s) for s in self.scale), dtype)

    def forward(self, x, key=None):
        loc, scale = jnp.asarray(self.loc, x.dtype), jnp.asarray(self.scale, x.dtype)
        return loc + scale * x, self._log_det(x.shape[0], x.dtype)

    def inverse(self, y, key=None):
        loc, scale = jnp.asarray(self.loc, y.dtype), jnp.asarray(self.scale, y.dtype)
        return (y - loc) / scale, -self._log_det(y.shape[0], y.dtype)
