"""Coupling layers (Dinh et al. 2017, RealNVP; Durkan et al. 2019, NSF) with real and circular dimensions.

A coupling layer splits x into a conditioning part x_c and a transformed part x_t (a binary mask) and maps

    y_c = x_c,    y_t = tau(x_t; theta(x_c))                        (RealNVP eqs. 4-5; NSF section 3.1)

with tau an elementwise monotone transformer whose parameters theta come from a neural network (the conditioner)
of x_c. The Jacobian is block triangular, so log|det dy/dx| = sum_i log|tau'(x_t,i)| (RealNVP eq. 6), and the
inverse is x_t = tau^{-1}(y_t; theta(y_c)) (RealNVP eqs. 7-8).

Circular conditioning coordinates enter the conditioner as (cos x, sin x), so theta is periodic in them
(Rezende et al. 2020, section 3.1). Transformers:

- :class:`Affine` (RealNVP eq. 5): tau(x) = x exp(a) + t with a = c tanh(u / c), c = ``max_log_scale``.
  The log-scale is bounded in (-c, c), so one layer can scale by at most e^c and log|det| never overflows, while
  for small u, a ~ u (the usual exp parameterisation). u = t = 0 gives a = 0 and exp(0) = 1 exactly: identity.
  Real dimensions only.
- :class:`RQSpline` (NSF): the rational-quadratic spline of :mod:`boltzflow.flows.spline`, on [-B, B] with
  identity tails for real dimensions and periodic on [-pi, pi) for circular ones; zero parameters give exactly the
  identity.

The conditioner's last layer is initialised at zero, so a new coupling layer is exactly the identity.

The indices of the two parts are stored as integer arrays (leaves, not trainable: train on
``eqx.filter(model, eqx.is_inexact_array)``) ordered real-first, so that layers that differ only in *which*
dimensions they couple have identical structure and can be stacked (:func:`boltzflow.flows.compose.stack_layers`).
"""

from __future__ import annotations

from typing import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from boltzflow.errors import BoltzflowError
from boltzflow.flows.base import Layer
from boltzflow.flows.distributions import circular_mask
from boltzflow.flows.spline import rq_spline_forward, rq_spline_inverse, rq_spline_params

ACTIVATIONS: dict[str, Callable] = {
    "relu": jax.nn.relu,
    "silu": jax.nn.silu,
    "gelu": jax.nn.gelu,
    "tanh": jnp.tanh,
    "elu": jax.nn.elu,
    "softplus": jax.nn.softplus,
}


def get_activation(activation) -> Callable:
    if callable(activation):
        return activation
    try:
        return ACTIVATIONS[activation]
    except (KeyError, TypeError):
        raise BoltzflowError(
            f"unknown activation {activation!r}; expected one of: {', '.join(sorted(ACTIVATIONS))}"
        ) from None


class Affine(eqx.Module):
    """Elementwise affine transformer y = x exp(c tanh(u / c)) + t; 2 parameters (t, u) per dimension."""

    max_log_scale: float = eqx.field(static=True, default=3.0)

    supports_circular = False

    @property
    def params_per_dim(self) -> int:
        return 2

    def _shift_logscale(self, theta):
        c = self.max_log_scale
        return theta[..., 0], c * jnp.tanh(theta[..., 1] / c)

    def forward(self, x, theta, circular):
        t, a = self._shift_logscale(theta)
        return x * jnp.exp(a) + t, a

    def inverse(self, y, theta, circular):
        t, a = self._shift_logscale(theta)
        return (y - t) * jnp.exp(-a), -a


class RQSpline(eqx.Module):
    """Elementwise rational-quadratic spline transformer with ``bins`` bins; 3 * bins parameters per dimension.

    Real dimensions: interval [-bound, bound], identity outside. Circular dimensions: [-pi, pi), periodic.
    """

    bins: int = eqx.field(static=True, default=8)
    bound: float = eqx.field(static=True, default=5.0)
    min_bin: float = eqx.field(static=True, default=1e-3)
    min_derivative: float = eqx.field(static=True, default=1e-3)

    supports_circular = True

    @property
    def params_per_dim(self) -> int:
        return 3 * self.bins

    def _knots(self, theta, circular):
        return rq_spline_params(theta, circular, self.min_bin, self.min_derivative)

    def forward(self, x, theta, circular):
        w, h, d = self._knots(theta, circular)
        return rq_spline_forward(x, w, h, d, self.bound, circular)

    def inverse(self, y, theta, circular):
        w, h, d = self._knots(theta, circular)
        return rq_spline_inverse(y, w, h, d, self.bound, circular)


class Coupling(Layer):
    """One coupling layer: ``transformed`` dims are mapped by ``transformer`` conditioned on the others.

    Args:
        key: PRNG key for the conditioner.
        transformed: bool mask of length dim, True where the dimension is transformed (at least one True and,
            unless dim == 1, usually at least one False).
        transformer: :class:`Affine` or :class:`RQSpline` (any module with ``params_per_dim``, ``forward`` and
            ``inverse`` of the same signature).
        circular: bool mask or list of indices of circular dimensions (default none).
        hidden, depth, activation: conditioner MLP width, number of hidden layers, activation (name or callable).
        dtype: parameter dtype (default float32).
    """

    conditioner: eqx.nn.MLP
    transformer: eqx.Module
    cond_idx: jax.Array
    trans_idx: jax.Array
    n_cond_circ: int = eqx.field(static=True)
    n_trans_circ: int = eqx.field(static=True)

    def __init__(
        self,
        key,
        transformed,
        transformer,
        circular=None,
        hidden: int = 64,
        depth: int = 2,
        activation="silu",
        dtype=jnp.float32,
    ):
        transformed = np.asarray(transformed, bool)
        if transformed.ndim != 1 or not transformed.any():
            raise BoltzflowError("Coupling: 'transformed' must be a 1-D bool mask with at least one True")
        dim = transformed.shape[0]
        circ = circular_mask(dim, circular)
        if circ[transformed].any() and not transformer.supports_circular:
            raise BoltzflowError(f"{type(transformer).__name__} cannot transform circular dimensions; use RQSpline")
        cond, trans = ~transformed, transformed
        # real-first ordering within each part, so the circular flags are a static prefix/suffix split
        self.cond_idx = jnp.asarray(np.r_[np.flatnonzero(cond & ~circ), np.flatnonzero(cond & circ)], jnp.int32)
        self.trans_idx = jnp.asarray(np.r_[np.flatnonzero(trans & ~circ), np.flatnonzero(trans & circ)], jnp.int32)
        self.n_cond_circ = int((cond & circ).sum())
        self.n_trans_circ = int((trans & circ).sum())
        self.transformer = transformer
        n_cond = int(cond.sum())
        mlp = eqx.nn.MLP(
            in_size=n_cond + self.n_cond_circ,
            out_size=int(trans.sum()) * transformer.params_per_dim,
            width_size=hidden,
            depth=depth,
            activation=get_activation(activation),
            key=key,
            dtype=dtype,
        )
        last = mlp.layers[-1]
        self.conditioner = eqx.tree_at(
            lambda m: (m.layers[-1].weight, m.layers[-1].bias),
            mlp,
            (jnp.zeros_like(last.weight), jnp.zeros_like(last.bias)),
        )

    @property
    def _trans_circular(self) -> np.ndarray:
        n_t = self.trans_idx.shape[-1]
        return np.arange(n_t) >= n_t - self.n_trans_circ

    def _theta(self, xc):
        """Conditioner features [x_real, cos x_circ, sin x_circ] -> theta of shape (n, n_trans, params_per_dim)."""
        n_real = xc.shape[-1] - self.n_cond_circ
        ang = xc[:, n_real:]
        feats = jnp.concatenate([xc[:, :n_real], jnp.cos(ang), jnp.sin(ang)], axis=-1)
        out = jax.vmap(self.conditioner)(feats)
        return out.reshape(xc.shape[0], self.trans_idx.shape[-1], self.transformer.params_per_dim)

    def _apply(self, x, inverse: bool):
        xc = jnp.take(x, self.cond_idx, axis=1)
        xt = jnp.take(x, self.trans_idx, axis=1)
        theta = self._theta(xc)
        fn = self.transformer.inverse if inverse else self.transformer.forward
        yt, logd = fn(xt, theta, self._trans_circular)
        y = x.at[:, self.trans_idx].set(yt, unique_indices=True, indices_are_sorted=False)
        return y, jnp.sum(logd, axis=-1)

    def forward(self, x, key=None):
        return self._apply(x, inverse=False)

    def inverse(self, y, key=None):
        return self._apply(y, inverse=True)
