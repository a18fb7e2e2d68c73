"""A batch of points with its two log densities cached, and the annealed density built from them.

Every annealed density in boltzflow is a geometric mixture of two densities, a *base* q and a *target* p:

    log pi_w(x) = w_q log q(x) + w_p log p(x),        w = (w_q, w_p).                         (1)

- AIS from q to g = p^alpha q^(1-alpha) (FAB paper, eq. 7) at inverse temperature beta:
  w_q = 1 - beta alpha, w_p = beta alpha (w_q < 0 for alpha > 1 and beta > 1/alpha, which is fine).
- The SNF interpolation u_lambda = (1 - lambda) u_prior + lambda u_target (SNF paper, sec. 4):
  w_q = 1 - lambda, w_p = lambda.

A :class:`Point` caches log q and log p (and, for gradient-based kernels, their gradients) separately, so moving to
another w, and every accept/reject decision, costs no density evaluation: each kernel evaluates the two densities
exactly once per new position (:func:`make_point`).

Non-finite values. Densities are stored in R U {-inf}: NaN and +inf become -inf, and gradient entries that are not
finite (or that belong to a non-finite value) become 0, so no NaN reaches a kernel's arithmetic. A point is
*valid* for w when every term of (1) with a non-zero weight is finite; an invalid point has log pi_w = -inf
(never NaN, whatever the sign of the weights), and kernels reject moves onto invalid points.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from boltzflow.errors import BoltzflowError

LogProbFn = Callable[[jax.Array], jax.Array]


class Point(NamedTuple):
    """A batch of positions with cached log densities. Shapes: x (n, d); log_q, log_p (n,); grads (n, d) or None."""

    x: jax.Array
    log_q: jax.Array
    log_p: jax.Array
    grad_log_q: jax.Array | None = None
    grad_log_p: jax.Array | None = None

    @property
    def has_grad(self) -> bool:
        return self.grad_log_q is not None


def _clean(v: jax.Array) -> jax.Array:
    """NaN and +inf -> -inf."""
    return jnp.where(jnp.isfinite(v), v, -jnp.inf)


def _check_values(v, n: int, what: str) -> None:
    if getattr(v, "shape", None) != (n,):
        raise BoltzflowError(f"{what} must return shape ({n},) for a batch of {n}, got {getattr(v, 'shape', None)}")


def _value(fn: LogProbFn, x: jax.Array, what: str) -> jax.Array:
    v = fn(x)
    _check_values(v, x.shape[0], what)
    return _clean(v.astype(x.dtype))


def _value_and_grad(fn: LogProbFn, x: jax.Array, what: str) -> tuple[jax.Array, jax.Array]:
    """Per-sample values and gradients from one reverse pass of sum_i fn(x)_i (fn must act row by row)."""

    def total(y):
        v = fn(y)
        _check_values(v, y.shape[0], what)
        v = v.astype(y.dtype)
        return jnp.sum(v), v

    (_, v), g = jax.value_and_grad(total, has_aux=True)(x)
    ok = jnp.isfinite(v)
    g = jnp.where(ok[:, None] & jnp.isfinite(g), g, 0.0)
    return _clean(v), g


def make_point(x: jax.Array, log_q_fn: LogProbFn, log_p_fn: LogProbFn, with_grad: bool,
               log_q: jax.Array | None = None) -> Point:
    """Evaluate log q and log p (and with ``with_grad`` their gradients) at ``x`` (n, d), once each.

    ``log_q`` may be passed when it is already known (e.g. returned by the sampler of q): without gradients
    ``log_q_fn`` is then not called at all; with gradients only its gradient is used and the given value kept, so
    that the cached log q is exactly the value the caller's weights use.
    """
    if x.ndim != 2:
        raise BoltzflowError(f"x must have shape (n, dim), got {x.shape}")
    if not with_grad:
        lq = _value(log_q_fn, x, "log_q_fn") if log_q is None else _clean(log_q.astype(x.dtype))
        return Point(x, lq, _value(log_p_fn, x, "log_p_fn"))
    lq, gq = _value_and_grad(log_q_fn, x, "log_q_fn")
    if log_q is not None:
        _check_values(log_q, x.shape[0], "log_q")
        lq = _clean(log_q.astype(x.dtype))
        gq = jnp.where(jnp.isfinite(lq)[:, None], gq, 0.0)
    lp, gp = _value_and_grad(log_p_fn, x, "log_p_fn")
    return Point(x, lq, lp, gq, gp)


def _weights(w, dtype):
    return jnp.asarray(w[0], dtype), jnp.asarray(w[1], dtype)


def is_valid(point: Point, w) -> jax.Array:
    """(n,) bool: every term of log pi_w with a non-zero weight is finite."""
    wq, wp = _weights(w, point.x.dtype)
    return ((wq == 0) | jnp.isfinite(point.log_q)) & ((wp == 0) | jnp.isfinite(point.log_p))


def annealed_log_prob(point: Point, w) -> jax.Array:
    """log pi_w = w_q log q + w_p log p at the cached values, -inf where the point is invalid; shape (n,)."""
    wq, wp = _weights(w, point.x.dtype)
    lq = jnp.where(jnp.isfinite(point.log_q), point.log_q, 0.0)
    lp = jnp.where(jnp.isfinite(point.log_p), point.log_p, 0.0)
    return jnp.where(is_valid(point, w), wq * lq + wp * lp, -jnp.inf)


def annealed_grad(point: Point, w) -> jax.Array:
    """grad log pi_w = w_q grad log q + w_p grad log p (non-finite parts already zeroed); shape (n, d)."""
    if not point.has_grad:
        raise BoltzflowError("this kernel needs gradients: build the point with make_point(..., with_grad=True)")
    wq, wp = _weights(w, point.x.dtype)
    return wq * point.grad_log_q + wp * point.grad_log_p


def select(mask: jax.Array, a: Point, b: Point) -> Point:
    """Row-wise ``where(mask, a, b)`` over all fields of two points of the same structure."""

    def pick(u, v):
        return jnp.where(mask.reshape(mask.shape + (1,) * (u.ndim - 1)), u, v)

    return jax.tree_util.tree_map(pick, a, b)


def strip_grad(point: Point) -> Point:
    return Point(point.x, point.log_q, point.log_p)
