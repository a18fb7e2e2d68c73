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


def no_cost(model) -> "Cost":
    return Cost({}, {})


class Cost(NamedTuple):
    """Evaluations a method spends: ``init`` once (e.g. filling FAB's buffer) and ``step`` per training step, each
    ``{"flow_evals": ..., "target_evals": ...}``. A flow evaluation is one sample through the model's layers once
    (forward or inverse, with or without gradient); a target evaluation is one log p (with its gradient where the
    sampler needs it) at one point, inside stochastic blocks and AIS included. The FAB paper's Table 8 counts so."""

    init: dict
    step: dict


class Method(NamedTuple):
    """``init(key, model) -> state``; ``step(model, opt_state, state, key) -> (model, opt_state, state, metrics)``;
    ``cost(model) -> Cost``; ``ess(model, key, n) -> ESS fraction`` of the model's importance sampling with n
    samples, the loop's periodic evaluation (None: the flow-IS ESS of the target, boltzflow.train.loop)."""

    init: Callable[[jax.Array, Any], Any]
    step: Callable
    cost: Callable[[Any], Cost] = no_cost
    ess: Callable | None = None


class Problem(NamedTuple):
    """What a method trains on: the target, the batch size, the optimiser, and for methods that run AIS the
    :class:`~boltzflow.flows.paths.Space` it runs in and the AIS settings (None for the others); ``seed``: None or
    weighted samples of the target found without the model, (x (m, d), log w (m,)) with mean w estimating Z
    (boltzflow.explore), for a method that can start from them (FAB's buffer)."""

    target: Any
    batch_size: int
    optimizer: optax.GradientTransformation
    space: Any = None
    ais: Any = None
    seed: Any = None


def gradient_step(loss_fn, model, opt_state, optimizer: optax.GradientTransformation, *args):
    """One optimiser step on ``loss_fn(model, *args) -> (loss, aux)``; returns (model, opt_state, loss, aux, |g|)."""
    (loss, aux), grads = eqx.filter_value_and_grad(loss_fn, has_aux=True)(model, *args)
    params = eqx.filter(model, eqx.is_inexact_array)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return eqx.apply_updates(model, updates), opt_state, loss, aux, optax.tree.norm(grads)


def masked_mean(values: jax.Array, mask: jax.Array) -> jax.Array:
    return jnp.sum(jnp.where(mask, values, 0.0)) / jnp.maximum(jnp.sum(mask), 1)


def sample_loss_method(loss_fn, problem: Problem, *, model_samples: bool = False, data_samples: bool = False
                       ) -> Method:
    """A stateless method whose loss only needs a key: ``loss_fn(model, key, n) -> (loss, metrics)``; its cost per
    step is a batch of model samples with their log p (``model_samples``) and / or a batch of data pulled back
    through the model (``data_samples``), stochastic blocks' target evaluations included."""
    n = problem.batch_size

    def cost(model) -> Cost:
        flow = n * (int(model_samples) + int(data_samples))
        target = n * ((1 + model.target_evals) * int(model_samples) + model.target_evals * int(data_samples))
        return Cost({}, {"flow_evals": flow, "target_evals": target})

    def step(model, opt_state, method_state, key):
        model, opt_state, loss, aux, gnorm = gradient_step(loss_fn, model, opt_state, problem.optimizer, key,
                                                           problem.batch_size)
        return model, opt_state, method_state, {"loss": loss, "grad_norm": gnorm, **aux}

    return Method(init=lambda key, model: (), step=step, cost=cost)
