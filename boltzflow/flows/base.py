"""The one contract every layer obeys, deterministic or stochastic (bgflow's idea, in JAX).

A layer maps a batch forward (latent -> data direction) or backward and returns, per sample, its log
path-probability ratio ``dS``:

    forward(x, key)  -> (y, dS)      x, y: (n, dim);  dS: (n,)
    inverse(y, key)  -> (x, dS_inv)

- For a bijection, ``dS = log|det dy/dx|`` and ``dS_inv = log|det dx/dy| = -dS``; ``key`` is ignored.
- For a stochastic block (SNF paper, eq. 8), ``dS = log [q_backward(y -> x) / q_forward(x -> y)]`` of the
  sampled move, so that for a chain z = y_0 -> y_1 -> ... -> y_T = x the importance weight is, with no special
  case for any layer,

      log w = log p(x) - log q0(z) + sum_t dS_t       (SNF eq. 11, with log p = -u_X and log q0 = -u_Z).

  For a purely deterministic chain this is log p(x) - log q(x), the ordinary flow importance weight.

A layer may change the dimension (``out_dim``; e.g. internal -> Cartesian coordinates): the base has the latent
dimension and :attr:`Flow.dim` is the data dimension after all layers. A fixed map into the target's coordinates
(``coordinate_map``: internal coordinates, a standardization) is the last layer, and samplers run below it.

A :class:`Flow` is a base distribution and a tuple of layers; it is an equinox module (a pytree), so its
parameters are its array leaves and optax trains it directly.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp

from boltzflow.errors import check_batch


class Layer(eqx.Module):
    """Abstract layer. ``key`` may be ``None`` for deterministic layers."""

    def forward(self, x: jax.Array, key: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
        """``(y, dS)``: the layer applied to a batch ``x``, and its log path ratio per sample."""
        raise NotImplementedError

    def inverse(self, y: jax.Array, key: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
        """``(x, dS)``: the layer run backwards on a batch ``y``, and its log path ratio per sample."""
        raise NotImplementedError

    def run(self, x: jax.Array, key: jax.Array | None, inverse: bool):
        """``forward`` or ``inverse`` and the layer's diagnostics: (y, dS, info); ``info`` is None for a bijection
        and, for a stochastic block, its acceptance and non-finite counts (boltzflow.mcmc.anneal.AnnealInfo)."""
        y, ds = self.inverse(x, key) if inverse else self.forward(x, key)
        return y, ds, None

    @property
    def stochastic(self) -> bool:
        """Whether the layer draws random numbers (then ``dS`` is a log path ratio, not a log-determinant)."""
        return False

    @property
    def target_evals(self) -> int:
        """Evaluations of the target per sample when the layer runs (a stochastic block's MCMC moves); 0 here."""
        return 0

    @property
    def coordinate_map(self) -> bool:
        """True for a fixed, parameter-free map into the target's coordinates (internal coordinates -> Cartesian,
        standardized -> original units): such a layer is the model's last, and samplers of the model (FAB's AIS,
        an SNF's stochastic blocks) run below it, on the target pulled back through it."""
        return False

    def out_dim(self, in_dim: int) -> int:
        """Dimension of ``forward``'s output for an input of dimension ``in_dim``: the same for most layers; a layer
        that changes it (e.g. :class:`~boltzflow.flows.internal.InternalCoordinates`) overrides this."""
        return in_dim


class Base(eqx.Module):
    """Abstract base (latent) distribution q0 with ``sample(key, n)`` and batched ``log_prob``."""

    dim: int = eqx.field(static=True)

    def sample(self, key: jax.Array, n: int) -> jax.Array:
        """``n`` samples ``(n, dim)`` of the base."""
        raise NotImplementedError

    def log_prob(self, z: jax.Array) -> jax.Array:
        """The base's log density of a batch ``z``, ``(n,)``."""
        raise NotImplementedError


def _split(key, n):
    return [None] * n if key is None else list(jax.random.split(key, n))


class Flow(eqx.Module):
    """q(x): push a base distribution through ``layers`` (applied in order in the forward direction).

    For deterministic layers ``log_prob`` is exact (change of variables). With stochastic layers the model is an
    SNF: ``log_prob`` is undefined and one uses :meth:`sample_with_path` and path weights instead.
    """

    base: Base
    layers: tuple[Layer, ...]

    @property
    def dim(self) -> int:
        """Dimension of x, the data side: the base's dimension as the layers change it (most keep it)."""
        dim = self.base.dim
        for layer in self.layers:
            dim = layer.out_dim(dim)
        return dim

    @property
    def stochastic(self) -> bool:
        """Whether any layer is stochastic (an SNF): log q is then estimated from backward paths."""
        return any(layer.stochastic for layer in self.layers)

    @property
    def target_evals(self) -> int:
        """Target evaluations per sample of one pass through the layers (0 for a flow; an SNF's block moves)."""
        return sum(layer.target_evals for layer in self.layers)

    def run(self, x: jax.Array, key: jax.Array | None, inverse: bool):
        """Push x through all layers (in reverse order if ``inverse``); returns (y, sum_t dS_t, infos), ``infos``
        the tuple of the stochastic layers' diagnostics in the order they ran (empty for a bijection)."""
        check_batch(x, self.dim if inverse else self.base.dim, "x" if inverse else "z")
        total, infos = jnp.zeros(x.shape[0], x.dtype), []
        layers = reversed(self.layers) if inverse else self.layers
        for layer, k in zip(layers, _split(key, len(self.layers))):
            x, ds, info = layer.run(x, k, inverse)
            total = total + ds
            if info is not None:
                infos.append(info)
        return x, total, tuple(infos)

    def forward(self, z: jax.Array, key: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
        """Push z through all layers; returns (x, sum_t dS_t)."""
        return self.run(z, key, inverse=False)[:2]

    def inverse(self, x: jax.Array, key: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
        """Pull x back through all layers in reverse order; returns (z, sum_t dS_inv_t)."""
        return self.run(x, key, inverse=True)[:2]

    def sample_with_path(self, key: jax.Array, n: int):
        """Returns (x, log q0(z), sum dS, infos): everything a path weight needs (SNF eq. 11), and the stochastic
        layers' diagnostics."""
        kz, kl = jax.random.split(key)
        z = self.base.sample(kz, n)
        x, ds, infos = self.run(z, kl if self.stochastic else None, inverse=False)
        return x, self.base.log_prob(z), ds, infos

    def sample_and_log_prob(self, key: jax.Array, n: int) -> tuple[jax.Array, jax.Array]:
        """Exact samples of q and log q(x) from one pass (deterministic flows only)."""
        self._require_deterministic()
        x, log_q0, ds, _ = self.sample_with_path(key, n)
        return x, log_q0 - ds

    def sample(self, key: jax.Array, n: int) -> jax.Array:
        """``n`` samples ``(n, dim)`` of the flow."""
        return self.sample_with_path(key, n)[0]

    def log_prob(self, x: jax.Array) -> jax.Array:
        """log q(x) = log q0(f^-1(x)) + log|det d f^-1 / dx| (deterministic flows only)."""
        self._require_deterministic()
        z, ds_inv = self.inverse(x)
        return self.base.log_prob(z) + ds_inv

    def _require_deterministic(self) -> None:
        if self.stochastic:
            raise TypeError("log q(x) is intractable for a flow with stochastic layers; use path weights")
