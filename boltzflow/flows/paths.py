"""Path weights of any model built on the layer contract, and the space a sampler of q works in.

Forward paths z = y_0 -> ... -> y_T = x (SNF eq. 11):

    log w(z -> x) = log p(x) - log q0(z) + sum_t dS_t,        E_{q0 P_f}[w] = Z,

which for a deterministic flow is log p(x) - log q(x). Backward paths from data x (SNF eq. 14; the stochastic
blocks' inverse runs their kernel from x, boltzflow.snf.block): with D the sum of the inverse dS's,

    log q0(z) + D = log q(x)  (deterministic flow),   <= log q(x) in expectation over backward paths (an SNF),

by Jensen, log q(x) = log E_b[q0(z) e^D] >= E_b[log q0(z) + D]. Nothing here special-cases a layer: every layer
returns its dS, and the stochastic ones also their diagnostics (acceptance, non-finite counts), which
:func:`block_metrics` turns into training / evaluation metrics.

:class:`Space` is where an importance sampler started from q runs (AIS, FAB and its buffer): x-space for a flow
(:func:`flow_space`), or the path space of an SNF with Langevin blocks (boltzflow.snf.paths).
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from boltzflow.flows.base import Flow


def path_weights(model: Flow, target, key: jax.Array, n: int):
    """n forward paths: (x (n, d), log w (n,), infos) with log w = log p(x) - log q0(z) + sum dS (SNF eq. 11);
    ``infos`` are the stochastic layers' diagnostics (empty for a flow). Self-normalised weights of these samples
    give asymptotically unbiased estimates; logmeanexp(log w) estimates log Z."""
    x, log_q0, ds, infos = model.sample_with_path(key, n)
    return x, target.log_prob(x) - log_q0 + ds, infos


def backward_path(model: Flow, x: jax.Array, key: jax.Array):
    """Backward paths from data x (n, d): (z, log q0(z) + D, infos), D = sum of the inverse dS's. The second
    output is log q(x) for a deterministic flow and a lower bound in expectation for an SNF (module docstring)."""
    z, d, infos = model.run(x, key if model.stochastic else None, inverse=True)
    return z, model.base.log_prob(z) + d, infos


def backward_log_q(model: Flow, x: jax.Array, key: jax.Array) -> jax.Array:
    """log q(x) per sample (n,): exact for a flow, its backward-path lower bound (in expectation) for an SNF."""
    return backward_path(model, x, key)[1]


def block_metrics(infos, prefix: str = "") -> dict:
    """``{prefix}block_accept`` (one mean acceptance per stochastic block) and ``{prefix}block_nonfinite`` (moves
    rejected for non-finite densities, summed) from the diagnostics of one pass; empty for a flow."""
    if not infos:
        return {}
    return {f"{prefix}block_accept": jnp.stack([jnp.mean(i.accept) for i in infos]),
            f"{prefix}block_nonfinite": sum(jnp.sum(i.n_nonfinite) for i in infos)}


class Space(NamedTuple):
    """The points an importance sampler of q works with, and the densities it needs there.

    ``dim``: dimension of a point; ``sample_and_log_q(model, key, n) -> (points (n, dim), log q (n,))``;
    ``log_q(model, points) -> (n,)``; ``log_p(points) -> (n,)``, the unnormalised target (free of the model);
    ``x_dim``: the first ``x_dim`` coordinates of a point are the sample x.
    """

    dim: int
    sample_and_log_q: Callable
    log_q: Callable
    log_p: Callable
    x_dim: int


def _sample_and_log_q(model: Flow, key, n):
    return model.sample_and_log_prob(key, n)


def _log_q(model: Flow, x):
    return model.log_prob(x)


def flow_space(target) -> Space:
    """x-space of a normalizing flow: q is the flow, p the target."""
    return Space(target.dim, _sample_and_log_q, _log_q, target.log_prob, target.dim)
