"""Hamiltonian Monte Carlo (Duane et al. 1987; Neal 2011) on the annealed density pi_w.

One step: draw a fresh momentum v ~ N(0, I) (full refresh), run ``n_leapfrog`` leapfrog steps

    v <- v + (eps/2) grad log pi_w(x);   x <- x + eps v;   v <- v + (eps/2) grad log pi_w(x),

and accept (x', v') with probability min(1, exp(H(x, v) - H(x', v'))), H = -log pi_w(x) + |v|^2 / 2. A
per-dimension eps is allowed: with p = v / eps this is the leapfrog of unit step for the mass matrix
M = diag(eps)^-2 and p ~ N(0, M), so it is still volume preserving and reversible. With the momentum refreshed
the kernel on x is in detailed balance with pi_w, so dS = log pi_w(x) - log pi_w(x') (SNF eq. 22).

Cost: ``n_leapfrog`` evaluations of (log q, grad log q, log p, grad log p) per step; the gradient at the start of
the trajectory is the one cached in the point (a point built without gradients is re-evaluated once, with them;
samplers avoid this by building gradient points, ``make_point(..., with_grad=kernel.needs_grad)``). A trajectory that passes through a point where pi_w is not
finite is rejected (the rule is symmetric under time reversal, so detailed balance holds) and counted.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from boltzflow.mcmc.base import KernelInfo, as_step_size, metropolis_hastings, squared_norm
from boltzflow.mcmc.point import Point, annealed_grad, annealed_log_prob, is_valid, make_point

DEFAULT_TARGET_ACCEPT = 0.65


def leapfrog(point: Point, v: jax.Array, w, eps: jax.Array, n_steps: int, log_q_fn, log_p_fn):
    """``n_steps`` leapfrog steps (lax.scan); returns (point, v, ok) with ok False where any visited point
    was invalid."""

    def one(carry, _):
        p, v, ok = carry
        v = v + 0.5 * eps * annealed_grad(p, w)
        p = make_point(p.x + eps * v, log_q_fn, log_p_fn, with_grad=True)
        v = v + 0.5 * eps * annealed_grad(p, w)
        return (p, v, ok & is_valid(p, w)), None

    ok = jnp.ones(point.x.shape[0], bool)
    (point, v, ok), _ = jax.lax.scan(one, (point, v, ok), None, length=n_steps)
    return point, v, ok


def hmc_step(key, point: Point, w, step_size, log_q_fn, log_p_fn, n_leapfrog: int = 5) -> tuple[Point, KernelInfo]:
    """One HMC move of every sample in the batch (``n_leapfrog`` gradient evaluations)."""
    if not point.has_grad:
        point = make_point(point.x, log_q_fn, log_p_fn, with_grad=True, log_q=point.log_q)
    k_v, k_acc = jax.random.split(key)
    eps = as_step_size(step_size, point.x)
    v0 = jax.random.normal(k_v, point.x.shape, point.x.dtype)
    proposal, v, ok = leapfrog(point, v0, w, eps, n_leapfrog, log_q_fn, log_p_fn)
    log_ratio = (annealed_log_prob(proposal, w) - annealed_log_prob(point, w)
                 - 0.5 * squared_norm(v) + 0.5 * squared_norm(v0))
    return metropolis_hastings(k_acc, point, proposal, w, log_ratio, ok)
