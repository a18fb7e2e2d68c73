"""A user's own log density as a target: ``FunctionTarget(log_prob, dim)``.

The function is validated once at construction on a probe batch of 8 standard-normal float32 points: it must
return an array of shape ``(8,)`` with at least one finite value. Any problem is a :class:`BoltzflowError` with
one line naming the function and the problem; an exception raised by the function itself is its ``__cause__``, with
the user's traceback.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from boltzflow.errors import BoltzflowError
from boltzflow.targets.base import Target

PROBE_SIZE = 8


def _describe(fn) -> str:
    mod = getattr(fn, "__module__", None)
    qual = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or type(fn).__name__
    return f"{mod}:{qual}" if mod else str(qual)


class FunctionTarget(Target):
    """Wrap ``log_prob: (n, dim) -> (n,)`` (unnormalised, pure JAX) as a :class:`Target`.

    Args:
        log_prob: the log density on a batch.
        dim: dimension of x.
        name: short name for reports (default: the function's name).
        log_z: exact log normaliser of ``exp(log_prob)`` if known.
        sampler: optional exact sampler ``(key, n) -> (n, dim)``.
        validate: evaluate on a probe batch now (default True).
        label: how error messages name the function (default ``module:qualname``).
    """

    def __init__(self, log_prob: Callable, dim: int, name: str | None = None, log_z: float | None = None,
                 sampler: Callable | None = None, validate: bool = True, label: str | None = None):
        label = label or _describe(log_prob)
        if not callable(log_prob):
            raise BoltzflowError(f"target {label}: log_prob must be callable, got {type(log_prob).__name__}")
        if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) or dim < 1:
            raise BoltzflowError(f"target {label}: dim must be a positive integer, got {dim!r}")
        if sampler is not None and not callable(sampler):
            raise BoltzflowError(f"target {label}: sampler must be callable, got {type(sampler).__name__}")
        self.dim = int(dim)
        self.name = name or getattr(log_prob, "__name__", "user_target")
        self.log_z = None if log_z is None else float(log_z)
        self._fn = log_prob
        self._sampler = sampler
        self._label = label
        if validate:
            self._validate()

    def _validate(self):
        x = jax.random.normal(jax.random.key(0), (PROBE_SIZE, self.dim), dtype=jnp.float32)
        try:
            out = self._fn(x)
        except BoltzflowError:
            raise
        except Exception as e:  # a user function failing on a probe batch is a user mistake
            msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
            raise BoltzflowError(  # chained: the user's frames stay in __cause__ (the CLI prints them)
                f"target {self._label}: log_prob raised {type(e).__name__} on a ({PROBE_SIZE}, {self.dim}) "
                f"float32 batch: {msg}"
            ) from e
        if not hasattr(out, "shape") or not hasattr(out, "dtype"):
            raise BoltzflowError(
                f"target {self._label}: log_prob must return an array of shape (n,), got {type(out).__name__}"
            )
        if tuple(out.shape) != (PROBE_SIZE,):
            raise BoltzflowError(
                f"target {self._label}: log_prob must map shape (n, {self.dim}) to (n,), got "
                f"{tuple(out.shape)} for n = {PROBE_SIZE}"
            )
        if not (jnp.issubdtype(out.dtype, jnp.floating) or jnp.issubdtype(out.dtype, jnp.integer)):
            raise BoltzflowError(f"target {self._label}: log_prob must return real numbers, got dtype {out.dtype}")
        if not bool(np.any(np.isfinite(np.asarray(out)))):
            raise BoltzflowError(
                f"target {self._label}: log_prob returned no finite value on {PROBE_SIZE} standard-normal points "
                f"(NaN or inf everywhere)"
            )

    def _log_prob(self, x: jax.Array) -> jax.Array:
        out = jnp.asarray(self._fn(x))
        if out.shape != x.shape[:1]:
            raise BoltzflowError(
                f"target {self._label}: log_prob must map shape (n, {self.dim}) to (n,), got {out.shape}"
            )
        return out

    @property
    def can_sample(self) -> bool:
        return self._sampler is not None

    def sample(self, key: jax.Array, n: int) -> jax.Array:
        if self._sampler is None:
            return super().sample(key, n)
        x = self._sampler(key, int(n))
        if getattr(x, "shape", None) != (int(n), self.dim):
            raise BoltzflowError(
                f"target {self._label}: sampler must return shape ({int(n)}, {self.dim}), got {getattr(x, 'shape', None)}"
            )
        return x

    def __repr__(self) -> str:
        return f"FunctionTarget({self._label}, dim={self.dim})"
