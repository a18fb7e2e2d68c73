"""The kernel contract and the Metropolis-Hastings accept/reject shared by all Metropolised kernels.

Every transition kernel is a pure function with one signature,

    step(key, point, w, step_size, log_q_fn, log_p_fn) -> (point, KernelInfo)

acting on a batch (n, d) :class:`~boltzflow.mcmc.point.Point` and the annealed density pi_w of
``boltzflow.mcmc.point`` (eq. 1 there); ``step_size`` is a scalar or a per-dimension (d,) array. It returns, per
sample, the log backward/forward path-probability ratio of the move (SNF paper, eq. 8),

    dS = log [ K_b(x' -> x) / K_f(x -> x') ],

so that a chain of such moves carries the exact path weight of SNF eq. 11. For a kernel in detailed balance
with pi_w, choosing K_b = K_f gives dS = log pi_w(x) - log pi_w(x') (SNF eq. 22, dS = u(y') - u(y)); a rejected
move has dS = 0. Unadjusted kernels (ULA, underdamped Langevin) return their own path ratio (SNF eqs. 19-20).

Non-finite densities never change the batch shape: a move onto (or, for trajectories, through) a point where pi_w
is not finite is rejected (the sample stays), counted in ``n_nonfinite``, and contributes dS = 0. A sample that
starts at an invalid point stays there.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from boltzflow.mcmc.point import Point, annealed_log_prob, select


class KernelInfo(NamedTuple):
    """Per-move diagnostics: ``accept`` (n,) acceptance probability (MH kernels) or 1/0 moved indicator
    (unadjusted kernels); ``dS`` (n,) log path ratio; ``n_nonfinite`` () int32, moves rejected for non-finite
    densities."""

    accept: jax.Array
    dS: jax.Array
    n_nonfinite: jax.Array


class Kernel(NamedTuple):
    """A transition kernel: its ``step`` function and what a sampler needs to know about it.

    - ``needs_grad``: the points it consumes and returns carry gradients.
    - ``target_accept``: default acceptance rate for step-size adaptation (None: not adaptable).
    - ``metropolised``: satisfies detailed balance with pi_w exactly (dS = log pi_w(x) - log pi_w(x')).
    - ``evals_per_step``: evaluations of pi_w (log q and log p, with gradients if ``needs_grad``) per sample and move
      (HMC: ``n_leapfrog``; underdamped: ``n_steps``; the others: 1), for counting a sampler's cost.
    """

    name: str
    step: Callable[..., tuple[Point, KernelInfo]]
    needs_grad: bool
    target_accept: float | None
    metropolised: bool
    evals_per_step: int = 1


def as_step_size(step_size, x: jax.Array) -> jax.Array:
    """A scalar or (d,) step size as an array of x's dtype that broadcasts against (n, d)."""
    return jnp.asarray(step_size, x.dtype)


def metropolis_hastings(key: jax.Array, current: Point, proposal: Point, w, log_ratio: jax.Array,
                        proposal_ok: jax.Array) -> tuple[Point, KernelInfo]:
    """Accept ``proposal`` with probability min(1, exp(log_ratio)) where both points are valid.

    ``log_ratio`` is the full MH log ratio (including kinetic-energy or proposal-density terms); ``proposal_ok``
    marks proposals whose whole construction met only finite densities. Returns dS = log pi(x) - log pi(x') for
    accepted moves and 0 otherwise (SNF eq. 22).
    """
    lp_cur = annealed_log_prob(current, w)
    lp_new = annealed_log_prob(proposal, w)
    cur_ok = jnp.isfinite(lp_cur)
    finite = cur_ok & proposal_ok & jnp.isfinite(lp_new) & ~jnp.isnan(log_ratio)
    log_a = jnp.where(finite, jnp.minimum(log_ratio, 0.0), -jnp.inf)
    u = jax.random.uniform(key, log_a.shape, log_a.dtype)
    accepted = jnp.log(u) < log_a
    new = select(accepted, proposal, current)
    d_s = jnp.where(accepted, jnp.where(finite, lp_cur - lp_new, 0.0), 0.0)
    n_bad = jnp.sum(~finite & cur_ok, dtype=jnp.int32)
    return new, KernelInfo(jnp.exp(log_a), d_s, n_bad)


def squared_norm(v: jax.Array) -> jax.Array:
    return jnp.sum(v * v, axis=-1)
