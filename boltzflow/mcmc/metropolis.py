"""Random-walk Metropolis (Metropolis et al. 1953) on the annealed density pi_w.

Proposal x' = x + eps * xi, xi ~ N(0, I) (eps a scalar or per-dimension), symmetric, so the acceptance
probability is min(1, pi_w(x') / pi_w(x)). Detailed balance gives dS = log pi_w(x) - log pi_w(x') for an accepted
move and 0 for a rejected one (SNF eq. 22). One new density evaluation (log q and log p) per step; no gradients.
If the incoming point carries gradients, proposals are evaluated with gradients too so the point keeps its
structure (costlier; a sampler using only this kernel builds gradient-free points).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from boltzflow.mcmc.base import KernelInfo, as_step_size, metropolis_hastings
from boltzflow.mcmc.point import Point, annealed_log_prob, make_point

DEFAULT_TARGET_ACCEPT = 0.3  # between the high-dimensional optimum 0.234 and the 1-D optimum ~0.44


def metropolis_step(key, point: Point, w, step_size, log_q_fn, log_p_fn) -> tuple[Point, KernelInfo]:
    """One random-walk Metropolis move of every sample in the batch."""
    k_prop, k_acc = jax.random.split(key)
    eps = as_step_size(step_size, point.x)
    x_new = point.x + eps * jax.random.normal(k_prop, point.x.shape, point.x.dtype)
    proposal = make_point(x_new, log_q_fn, log_p_fn, with_grad=point.has_grad)
    log_ratio = annealed_log_prob(proposal, w) - annealed_log_prob(point, w)
    return metropolis_hastings(k_acc, point, proposal, w, log_ratio, proposal_ok=jnp.isfinite(log_ratio))
