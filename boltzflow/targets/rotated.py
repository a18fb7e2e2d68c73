"""A target seen through a fixed random rotation: the same density with its modes off the coordinate axes.

For an inner target p on R^d and an orthogonal matrix Q (Q^T Q = I, det Q = +1), the rotated target is

    p_Q(x) = p(Q^T x),

the law of x = Q y for y ~ p. Since |det Q| = 1, its normaliser is the inner one (log Z unchanged), exact samples
are Q y, and the modes are Q times the inner modes. Q is drawn from the Haar measure on SO(d) from an integer seed
(QR of a Gaussian matrix, signs fixed by diag(R) > 0, one column flipped if det = -1; Mezzadri 2007), so a spec
``{"name": "many_well", "dim": 32, "rotation": 3}`` names one rotation reproducibly.

Why: a coupling flow splits fixed halves of the coordinates. The Many Well (a product of 2-D double wells) and the
GMM are aligned with those axes; the same targets rotated are not, which is what a molecule in Cartesian
coordinates or a posterior with correlated parameters looks like. Rows are batches, so with x and y as rows,
x = y Q^T and y = x Q.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from boltzflow.errors import BoltzflowError
from boltzflow.targets.base import Target


def random_rotation(dim: int, seed: int) -> np.ndarray:
    """A Haar-random rotation of R^dim (orthogonal, determinant +1) from ``seed``, float64."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise BoltzflowError(f"rotation must be a non-negative integer seed, got {seed!r}")
    a = np.random.default_rng(int(seed)).standard_normal((dim, dim))
    q, r = np.linalg.qr(a)
    q = q * np.sign(np.diag(r))[None, :]
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


class Rotated(Target):
    """``inner`` rotated by :func:`random_rotation` (module docstring): log p_Q(x) = log p(x Q) for rows x. Its
    report and pictures (boltzflow.targets.base) come from what it forwards, exact samples and modes, in this frame."""

    def __init__(self, inner: Target, rotation: int):
        if getattr(inner, "molecule", None) is not None:
            raise BoltzflowError("rotation is for targets on R^d; a molecule's energy is already rotation-invariant")
        self.inner = inner
        self.rotation = int(rotation)
        self.matrix = random_rotation(inner.dim, rotation)
        self.dim = inner.dim
        self.log_z = inner.log_z
        self.name = f"{inner.name}_rotated{self.rotation}"

    def _q(self, dtype):
        return jnp.asarray(self.matrix, dtype)

    def _log_prob(self, x: jax.Array) -> jax.Array:
        return self.inner.log_prob(x @ self._q(x.dtype))

    @property
    def can_sample(self) -> bool:
        return self.inner.can_sample

    def sample(self, key: jax.Array, n: int) -> jax.Array:
        y = self.inner.sample(key, n)
        return y @ self._q(y.dtype).T

    @property
    def has_modes(self) -> bool:
        return self.inner.has_modes

    def mode_points(self) -> jax.Array:
        y = self.inner.mode_points()
        return y @ self._q(y.dtype).T

    def modes_covered(self, samples) -> int:
        """The inner target's count on the samples rotated back (y = x Q)."""
        x = np.asarray(samples, np.float64)
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise BoltzflowError(f"samples must have shape (n, {self.dim}), got {x.shape}")
        return self.inner.modes_covered(x @ self.matrix)

    def __repr__(self) -> str:
        return f"Rotated({self.inner!r}, rotation={self.rotation})"
