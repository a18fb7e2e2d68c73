"""The target contract: a batched log density, its dimension, and where known log Z and exact samples.

A target is a plain Python object (hashed by identity, so it can be closed over or be a static field of an
equinox module). Subclasses implement ``_log_prob`` on a checked ``(n, dim)`` batch; the public ``log_prob``
checks shapes at trace time, so the check costs nothing inside ``jax.jit``.
"""

from __future__ import annotations

import jax

from boltzflow.errors import BoltzflowError, check_batch


class Target:
    """Unnormalised density p(x) = exp(-u(x)) / Z on R^dim.

    Attributes:
        name: short name used in reports.
        dim: dimension of x.
        log_z: exact log normaliser of exp(-u) when known, else ``None``.
    """

    name: str = "target"
    dim: int
    log_z: float | None = None

    def log_prob(self, x: jax.Array) -> jax.Array:
        """Unnormalised log density, ``(n, dim) -> (n,)``."""
        check_batch(x, self.dim)
        out = self._log_prob(x)
        assert out.shape == x.shape[:1], (out.shape, x.shape)
        return out

    def _log_prob(self, x: jax.Array) -> jax.Array:
        raise NotImplementedError

    @property
    def can_sample(self) -> bool:
        return type(self).sample is not Target.sample

    @property
    def has_modes(self) -> bool:
        """Whether the target knows its modes (``mode_points`` and ``modes_covered`` work)."""
        return type(self).mode_points is not Target.mode_points

    def mode_points(self) -> jax.Array:
        """One point on every mode, ``(n_modes, dim)``; only targets with a known mode set override this."""
        raise BoltzflowError(f"target {self.name!r} has no known mode set")

    def modes_covered(self, samples) -> int:
        """How many modes the samples ``(n, dim)`` visit (each target documents its rule)."""
        raise BoltzflowError(f"target {self.name!r} has no known mode set")

    def sample(self, key: jax.Array, n: int) -> jax.Array:
        """Exact samples ``(n, dim)``; only targets that can sample override this."""
        raise BoltzflowError(f"target {self.name!r} has no exact sampler")

    def energy(self, x: jax.Array) -> jax.Array:
        """u(x) = -log p(x) (unnormalised)."""
        return -self.log_prob(x)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(dim={self.dim})"

