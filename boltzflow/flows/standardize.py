"""A fixed affine change of coordinates into the target's units: x = loc + R (scale * y), per dimension.

A target whose mass sits far from the origin, or at a scale far from 1, is hard for a flow whose base is N(0, I)
and whose splines live on [-B, B]. With loc and scale taken from the target (user bounds, or a short exploration:
boltzflow.autoflow), the flow below this layer models standardized coordinates y = R^-1 (x - loc) / scale, where the
base, the spline bounds and the samplers' step sizes have their natural size, and, with a rotation R whose
columns are the target's own axes (boltzflow.frame: the eigenvectors its Hessians share), the coupling layers split
coordinates along which the target factorises:

    x = loc + R (scale * y),   dS_forward = log|det dx/dy| = sum_i log scale_i + log|det R|,   dS_inverse = -dS_forward.

The layer has no trainable parameters (loc, scale and R are static): it is a fixed map into the target's coordinates,
like :class:`~boltzflow.flows.internal.InternalCoordinates`, so it is kept last and samplers run below it
(``coordinate_map``; boltzflow.flows.paths.model_space, boltzflow.snf.builder), in the standardized coordinates
where one scalar HMC step size fits every dimension.
"""

from __future__ import annotations

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
    """x = loc + R (scale * y) (forward), y = R^-1 (x - loc) / scale (inverse); ``loc`` and ``scale`` are numbers or
    one per dimension (scale > 0); ``rotation`` R is an optional (d, d) matrix (the target's axes as columns,
    boltzflow.frame), identity when None. log|det dx/dy| = sum_i log scale_i + log|det R|, computed once in float64
    from the matrix as stored (exact for any invertible R, 0 for an orthogonal one)."""

    loc: tuple[float, ...] = eqx.field(static=True)
    scale: tuple[float, ...] = eqx.field(static=True)
    rotation: tuple[tuple[float, ...], ...] | None = eqx.field(static=True)
    rotation_inv: tuple[tuple[float, ...], ...] | None = eqx.field(static=True)
    log_det: float = eqx.field(static=True)

    def __init__(self, dim: int, loc=0.0, scale=1.0, rotation=None):
        loc_arr, scale_arr = _per_dim(loc, dim, "loc"), _per_dim(scale, dim, "scale")
        if not np.all(scale_arr > 0):
            raise BoltzflowError(f"scale must be positive, got {scale_arr.tolist()}")
        self.loc = tuple(float(v) for v in loc_arr)
        self.scale = tuple(float(v) for v in scale_arr)
        log_det = float(np.sum(np.log(scale_arr)))
        self.rotation = self.rotation_inv = None
        if rotation is not None:
            r = np.asarray(rotation, np.float64)
            if r.shape != (dim, dim) or not np.all(np.isfinite(r)):
                raise BoltzflowError(f"rotation must be a finite {dim} x {dim} matrix, got shape {r.shape}")
            sign, log_abs = np.linalg.slogdet(r)
            if sign == 0 or np.linalg.cond(r) > 1e6:
                raise BoltzflowError(f"rotation must be invertible and well conditioned (condition number "
                                     f"{np.linalg.cond(r):.3g})")
            self.rotation = tuple(tuple(float(v) for v in row) for row in r)
            self.rotation_inv = tuple(tuple(float(v) for v in row) for row in np.linalg.inv(r))
            log_det += float(log_abs)
        self.log_det = log_det

    @property
    def coordinate_map(self) -> bool:
        return True

    def _log_det(self, n: int, dtype):
        return jnp.full((n,), self.log_det, dtype)

    def forward(self, x, key=None):
        loc, scale = jnp.asarray(self.loc, x.dtype), jnp.asarray(self.scale, x.dtype)
        v = scale * x
        if self.rotation is not None:
            v = v @ jnp.asarray(self.rotation, x.dtype).T
        return loc + v, self._log_det(x.shape[0], x.dtype)

    def inverse(self, y, key=None):
        loc, scale = jnp.asarray(self.loc, y.dtype), jnp.asarray(self.scale, y.dtype)
        v = y - loc
        if self.rotation_inv is not None:
            v = v @ jnp.asarray(self.rotation_inv, y.dtype).T
        return v / scale, -self._log_det(y.shape[0], y.dtype)
