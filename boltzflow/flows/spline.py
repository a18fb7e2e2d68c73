"""Rational-quadratic splines (Durkan et al. 2019, "Neural Spline Flows", NSF), real and circular, as pure functions.

A monotone rational-quadratic spline with K bins maps an interval [-B, B] onto itself through K + 1 knots
(x_k, y_k), k = 0..K, with x_0 = y_0 = -B, x_K = y_K = B and positive derivatives d_k at the knots. Inside bin k,
with w = x_{k+1} - x_k, h = y_{k+1} - y_k, s = h / w and xi = (x - x_k) / w in [0, 1] (NSF eq. 4):

    y = y_k + h [s xi^2 + d_k xi (1 - xi)] / [s + (d_{k+1} + d_k - 2 s) xi (1 - xi)]

and (NSF eq. 5)

    dy/dx = s^2 [d_{k+1} xi^2 + 2 s xi (1 - xi) + d_k (1 - xi)^2] / [s + (d_{k+1} + d_k - 2 s) xi (1 - xi)]^2.

The inverse solves a quadratic a xi^2 + b xi + c = 0 by its numerically stable root (NSF appendix A):

    a = h (s - d_k) + (y - y_k)(d_{k+1} + d_k - 2 s),  b = h d_k - (y - y_k)(d_{k+1} + d_k - 2 s),
    c = -s (y - y_k),   xi = 2 c / (-b - sqrt(b^2 - 4 a c)).

Each element chooses its domain (the ``circular`` flag broadcasts over elements):

- real: the spline lives on [-B, B]; outside it the map is the identity (linear tails, log-derivative 0), as in
  NSF section 3.1. The boundary derivatives d_0, d_K are taken as given (:func:`rq_spline_params` sets them to 1,
  which makes the derivative continuous across the tails).
- circular (Rezende et al. 2020, "Normalizing Flows on Tori and Spheres", section 3.1): the spline lives on
  [-pi, pi) with d_K := d_0, so that it is a diffeomorphism of the circle (value and derivative periodic);
  inputs are wrapped into [-pi, pi) first and outputs are returned in [-pi, pi); there are no tails.

Exact identity. The formulas are evaluated in algebraically equivalent forms (see :func:`_forward_in_bin`) that
give y == x bitwise and log-derivative == 0 exactly when widths == heights and all d_k == 1, which is what
:func:`rq_spline_params` returns for a zero parameter vector.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp


def rq_spline_params(raw, circular, min_bin: float = 1e-3, min_derivative: float = 1e-3):
    """Unconstrained ``(..., 3K)`` -> widths ``(..., K)``, heights ``(..., K)``, derivatives ``(..., K+1)``.

    - widths, heights: ``min_bin + (1 - K min_bin) softmax(raw)``, fractions of the interval summing to 1, each at
      least ``min_bin`` (as in NSF, appendix B). Equal raw values give exactly equal widths and heights.
    - derivatives: ``d = 1 + (1 - m) (softplus(r) - log 2) / log 2`` with m = ``min_derivative``; this is
      ``m + (1 - m) softplus(r) / softplus(0)``, so d > m and d(0) = 1 *exactly* (the centred softplus is evaluated
      as ``log(1/2 + e^r / 2)``, which is exactly 0 at r = 0).
      Real elements use raw derivatives 1..K-1 for the inner knots and d_0 = d_K = 1 (continuous with the linear
      tails; the first raw derivative is unused); circular elements use raw derivatives 0..K-1 and d_K = d_0.

    ``circular`` broadcasts against ``raw.shape[:-1]``.
    """
    n = raw.shape[-1]
    if n % 3:
        raise ValueError(f"spline parameters must have 3K entries on the last axis, got {n}")
    k = n // 3
    if k * min_bin >= 1:
        raise ValueError(f"min_bin={min_bin} too large for {k} bins")
    widths = _bins(raw[..., :k], min_bin)
    heights = _bins(raw[..., k : 2 * k], min_bin)
    d = 1 + (1 - min_derivative) / math.log(2.0) * _centred_softplus(raw[..., 2 * k :])
    circ = jnp.broadcast_to(jnp.asarray(circular), raw.shape[:-1])[..., None]
    edge = jnp.where(circ, d[..., :1], jnp.ones_like(d[..., :1]))
    return widths, heights, jnp.concatenate([edge, d[..., 1:], edge], axis=-1)


def rq_spline_forward(x, widths, heights, derivatives, bound, circular):
    """Elementwise spline y = f(x) and log|f'(x)|, both with the shape of ``x``.

    Args:
        x: inputs, any shape S.
        widths, heights: ``S + (K,)`` positive bin widths / heights as fractions of the interval (each sums to 1).
        derivatives: ``S + (K+1,)`` positive derivatives at the knots (for circular elements d_K is replaced by d_0).
        bound: B, half-width of the interval of real elements (scalar or broadcastable to S); ignored (pi) for
            circular elements.
        circular: bool, broadcastable to S.
    """
    return _rq_spline(x, widths, heights, derivatives, bound, circular, inverse=False)


def rq_spline_inverse(y, widths, heights, derivatives, bound, circular):
    """Elementwise inverse x = f^{-1}(y) and log|d f^{-1}/dy| = -log|f'(x)|; arguments as :func:`rq_spline_forward`."""
    return _rq_spline(y, widths, heights, derivatives, bound, circular, inverse=True)


def wrap_angle(x):
    """Map x onto [-pi, pi); elements already there are returned unchanged (bitwise)."""
    pi = jnp.asarray(math.pi, x.dtype)
    outside = (x < -pi) | (x >= pi)
    wrapped = jnp.mod(x + pi, 2 * pi) - pi
    wrapped = jnp.where(wrapped >= pi, wrapped - 2 * pi, wrapped)
    return jnp.where(outside, wrapped, x)


def _rq_spline(v, widths, heights, derivatives, bound, circular, inverse: bool):
    dtype = v.dtype
    pi = jnp.asarray(math.pi, dtype)
    circ = jnp.broadcast_to(jnp.asarray(circular), v.shape)
    half = jnp.where(circ, pi, jnp.asarray(bound, dtype))
    n_bins = widths.shape[-1]

    # Circular: d_K := d_0 (Rezende et al. 2020), so the derivative is periodic.
    last = jnp.arange(n_bins + 1) == n_bins
    derivatives = jnp.where(circ[..., None] & last, derivatives[..., :1], derivatives)

    # Knots on [-B, B]; the first and last are exactly -B and B.
    xk = _knots(widths, half)
    yk = _knots(heights, half)

    v = jnp.where(circ, wrap_angle(v), v)
    inside = (v >= -half) & (v <= half)
    vc = jnp.clip(v, -half, half)

    # Bin index (searchsorted over the K - 1 inner knots) and a one-hot gather: cheap for small K and its
    # gradient is a broadcast multiply rather than a scatter.
    src = yk if inverse else xk
    k = jnp.sum(vc[..., None] >= src[..., 1:-1], axis=-1)
    onehot = (k[..., None] == jnp.arange(n_bins)).astype(dtype)

    def pick(a):
        return jnp.sum(onehot * a, axis=-1)

    x0, x1 = pick(xk[..., :-1]), pick(xk[..., 1:])
    y0, y1 = pick(yk[..., :-1]), pick(yk[..., 1:])
    d0, d1 = pick(derivatives[..., :-1]), pick(derivatives[..., 1:])
    if inverse:
        out, logd = _inverse_in_bin(vc, x0, x1, y0, y1, d0, d1)
    else:
        out, logd = _forward_in_bin(vc, x0, x1, y0, y1, d0, d1)

    out = jnp.clip(out, -half, half)
    out = jnp.where(circ & (out >= pi), out - 2 * pi, out)
    out = jnp.where(inside, out, v)
    logd = jnp.where(inside, logd, jnp.zeros_like(logd))
    return out, logd


def _knots(fractions, half):
    c = jnp.cumsum(fractions[..., :-1], axis=-1)
    zero = jnp.zeros_like(fractions[..., :1])
    one = jnp.ones_like(fractions[..., :1])
    c = jnp.concatenate([zero, c, one], axis=-1)
    return -half[..., None] + (2 * half[..., None]) * c


def _forward_in_bin(x, x0, x1, y0, y1, d0, d1):
    """NSF eqs. 4-5 in bin [x0, x1] -> [y0, y1].

    With g = [s xi + d_k (1 - xi)] / den, eq. 4 reads y = y_k + (x - x_k) s g; we evaluate it as
    y = x + (y_k - x_k) + (x - x_k)(s g - 1) and the bracket of eq. 5 as
    [d_{k+1} xi + s (1 - xi)] xi + [s xi + d_k (1 - xi)] (1 - xi): all terms positive (no cancellation), and for
    s = d_k = d_{k+1} = 1, x_k = y_k every factor is exactly 1 and every correction exactly 0.
    """
    w, h = x1 - x0, y1 - y0
    s = h / w
    xi = jnp.clip((x - x0) / w, 0, 1)
    om = 1 - xi
    den = s + (d1 + d0 - 2 * s) * (xi * om)
    g = (s * xi + d0 * om) / den
    y = x + (y0 - x0) + (x - x0) * (s * g - 1)
    return y, _log_slope(s, xi, om, den, d0, d1)


def _inverse_in_bin(y, x0, x1, y0, y1, d0, d1):
    """NSF appendix A: x - x_k = w xi = (y - y_k) 2h / (b + sqrt(b^2 - 4ac)); exact-identity form as forward."""
    w, h = x1 - x0, y1 - y0
    s = h / w
    dy = y - y0
    t = dy * (d1 + d0 - 2 * s)
    a = h * (s - d0) + t
    b = h * d0 - t
    c = -s * dy
    disc = jnp.maximum(b * b - 4 * a * c, 0)
    r = 2 * h / (b + jnp.sqrt(disc))
    x = y + (x0 - y0) + dy * (r - 1)
    xi = jnp.clip(dy * r / w, 0, 1)
    om = 1 - xi
    den = s + (d1 + d0 - 2 * s) * (xi * om)
    return x, -_log_slope(s, xi, om, den, d0, d1)


def _log_slope(s, xi, om, den, d0, d1):
    """log dy/dx (NSF eq. 5) with the bracket as [d_{k+1} xi + s (1-xi)] xi + [s xi + d_k (1-xi)] (1-xi)."""
    inner = (d1 * xi + s * om) * xi + (s * xi + d0 * om) * om
    return jnp.log(s * s * inner / (den * den))


def _bins(raw, min_bin):
    k = raw.shape[-1]
    return min_bin + (1 - k * min_bin) * jax.nn.softmax(raw, axis=-1)


def _centred_softplus(r):
    """softplus(r) - log 2 = log((1 + e^r) / 2), exactly 0 at r = 0 (1/2 + 1/2 is exactly 1).

    Evaluated as log(1/2 + e^r / 2) rather than log1p(expm1(r) / 2): the same function to within an absolute
    error of a few float32 ulps of the result's scale, with exp and log, which XLA's CPU backend evaluated in
    1.5-2.5x less time than expm1 and log1p (benchmarks/spline_profile.py). r is capped at 60 (a derivative of at
    most ~87) so that exp cannot overflow in float32.
    """
    return jnp.log(0.5 + 0.5 * jnp.exp(jnp.minimum(r, 60.0)))
