"""What every training method is made of, and nothing that depends on a particular method.

A method is a pair of pure functions (fab-jax's style), so the loop (boltzflow.train.loop) never special-cases one:

    init(key, model) -> method_state
    step(model, opt_state, method_state, key) -> (model, opt_state, method_state, metrics)

:class:`Problem` is what a method is built for; :func:`gradient_step` is the one optimiser step; :func:`masked_mean`
averages over the finite entries (non-finite log densities contribute nothing and are counted in the metrics).
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import optax


class Method(NamedTuple):
    init: Callable[[jax.Array, Any], Any]
    step: Callable


class Problem(NamedTuple):
    """What a method trains on: the target, the batch size, the optimiser, and for methods that run AIS the
    :class:`~boltzflow.flows.paths.Space` it runs in and the AIS settings (None for the others)."""

    target: Any
    batch_size: int
    optimizer: optax.GradientTransformation
    space: Any = None
    ais: Any = None


def gradient_step(loss_fn, model, opt_state, optimizer: optax.GradientTransformation, *args):
    """One optimiser step on ``loss_fn(model, *args) -> (loss, aux)``; returns (model, opt_state, loss, aux, |g|)."""
    (loss, aux), grads = eqx.filter_value_and_grad(loss_fn, has_aux=True)(model, *args)
    params = eqx.filter(model, eqx.is_inexact_array)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return eqx.apply_updates(model, updates), opt_state, loss, aux, optax.tree.norm(grads)


def masked_mean(values: jax.Array, mask: jax.Array) -> jax.Array:
    return jnp.sum(jnp.where(mask, values, 0.0)) / jnp.maximum(jnp.sum(mask), 1)


def sample_loss_method(loss_fn, problem: Problem) -> Method:
    """A stateless method whose loss only needs a key: ``loss_fn(model, key, n) -> (loss, metrics)``."""

    def step(model, opt_state, method_state, key):
        model, opt_state, loss, aux, gnorm = gradient_step(loss_fn, model, opt_state, problem.optimizer, key,
                                                           problem.batch_size)
        return model, opt_state, method_state, {"loss": loss, "grad_norm": gnorm, **aux}

    return Method(init=lambda key, model: (), step=step)
