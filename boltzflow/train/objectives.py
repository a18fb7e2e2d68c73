"""Objectives that need no AIS, one definition for flows and SNFs alike (path weights, boltzflow.flows.paths).

With log w = log p(x) - log q0(z) + sum dS the path weight of a forward path (SNF eq. 11; log p - log q for a flow)
and log q0(z) + D the backward-path log density of data x (SNF eq. 14; log q(x) for a flow), on a batch of n:

- ``reverse_kl``: J_KL = E_{q0 P_f}[-log w] (+ log Z), reparameterised (SNF eq. 13; KL(q||p) for a flow).
- ``forward_kl``: J_ML = E_{p(x) P_b(x -> z)}[-log q0(z) - D] (+ const) on exact target samples or on a data
  file (option ``data``, boltzflow.train.data): maximum likelihood for a flow, SNF eq. 14 for an SNF.
- ``kl_ml``: w_KL J_KL + w_ML J_ML (SNF sec. 4, "KL + ML" training; options ``kl_weight``, ``ml_weight``, ``data``).
- ``alpha2_is``: D_2 = log E[w^2] (up to -2 log Z) estimated with the model's own samples, reparameterised:
  logsumexp_i(2 log w_i) - log n (FAB paper's "flow alpha=2" baseline; on paths it bounds the marginal D_2 from
  above, by data processing). Its bootstrap with AIS is FAB (boltzflow.train.fab).

Points whose log weight / log density is not finite contribute nothing (masked) and are counted in
``n_nonfinite``; an SNF's blocks also report their acceptance and non-finite moves (``block_accept``,
``block_nonfinite``).
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp

from boltzflow.estimators import effective_sample_size
from boltzflow.flows.paths import backward_path, block_metrics, path_weights
from boltzflow.train.api import Method, Problem, masked_mean, sample_loss_method
from boltzflow.train.data import ml_sampler


@dataclass(frozen=True)
class NoSettings:
    """A method without options."""


@dataclass(frozen=True)
class MLSettings:
    data: str | None = None  # .npy / .npz file of samples of p; default: the target's exact sampler


@dataclass(frozen=True)
class KLMLSettings:
    kl_weight: float = 1.0
    ml_weight: float = 1.0
    data: str | None = None


def kl_loss(model, target, key, n: int):
    """J_KL (SNF eq. 13) and its metrics."""
    _, log_w, infos = path_weights(model, target, key, n)
    ok = jnp.isfinite(log_w)
    return -masked_mean(log_w, ok), {"ess": effective_sample_size(jax.lax.stop_gradient(log_w)),
                                      "n_nonfinite": jnp.sum(~ok), **block_metrics(infos)}


def ml_loss(model, sample, key, n: int):
    """J_ML (SNF eq. 14) on x = sample(key, n), samples of p, and its metrics."""
    k_x, k_b = jax.random.split(key)
    x = jax.lax.stop_gradient(sample(k_x, n))
    _, lq, _ = backward_path(model, x, k_b)
    ok = jnp.isfinite(lq)
    return -masked_mean(lq, ok), {"nll": -masked_mean(jax.lax.stop_gradient(lq), ok),
                                   "n_nonfinite_ml": jnp.sum(~ok)}


def alpha2_loss(model, target, key, n: int):
    """logsumexp_i(2 log w_i) - log n and its metrics."""
    _, log_w, infos = path_weights(model, target, key, n)
    ok = jnp.isfinite(log_w)
    loss = jax.scipy.special.logsumexp(jnp.where(ok, 2.0 * log_w, -jnp.inf)) - jnp.log(n)
    return loss, {"ess": effective_sample_size(jax.lax.stop_gradient(log_w)), "n_nonfinite": jnp.sum(~ok),
                  **block_metrics(infos)}


def build_reverse_kl(s: NoSettings, problem: Problem) -> Method:
    return sample_loss_method(lambda model, key, n: kl_loss(model, problem.target, key, n), problem,
                              model_samples=True)


def build_forward_kl(s: MLSettings, problem: Problem) -> Method:
    sample = ml_sampler(problem.target, s.data, "method forward_kl")
    return sample_loss_method(lambda model, key, n: ml_loss(model, sample, key, n), problem, data_samples=True)


def build_kl_ml(s: KLMLSettings, problem: Problem) -> Method:
    sample = ml_sampler(problem.target, s.data, "method kl_ml")

    def loss(model, key, n):
        k1, k2 = jax.random.split(key)
        l_kl, m_kl = kl_loss(model, problem.target, k1, n)
        l_ml, m_ml = ml_loss(model, sample, k2, n)
        return s.kl_weight * l_kl + s.ml_weight * l_ml, {**m_kl, **m_ml, "loss_kl": l_kl, "loss_ml": l_ml}

    return sample_loss_method(loss, problem, model_samples=True, data_samples=True)


def build_alpha2_is(s: NoSettings, problem: Problem) -> Method:
    return sample_loss_method(lambda model, key, n: alpha2_loss(model, problem.target, key, n), problem,
                              model_samples=True)
