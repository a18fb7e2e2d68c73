"""The one annealing loop: a kernel run at a sequence of annealed densities, accumulating the path ratio.

Given a batch point x_0, levels k = 1..L with annealing weights w_k = (w_q, w_p) (boltzflow.mcmc.point, eq. 1) and
step sizes eps_k, the loop makes ``n_inner`` kernel moves at each level,

    x_{k-1} --T_k^{n_inner}--> x_k,        dS = sum over all moves of the kernel's log path ratio,

and returns x_L, dS (n,) and :class:`AnnealInfo`: the mean acceptance at each level, the moves rejected for
non-finite densities, and Neal's increments sum_k [log pi_k(x_{k-1}) - log pi_{k-1}(x_{k-1})] against the
weights ``w_start`` of the density x_0 came from (pi_0). Both users build on it:

- AIS (boltzflow.ais): levels are the intermediate distributions between q and p^alpha q^(1-alpha);
- a stochastic block of an SNF (boltzflow.snf.block): one level, pi_lambda = q0^(1-lambda) p^lambda, ``n_steps``
  moves; its dS is the block's SNF path term (eqs. 20, 22).

Everything is a ``lax.scan`` (over levels, then inner moves); gradients pass through reparameterised moves
(an SNF's step sizes and lambdas are trained through them).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from boltzflow.mcmc.base import Kernel
from boltzflow.mcmc.point import Point, annealed_log_prob


class AnnealInfo(NamedTuple):
    """accept: (L,) mean acceptance per level (over samples and moves; unadjusted kernels: fraction of moves
    taken); n_nonfinite: () moves rejected because a density was not finite; log_w_standard: (n,) Neal's
    increments over the L levels (module docstring)."""

    accept: jax.Array
    n_nonfinite: jax.Array
    log_w_standard: jax.Array


def anneal(kernel: Kernel, keys: jax.Array, point: Point, w_start, ws: jax.Array, step_sizes: jax.Array,
           n_inner: int, log_q_fn, log_p_fn) -> tuple[Point, jax.Array, AnnealInfo]:
    """Run ``kernel`` at L levels; ``keys`` (L,), ``ws`` (L, 2), ``step_sizes`` (L,) or (L, d).

    Level k splits its key into ``n_inner`` move keys. Returns (point, dS (n,), AnnealInfo)."""
    n, dtype = point.x.shape[0], point.x.dtype
    zero_ds = jnp.zeros(n, dtype)

    def level(carry, inputs):
        point, d_s, log_w_std, w_prev = carry
        k, w_k, eps_k = inputs
        log_w_std = log_w_std + annealed_log_prob(point, w_k) - annealed_log_prob(point, w_prev)

        def move(c, kk):
            point, d_s, acc, bad = c
            point, info = kernel.step(kk, point, w_k, eps_k, log_q_fn, log_p_fn)
            return (point, d_s + info.dS, acc + jnp.mean(info.accept), bad + info.n_nonfinite), None

        init = (point, d_s, jnp.zeros((), dtype), jnp.zeros((), jnp.int32))
        (point, d_s, acc, bad), _ = jax.lax.scan(move, init, jax.random.split(k, n_inner))
        return (point, d_s, log_w_std, w_k), (acc / n_inner, bad)

    w_start = jnp.asarray(w_start, ws.dtype)
    (point, d_s, log_w_std, _), (accept, bad) = jax.lax.scan(
        level, (point, zero_ds, zero_ds, w_start), (keys, ws, step_sizes))
    return point, d_s, AnnealInfo(accept, jnp.sum(bad), log_w_std)
