"""Path weights of any model built on the layer contract, and the space a sampler of q works in.

Forward paths z = y_0 -> ... -> y_T = x (SNF eq. 11):

    log w(z -> x) = log p(x) - log q0(z) + sum_t dS_t,        E_{q0 P_f}[w] = Z,

which for a deterministic flow is log p(x) - log q(x). Backward paths from data x (SNF eq. 14; the stochastic
blocks' inverse runs their kernel from x, boltzflow.snf.block): with D the sum of the inverse dS's,

    log q0(z) + D = log q(x)  (deterministic flow),   <= log q(x) in expectation over backward paths (an SNF),

by Jensen, log q(x) = log E_b[q0(z) e^D] >= E_b[log q0(z) + D]. With K paths per sample (``paths=K``) the
estimate is their log-mean-exp, a bound that tightens as K grows (Burda et al. 2016, eq. 8 and Theorem 1), and a
forward path's weight pools it with K - 1 backward paths from its x:

    log w_K = log p(x) - log (1/K) [q0(z_1) e^{-sum dS} + sum_{k=2..K} q0(z_k) e^{D_k}],     E[w_K] = Z,

an importance weight of x on the space of K paths, whose proposal picks which of them runs forwards uniformly
(derivation: docs/concepts/path-weights.md); it tends to p(x)/q(x) as K grows, so its ESS is higher. For a
flow every path is the same and K changes nothing. Nothing here special-cases a layer: every layer
returns its dS, and the stochastic ones also their diagnostics (acceptance, non-finite counts), which
:func:`block_metrics` turns into training / evaluation metrics.

:class:`Space` is where an importance sampler started from q runs (AIS, FAB and its buffer): x-space for a flow
(:func:`flow_space`), or the path space of an SNF with Langevin blocks (boltzflow.snf.paths).
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp

from boltzflow.errors import BoltzflowError
from boltzflow.flows.base import Flow


def path_weights(model: Flow, target, key: jax.Array, n: int, paths: int = 1):
    """n forward paths: (x (n, d), log w (n,), infos) with log w = log p(x) - log q0(z) + sum dS (SNF eq. 11);
    ``infos`` are the stochastic layers' diagnostics (empty for a flow). Self-normalised weights of these samples
    give asymptotically unbiased estimates; logmeanexp(log w) estimates log Z. ``paths`` > 1 (a stochastic model):
    each forward path pooled with ``paths - 1`` backward paths from its x (module docstring), a weight of lower
    variance at the cost of those paths."""
    _check_paths(paths)
    x, log_q0, ds, infos = model.sample_with_path(key, n)
    log_q = log_q0 - ds
    if paths > 1 and model.stochastic:
        log_q = _pooled(log_q, model, x, key, paths - 1)
    return x, target.log_prob(x) - log_q, infos


def backward_path(model: Flow, x: jax.Array, key: jax.Array):
    """Backward paths from data x (n, d): (z, log q0(z) + D, infos), D = sum of the inverse dS's. The second
    output is log q(x) for a deterministic flow and a lower bound in expectation for an SNF (module docstring)."""
    z, d, infos = model.run(x, key if model.stochastic else None, inverse=True)
    return z, model.base.log_prob(z) + d, infos


def backward_log_q(model: Flow, x: jax.Array, key: jax.Array, paths: int = 1) -> jax.Array:
    """log q(x) per sample (n,): exact for a flow; for an SNF the log-mean-exp of ``paths`` backward-path
    estimates, a lower bound in expectation that tightens as ``paths`` grows (module docstring)."""
    _check_paths(paths)
    log_q = backward_path(model, x, key)[1]
    if paths > 1 and model.stochastic:
        log_q = _pooled(log_q, model, x, jax.random.fold_in(key, 0), paths - 1)
    return log_q


def _check_paths(paths: int) -> None:
    if paths < 1:
        raise BoltzflowError(f"paths must be a positive integer, got {paths}")


def _pooled(log_q: jax.Array, model: Flow, x: jax.Array, key: jax.Array, extra: int) -> jax.Array:
    """log (1/K) [exp(log_q) + sum of ``extra`` backward paths' exp(log q0(z_k) + D_k)], K = extra + 1, one path at
    a time (the memory of one)."""

    def add(total, k):
        return jnp.logaddexp(total, backward_path(model, x, k)[1]), None

    keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(1, extra + 1))
    return jax.lax.scan(add, log_q, keys)[0] - jnp.log(extra + 1.0)


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
    ``to_x(points) -> (n, target.dim)``: the samples x the points stand for; ``from_x(x) -> points``: its inverse
    (None where there is none: an SNF's path space).
    """

    dim: int
    sample_and_log_q: Callable
    log_q: Callable
    log_p: Callable
    to_x: Callable
    from_x: Callable | None = None


def _sample_and_log_q(model: Flow, key, n):
    return model.sample_and_log_prob(key, n)


def _log_q(model: Flow, x):
    return model.log_prob(x)


def _identity(x):
    return x


def flow_space(target) -> Space:
    """x-space of a normalizing flow: q is the flow, p the target."""
    return Space(target.dim, _sample_and_log_q, _log_q, target.log_prob, _identity, _identity)


def _without_last(model: Flow) -> Flow:
    return Flow(model.base, model.layers[:-1])


class PulledBack:
    """The target seen below a parameter-free layer g into the target's coordinates (internal -> Cartesian):

        log p_z(z) = log p(g(z)) + log|det J_g(z)|,

    so that p_z / q_z = p(x) / q(x) at x = g(z) for any model q_z below g. It stands in for the target wherever a
    sampler works below g: FAB's AIS (:func:`latent_space`) and an SNF's stochastic blocks (boltzflow.snf.builder).
    g must have no trained parameters (the pulled-back target would depend on the model); the internal-coordinate
    layer has none. Hashed by identity, like targets."""

    def __init__(self, target, layer):
        if jax.tree_util.tree_leaves(eqx.filter(layer, eqx.is_inexact_array)):
            raise BoltzflowError(f"the last layer {type(layer).__name__} has trained parameters; sampling below it "
                                 "would need a target that depends on the model")
        self.target, self.layer = target, layer
        self.name = f"{getattr(target, 'name', 'target')} below {type(layer).__name__}"

    def log_prob(self, z: jax.Array) -> jax.Array:
        x, ds = self.layer.forward(z)
        return self.target.log_prob(x) + ds


def latent_space(model: Flow, target) -> Space:
    """The space below a flow's last layer g when g is a fixed map into the target's coordinates (internal
    coordinates -> Cartesian, standardized -> original units): points z, q_z the flow without g, and the target
    pulled back through g (:class:`PulledBack`), so importance weights there equal p(x) / q(x) at x = g(z). FAB
    runs its AIS here, as the FAB paper does for alanine dipeptide (AIS in the flow's internal coordinates)."""
    last = model.layers[-1]
    pulled = PulledBack(target, last)
    return Space(model.base.dim, lambda m, k, n: _without_last(m).sample_and_log_prob(k, n),
                 lambda m, z: _without_last(m).log_prob(z), pulled.log_prob, lambda z: last.forward(z)[0],
                 None if last.stochastic else lambda x: last.inverse(x)[0])


def samples_below_last(model: Flow) -> bool:
    """Whether a model with a stochastic last layer is a flow below it: a last layer that is a fixed map into the
    target's coordinates (an augmented flow's :class:`~boltzflow.flows.equivariant.DropAugmented`, whose forward is
    deterministic and whose dS is the augmented target's log pi(A | y)) above deterministic layers. AIS then runs
    below it, on the target pulled back through it (:func:`latent_space`: p(y) pi(A | y) for DropAugmented)."""
    return bool(model.layers) and model.layers[-1].coordinate_map and not _without_last(model).stochastic


def model_space(model: Flow, target) -> Space:
    """Where AIS runs for a deterministic flow: x-space, or, if the flow's last layer is a fixed map into the
    target's coordinates (``Layer.coordinate_map``; a stochastic one above a flow too, :func:`samples_below_last`),
    the space below it (:func:`latent_space`)."""
    if model.layers and model.layers[-1].coordinate_map:
        return latent_space(model, target)
    return flow_space(target)
