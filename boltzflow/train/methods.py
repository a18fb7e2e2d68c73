"""Training methods as pure (init, step) pairs, looked up by name in :data:`METHODS`.

Every method has the same shape, so the loop (boltzflow.train.loop) never special-cases one:

    init(key, model) -> method_state
    step(model, opt_state, method_state, key) -> (model, opt_state, method_state, metrics)

Baselines on a flow q_theta and a target p (log p unnormalised), batch of n:

- ``reverse_kl``: KL(q||p) = E_q[log q(x) - log p(x)], reparameterised (x = f_theta(z)).
- ``forward_kl``: KL(p||q) = -E_p[log q(x)] + const, maximum likelihood on exact target samples or on a data
  file (method option ``data``, boltzflow.train.data).
- ``alpha2_is``: D_2(p||q) = log E_q[(p/q)^2] estimated with the flow's own samples, reparameterised:
  loss = logsumexp_i(2 log w_i) - log n with log w = log p - log q (FAB paper, "flow alpha=2" baseline).
- ``fab``: boltzflow.train.fab (alpha-divergence with AIS, with or without the prioritised buffer).
- ``snf_kl`` / ``snf_ml`` / ``snf_kl_ml``: boltzflow.snf (path KL, SNF eq. 13; ML on backward paths, eq. 14;
  their weighted sum with method options ``kl_weight``, ``ml_weight``, default 1 and 1).

Points where log p is not finite contribute nothing (masked) and are counted in ``n_nonfinite``.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import optax

from boltzflow.errors import BoltzflowError
from boltzflow.estimators import effective_sample_size


class Method(NamedTuple):
    init: Callable[[jax.Array, Any], Any]
    step: Callable


def gradient_step(loss_fn, model, opt_state, optimizer: optax.GradientTransformation, *args):
    """One optimiser step on ``loss_fn(model, *args) -> (loss, aux)``; returns (model, opt_state, loss, aux, |g|)."""
    (loss, aux), grads = eqx.filter_value_and_grad(loss_fn, has_aux=True)(model, *args)
    params = eqx.filter(model, eqx.is_inexact_array)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return eqx.apply_updates(model, updates), opt_state, loss, aux, optax.tree.norm(grads)


def masked_mean(values: jax.Array, mask: jax.Array) -> jax.Array:
    return jnp.sum(jnp.where(mask, values, 0.0)) / jnp.maximum(jnp.sum(mask), 1)


def method_options(cfg, name: str, defaults: dict) -> dict:
    """The method section's options over ``defaults``; an unknown option is a one-line error naming the valid ones."""
    opts = {k: v for k, v in cfg.method.items() if k != "name"}
    unknown = sorted(set(opts) - set(defaults))
    if unknown:
        raise BoltzflowError(f"unknown option(s) for method {name}: {', '.join(unknown)}; "
                             f"valid: {', '.join(defaults)}")
    return defaults | opts


def _sample_loss_method(loss_fn, batch_size: int, optimizer) -> Method:
    """A stateless method whose loss only needs a key: ``loss_fn(model, key, n) -> (loss, metrics)``."""

    def step(model, opt_state, method_state, key):
        model, opt_state, loss, aux, gnorm = gradient_step(loss_fn, model, opt_state, optimizer, key, batch_size)
        return model, opt_state, method_state, {"loss": loss, "grad_norm": gnorm, **aux}

    return Method(init=lambda key, model: (), step=step)


def build_reverse_kl(cfg, target, optimizer) -> Method:
    def loss_fn(model, key, n):
        x, log_q = model.sample_and_log_prob(key, n)
        log_w = target.log_prob(x) - log_q
        ok = jnp.isfinite(log_w)
        return -masked_mean(log_w, ok), {"ess": effective_sample_size(jax.lax.stop_gradient(log_w)),
                                         "n_nonfinite": jnp.sum(~ok)}

    return _sample_loss_method(loss_fn, cfg.train.batch_size, optimizer)


def build_forward_kl(cfg, target, optimizer) -> Method:
    from boltzflow.train.data import ml_sampler

    sample = ml_sampler(target, method_options(cfg, "forward_kl", {"data": None})["data"], "method forward_kl")

    def loss_fn(model, key, n):
        log_q = model.log_prob(jax.lax.stop_gradient(sample(key, n)))
        ok = jnp.isfinite(log_q)
        return -masked_mean(log_q, ok), {"n_nonfinite": jnp.sum(~ok)}

    return _sample_loss_method(loss_fn, cfg.train.batch_size, optimizer)


def build_alpha2_is(cfg, target, optimizer) -> Method:
    def loss_fn(model, key, n):
        x, log_q = model.sample_and_log_prob(key, n)
        log_w = target.log_prob(x) - log_q
        ok = jnp.isfinite(log_w)
        loss = jax.scipy.special.logsumexp(jnp.where(ok, 2.0 * log_w, -jnp.inf)) - jnp.log(n)
        return loss, {"ess": effective_sample_size(jax.lax.stop_gradient(log_w)), "n_nonfinite": jnp.sum(~ok)}

    return _sample_loss_method(loss_fn, cfg.train.batch_size, optimizer)


def _fab(cfg, target, optimizer):
    from boltzflow.train.fab import build_fab

    return build_fab(cfg, target, optimizer)


def _snf(kind):
    def build(cfg, target, optimizer):
        from boltzflow.snf import build_snf_method

        return build_snf_method(kind)(cfg, target, optimizer)

    return build


METHODS: dict[str, Callable] = {
    "fab": _fab,
    "snf_kl": _snf("kl"),
    "snf_ml": _snf("ml"),
    "snf_kl_ml": _snf("kl_ml"),
    "snf_alpha2": _snf("alpha2"),
    "reverse_kl": build_reverse_kl,
    "forward_kl": build_forward_kl,
    "alpha2_is": build_alpha2_is,
}


def build_method(cfg, target, optimizer) -> Method:
    name = cfg.method.get("name", "fab")
    if name not in METHODS:
        raise BoltzflowError(f"unknown method {name!r}; known: {', '.join(sorted(METHODS))}")
    return METHODS[name](cfg, target, optimizer)
