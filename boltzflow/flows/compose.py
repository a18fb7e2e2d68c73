"""Composing layers: a chain of layers, and a stack of identically structured layers run by ``jax.lax.scan``.

For a composition f = f_L o ... o f_1 the log path ratios add (chain rule for log|det J|, and SNF eq. 11 for
stochastic blocks): dS = sum_l dS_l. :class:`Scan` traces one layer once whatever the depth, which keeps compile
time flat in the number of layers.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp

from boltzflow.flows.base import Layer


def _keys(key, n):
    return None if key is None else jax.random.split(key, n)


class Chain(Layer):
    """Layers applied in order (forward) or in reverse order (inverse)."""

    layers: tuple[Layer, ...]

    def __init__(self, layers):
        self.layers = tuple(layers)

    def forward(self, x, key=None):
        total = jnp.zeros(x.shape[0], x.dtype)
        keys = _keys(key, len(self.layers))
        for i, layer in enumerate(self.layers):
            x, ds = layer.forward(x, None if keys is None else keys[i])
            total = total + ds
        return x, total

    def inverse(self, y, key=None):
        total = jnp.zeros(y.shape[0], y.dtype)
        keys = _keys(key, len(self.layers))
        for i, layer in enumerate(reversed(self.layers)):
            y, ds = layer.inverse(y, None if keys is None else keys[i])
            total = total + ds
        return y, total

    @property
    def stochastic(self) -> bool:
        return any(layer.stochastic for layer in self.layers)

    @property
    def target_evals(self) -> int:
        return sum(layer.target_evals for layer in self.layers)


class Scan(Layer):
    """``n`` copies of one layer structure with stacked parameters (leading axis ``n``), applied with lax.scan.

    Build it with :func:`stack_layers`. ``layer(i)`` returns the i-th layer as an ordinary module.
    """

    stacked: Layer
    n: int = eqx.field(static=True)

    def layer(self, i: int) -> Layer:
        return jax.tree.map(lambda a: a[i] if eqx.is_array(a) else a, self.stacked)

    def _run(self, x, key, inverse: bool):
        arrays, static = eqx.partition(self.stacked, eqx.is_array)

        def step(carry, inp):
            x, total = carry
            params, k = inp
            layer = eqx.combine(params, static)
            y, ds = layer.inverse(x, k) if inverse else layer.forward(x, k)
            return (y, total + ds), None

        init = (x, jnp.zeros(x.shape[0], x.dtype))
        (y, total), _ = jax.lax.scan(step, init, (arrays, _keys(key, self.n)), reverse=inverse)
        return y, total

    def forward(self, x, key=None):
        return self._run(x, key, inverse=False)

    def inverse(self, y, key=None):
        return self._run(y, key, inverse=True)

    @property
    def stochastic(self) -> bool:
        return self.stacked.stochastic

    @property
    def target_evals(self) -> int:
        return self.n * self.stacked.target_evals


def stack_layers(layers) -> Scan:
    """Stack layers of identical structure (same static fields and array shapes) into one :class:`Scan`."""
    layers = list(layers)
    if not layers:
        raise ValueError("stack_layers needs at least one layer")
    parts = [eqx.partition(layer, eqx.is_array) for layer in layers]
    static = parts[0][1]
    for arrays, other in parts[1:]:
        same = jax.tree.structure(arrays) == jax.tree.structure(parts[0][0]) and eqx.tree_equal(other, static)
        if not same:
            raise ValueError("stack_layers: layers differ in structure (static fields, types or non-array leaves)")
    stacked = jax.tree.map(lambda *a: jnp.stack(a), *[arrays for arrays, _ in parts])
    return Scan(eqx.combine(stacked, static), len(layers))
