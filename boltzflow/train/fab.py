"""Flow Annealed Importance Sampling Bootstrap (FAB; Midgley et al., ICLR 2023).

FAB trains a flow q_theta by minimising the (Amari) alpha-divergence, alpha = 2 by default (paper eq. 5),

    D_alpha(p||q) = -1/(alpha(1-alpha)) int p^alpha q^(1-alpha) dx,
    grad_theta D_alpha = -(1/alpha) int p^alpha q^(1-alpha) grad_theta log q dx,

estimated with annealed importance sampling (AIS) that starts from q and targets the minimum-variance importance
distribution of the alpha-divergence, g = p^alpha q^(1-alpha) (p^2/q for alpha = 2; paper eq. 7 and
Algorithm 2). With AIS samples x_i and log weights log w_i (w.r.t. g), the surrogate loss is

    S'(theta) = - sum_i softmax(log w)_i  log q_theta(x_i)                 (FAB without buffer, eq. 8 / Alg. 2)

where the AIS samples and weights carry no gradient. With the prioritised replay buffer (Algorithm 1,
boltzflow.train.buffer) each AIS pass adds its batch to the buffer, and L gradient steps follow, each on a
minibatch drawn with probability proportional to w (so the loss needs no further weights) and corrected for the
change of q since the sample was stored:

    L(theta) = - 1/N sum_i min(c_max, exp((1-alpha)(log q_theta(x_i) - log q_old(x_i)))) log q_theta(x_i),

after which the buffer's weights are multiplied by that correction and log q_old is replaced by log q_theta.

Seeding the buffer (boltzflow.explore; issue: modes the flow's AIS never reaches). Weighted samples (x_j, v_j) of p
found without the flow, E[mean_j v_j f(x_j)] = int p~ f (tempered SMC from a broad Gaussian), are importance
samples of g = p^alpha q^(1-alpha) too, with weights

    log w_j = log v_j + (alpha - 1)(log p~(x_j) - log q_theta(x_j))

(v_j p~^(alpha-1) q^(1-alpha) integrates f against g), on the same scale as AIS weights (E[w] = Z_g for both), so
they are the buffer's first entries, and AIS fills it on top. A mode the flow misses has q_theta tiny there, so its
entries get the largest weights and are drawn first: the flow is pulled onto every mode the exploration found before
its AIS ever visits it, and once it covers the mode its own AIS keeps it.

The AIS transition kernel's step sizes are adapted during training (boltzflow.mcmc.step_size) and frozen at
evaluation. The whole iteration (AIS pass, buffer insertion, L optimiser steps) is one jitted function; the first
iteration runs the passes that fill the buffer before its own. AIS, its weights and the step sizes:
docs/concepts/ais.md.

Where FAB runs is a :class:`~boltzflow.flows.paths.Space`, chosen by the experiment (boltzflow.experiment):
x-space for a flow, or, for an SNF with Langevin blocks, the space of its paths in the coordinates where the
backward path density is free of theta (boltzflow.snf.paths): there the SNF is a flow, and everything above applies
verbatim.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp

from boltzflow.ais import ais_from_settings
from boltzflow.errors import BoltzflowError
from boltzflow.estimators import effective_sample_size
from boltzflow.flows.paths import Space
from boltzflow.train.api import Cost, Method, Problem, gradient_step, masked_mean
from boltzflow.train.buffer import build_prioritised_buffer


@dataclass(frozen=True)
class FabSettings:
    """The ``method`` section of FAB."""

    alpha: float = 2.0
    buffer: bool = True
    buffer_size: int | None = None  # default 100 x batch
    min_buffer_length: int | None = None  # default 10 x batch
    n_updates: int = 4  # L: gradient steps per AIS pass (with buffer)
    w_adjust_clip: float = 10.0  # c_max

    def __post_init__(self):
        if not self.alpha > 0 or self.n_updates < 1 or not self.w_adjust_clip > 0:
            raise BoltzflowError("FAB needs alpha > 0, n_updates >= 1 and w_adjust_clip > 0")
        for name in ("buffer_size", "min_buffer_length"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise BoltzflowError(f"FAB's {name} must be a positive integer, got {getattr(self, name)}")


class FabState(NamedTuple):
    ais_state: object
    buffer: object  # BufferState, or () without a buffer


def fab_no_buffer_loss(model, x, log_w, log_q_fn):
    """S'(theta) = -sum_i softmax(log w)_i log q_theta(x_i) (no gradient through x or w); ``log_q_fn`` is the
    space's log q (:class:`~boltzflow.flows.paths.Space`). Points without a finite weight are evaluated at 0
    instead (their term is masked, and a masked NaN would still reach the gradient through ``where``); a batch
    with no valid point has loss 0 and gradient 0."""
    w_ok = jnp.isfinite(log_w)
    log_q = log_q_fn(model, jnp.where(w_ok[:, None], x, 0.0))
    ok = w_ok & jnp.isfinite(log_q)
    w = jax.nn.softmax(jnp.where(ok, log_w, jnp.where(jnp.any(ok), -jnp.inf, 0.0)))
    return -jnp.sum(jnp.where(ok, w * log_q, 0.0)), {"n_nonfinite": jnp.sum(~ok)}


def fab_buffer_loss(model, x, log_q_old, valid, alpha: float, clip: float, log_q_fn):
    """Algorithm 1's loss on a buffer minibatch; aux carries the log weight correction and the new log q
    (``log_q_fn`` as in :func:`fab_no_buffer_loss`)."""
    log_q = log_q_fn(model, x)
    log_correction = (1.0 - alpha) * (jax.lax.stop_gradient(log_q) - log_q_old)
    ok = valid & jnp.isfinite(log_q) & jnp.isfinite(log_correction)
    correction = jnp.minimum(jnp.exp(jnp.where(ok, log_correction, 0.0)), clip)
    loss = -masked_mean(correction * log_q, ok)
    return loss, (log_correction, jax.lax.stop_gradient(log_q))


def build_fab(s: FabSettings, problem: Problem) -> Method:
    """FAB's (init, step) in ``problem.space``, with AIS from ``problem.ais`` (an AISSettings)."""
    alpha, n, optimizer = s.alpha, problem.batch_size, problem.optimizer
    space: Space = problem.space
    ais = ais_from_settings(space.log_p, problem.ais, alpha=alpha)

    def run_ais(model, ais_state, key):
        # AIS runs outside any differentiated function: its samples and weights carry no gradient.
        return ais.run(key, ais_state, lambda k, m: space.sample_and_log_q(model, k, m),
                       lambda v: space.log_q(model, v), n, adapt=True)

    def costs(model, n_passes_init: int, n_loss_batches: int) -> Cost:
        """One AIS pass evaluates log q and log p ``ais.evals_per_sample`` times per sample (log q is a pass
        through the model, whose stochastic blocks evaluate the target too); the loss evaluates log q once per
        sample and loss batch."""
        per_eval_target = 1 + model.target_evals
        ais_pass = {"flow_evals": n * ais.evals_per_sample, "target_evals": n * ais.evals_per_sample * per_eval_target}
        step = {"flow_evals": ais_pass["flow_evals"] + n_loss_batches * n,
                "target_evals": ais_pass["target_evals"] + n_loss_batches * n * model.target_evals}
        return Cost({k: v * n_passes_init for k, v in ais_pass.items()}, step)

    def ais_metrics(res, ais_state):
        m = {"ais_ess": effective_sample_size(res.log_w), "ais_nonfinite": res.info.n_nonfinite}
        if ais.betas.shape[0] > 2:  # with no intermediate distribution there is no kernel to report on
            m |= {"ais_accept": res.info.accept.mean(), "ais_step_size": jnp.mean(ais_state.step_sizes)}
        return m

    if not s.buffer:
        def step(model, opt_state, state: FabState, key):
            res, ais_state = run_ais(model, state.ais_state, key)
            model, opt_state, loss, aux, gnorm = gradient_step(fab_no_buffer_loss, model, opt_state, optimizer,
                                                               res.x, res.log_w, space.log_q)
            return model, opt_state, FabState(ais_state, ()), {
                "loss": loss, "grad_norm": gnorm, **aux, **ais_metrics(res, ais_state)}

        return Method(init=lambda key, model: FabState(ais.init_state(), ()), step=step,
                      cost=lambda model: costs(model, 0, 1))

    max_len = s.buffer_size or 100 * n
    min_len = s.min_buffer_length or 10 * n
    if min_len < n:
        raise BoltzflowError(f"min_buffer_length ({min_len}) must be at least the batch size ({n})")
    buffer = build_prioritised_buffer(space.dim, max_len, min_len)
    n_updates, clip = s.n_updates, s.w_adjust_clip
    # Before the first minibatch AIS puts min_len samples in the buffer, on top of any seed samples as far as the
    # buffer holds both; the first step runs these passes before its own (one AIS in the compiled step, not a
    # second program compiled for the fill).
    n_seed = 0 if problem.seed is None else min(len(problem.seed[0]), max_len)
    fill_to = min(min_len + n_seed, max_len)
    n_fill = math.ceil((fill_to - n_seed) / n)

    def fill(params, static, state: FabState, key) -> tuple[FabState, dict]:
        """The step's AIS pass into the buffer (the model as ``eqx.partition`` splits it), after the ``n_fill`` that
        first fill it if it holds fewer than ``fill_to`` samples; returns the new state and the metrics of the step's
        own pass."""

        @jax.jit  # traced once: eval_shape's trace is reused by the loop's (jit caches traces by signature)
        def one_pass(params, ais_state, buf, k):
            res, new_ais_state = run_ais(eqx.combine(params, static), ais_state, k)
            return new_ais_state, buffer.add(buf, res.x, res.log_w, res.log_q), ais_metrics(res, ais_state)

        def body(carry):
            i, ais_state, buf, _ = carry
            return i + 1, *one_pass(params, ais_state, buf, jax.random.fold_in(key, i))

        shapes = jax.eval_shape(one_pass, params, state.ais_state, state.buffer, key)[2]
        zeros = jax.tree_util.tree_map(lambda a: jnp.zeros(a.shape, a.dtype), shapes)
        n_passes = 1 + jnp.where(state.buffer.length < fill_to, n_fill, 0)
        _, ais_state, buf, metrics = jax.lax.while_loop(lambda c: c[0] < n_passes, body,
                                                        (jnp.zeros((), jnp.int32), *state, zeros))
        return FabState(ais_state, buf), metrics

    def init(key, model) -> FabState:
        dtype = jax.tree_util.tree_leaves(eqx.filter(model, eqx.is_inexact_array))[0].dtype
        buf = buffer.init(dtype)
        if problem.seed is not None:
            buf = seed_buffer(model, buf, *problem.seed)
        return FabState(ais.init_state(), buf)

    @eqx.filter_jit
    def _seed_entries(model, x, log_w):
        z = space.from_x(x)
        log_q, log_p = space.log_q(model, z), space.log_p(z)
        return z, log_w + (alpha - 1.0) * (log_p - log_q), log_q

    def seed_buffer(model, buf, x, log_w):
        """The exploration's samples as buffer entries with the seeding weights log w_j of the module docstring,
        the first ones."""
        if space.from_x is None:
            raise BoltzflowError("FAB cannot seed its buffer in an SNF's path space; set explore.seed_buffer: false")
        dtype = buf.x.dtype
        x, log_w = jnp.asarray(x, dtype)[-max_len:], jnp.asarray(log_w, dtype)[-max_len:]
        return buffer.add(buf, *_seed_entries(model, x, log_w))

    def step(model, opt_state, state: FabState, key):
        k_ais, k_buf = jax.random.split(key)
        params, static = eqx.partition(model, eqx.is_array)
        state, ais_m = fill(params, static, state, k_ais)

        def update(carry, k):
            params, opt_state, buf = carry
            batch = buffer.sample(k, buf, n)
            model, opt_state, loss, (log_corr, log_q), gnorm = gradient_step(
                fab_buffer_loss, eqx.combine(params, static), opt_state, optimizer,
                batch.x, batch.log_q_old, batch.valid, alpha, clip, space.log_q)
            buf = buffer.adjust(buf, batch.idx, jnp.where(batch.valid, log_corr, -jnp.inf), log_q)
            return (eqx.filter(model, eqx.is_array), opt_state, buf), (loss, gnorm)

        (params, opt_state, buf), (losses, gnorms) = jax.lax.scan(
            update, (params, opt_state, state.buffer), jax.random.split(k_buf, n_updates))
        model = eqx.combine(params, static)
        metrics = {"loss": losses.mean(), "grad_norm": gnorms.mean(),
                   "buffer_ess": effective_sample_size(buf.log_w), **ais_m}
        return model, opt_state, FabState(state.ais_state, buf), metrics

    return Method(init=init, step=step, cost=lambda model: costs(model, n_fill, n_updates))
