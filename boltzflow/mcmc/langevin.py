"""Langevin kernels on the annealed density pi_w: ULA and MALA (overdamped) and BAOAB (underdamped).

Overdamped Langevin with noise scale eps (a scalar or per-dimension; eps^2 = 2 dt in the SNF paper's notation
y' = y - dt grad u(y) + sqrt(2 dt) eta, eq. 19, at kT = 1):

    x' = x + (eps^2 / 2) grad log pi_w(x) + eps xi,      xi ~ N(0, I).

- **ULA** (unadjusted): every proposal with finite density is taken. Its stationary law is pi_w only up to
  O(eps^2), but the path ratio is exact (SNF eq. 20): with the backward move x' -> x by the same rule,

      dS = log N(x; x' + (eps^2/2) g(x'), eps^2) - log N(x'; x + (eps^2/2) g(x), eps^2)
         = -1/2 |xi_b|^2 + 1/2 |xi|^2,    xi_b = (x - x' - (eps^2/2) g(x')) / eps,

  which is SNF eq. 20 (dS = -(|eta_b|^2 - |eta|^2)/2). Path weights (SNF eq. 11) therefore stay exact.
- **MALA** (Roberts & Tweedie 1996): the same move as an MH proposal with log ratio log pi(x') - log pi(x) + dS; in
  detailed balance, so dS = log pi_w(x) - log pi_w(x') when accepted, 0 when rejected.
- **Underdamped** (BAOAB, Leimkuhler & Matthews 2013), velocities as auxiliary variables: a fresh v0 ~ N(0, I)
  at each call (full refresh), then ``n_steps`` steps of

      B: v += (eps/2) g(x);  A: x += (eps/2) v;  O: v <- c v + sqrt(1 - c^2) xi, c = exp(-friction eps);
      A: x += (eps/2) v;  B: v += (eps/2) g(x),

  (partial refresh inside the call through the O step) and the final velocity v_T is discarded. The backward
  path draws v_T ~ N(0, I) and runs the same scheme on the flipped velocity; B and A are volume-preserving
  shears, and the O step is in detailed balance with N(0, I), so its ratio is N(v_before) / N(v_after). With the
  velocity draw and discard (the SNF supplement's treatment of underdamped Langevin, velocity terms included):

      dS = 1/2 |v0|^2 - 1/2 |v_T|^2 + sum_O ( 1/2 |v_after_O|^2 - 1/2 |v_before_O|^2 )
         = - sum_B ( 1/2 |v_after_B|^2 - 1/2 |v_before_B|^2 )     (kinetic energy gained in B steps, negated).

  Without friction this is -(K(v_T) - K(v0)) = log pi(x) - log pi(x') + (energy error): an HMC trajectory
  without the accept step. Like ULA it is unadjusted (biased at O(eps^2)) but its dS makes path weights exact.

Unadjusted kernels report ``accept`` as the 1/0 indicator of a taken move (rejections only for non-finite
densities) and are not step-size adapted by acceptance.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from boltzflow.mcmc.base import KernelInfo, as_step_size, metropolis_hastings, squared_norm
from boltzflow.mcmc.point import Point, annealed_grad, annealed_log_prob, is_valid, make_point, select

MALA_TARGET_ACCEPT = 0.57


def _ensure_grad(point, log_q_fn, log_p_fn):
    if point.has_grad:
        return point
    return make_point(point.x, log_q_fn, log_p_fn, with_grad=True, log_q=point.log_q)


def langevin_mean(x: jax.Array, grad_log_pi: jax.Array, eps) -> jax.Array:
    """The mean of the overdamped Langevin move (module docstring) from x: x + (eps^2 / 2) grad log pi(x)."""
    return x + 0.5 * eps**2 * grad_log_pi


def _langevin_proposal(key, point: Point, w, eps, log_q_fn, log_p_fn):
    """The overdamped Langevin move and its log backward/forward proposal ratio dS (module docstring)."""
    xi = jax.random.normal(key, point.x.shape, point.x.dtype)
    x_new = langevin_mean(point.x, annealed_grad(point, w), eps) + eps * xi
    proposal = make_point(x_new, log_q_fn, log_p_fn, with_grad=True)
    xi_b = (point.x - langevin_mean(proposal.x, annealed_grad(proposal, w), eps)) / eps
    return proposal, 0.5 * squared_norm(xi) - 0.5 * squared_norm(xi_b)


def _unadjusted(point: Point, proposal: Point, w, ok: jax.Array, d_s: jax.Array) -> tuple[Point, KernelInfo]:
    """Take the move where the start and every visited point are valid; dS = 0 where the sample stays."""
    cur_ok = is_valid(point, w)
    move = cur_ok & ok & jnp.isfinite(d_s)
    new = select(move, proposal, point)
    return new, KernelInfo(move.astype(point.x.dtype), jnp.where(move, d_s, 0.0),
                           jnp.sum(cur_ok & ~move, dtype=jnp.int32))


def ula_step(key, point: Point, w, step_size, log_q_fn, log_p_fn) -> tuple[Point, KernelInfo]:
    """One unadjusted Langevin move with its exact path ratio dS (SNF eq. 20; module docstring)."""
    point = _ensure_grad(point, log_q_fn, log_p_fn)
    eps = as_step_size(step_size, point.x)
    proposal, d_s = _langevin_proposal(key, point, w, eps, log_q_fn, log_p_fn)
    return _unadjusted(point, proposal, w, is_valid(proposal, w), d_s)


def mala_step(key, point: Point, w, step_size, log_q_fn, log_p_fn) -> tuple[Point, KernelInfo]:
    """One Metropolis-adjusted Langevin move; dS = log pi_w(x) - log pi_w(x') if accepted."""
    point = _ensure_grad(point, log_q_fn, log_p_fn)
    k_prop, k_acc = jax.random.split(key)
    eps = as_step_size(step_size, point.x)
    proposal, log_proposal_ratio = _langevin_proposal(k_prop, point, w, eps, log_q_fn, log_p_fn)
    log_ratio = annealed_log_prob(proposal, w) - annealed_log_prob(point, w) + log_proposal_ratio
    return metropolis_hastings(k_acc, point, proposal, w, log_ratio, is_valid(proposal, w))


def underdamped_step(key, point: Point, w, step_size, log_q_fn, log_p_fn, n_steps: int = 1,
                     friction: float = 1.0) -> tuple[Point, KernelInfo]:
    """Fresh velocities, ``n_steps`` BAOAB steps, velocities discarded; dS with the velocity terms (see module)."""
    point = _ensure_grad(point, log_q_fn, log_p_fn)
    k_v, k_o = jax.random.split(key)
    x = point.x
    eps = as_step_size(step_size, x)
    c = jnp.exp(-jnp.asarray(friction, x.dtype) * eps)
    s = jnp.sqrt(1.0 - c * c)
    v0 = jax.random.normal(k_v, x.shape, x.dtype)

    def baoab(carry, k):
        p, v, d_s, ok = carry
        v = v + 0.5 * eps * annealed_grad(p, w)
        y = p.x + 0.5 * eps * v
        v_o = c * v + s * jax.random.normal(k, x.shape, x.dtype)
        d_s = d_s + 0.5 * squared_norm(v_o) - 0.5 * squared_norm(v)
        p = make_point(y + 0.5 * eps * v_o, log_q_fn, log_p_fn, with_grad=True)
        v = v_o + 0.5 * eps * annealed_grad(p, w)
        return (p, v, d_s, ok & is_valid(p, w)), None

    init = (point, v0, jnp.zeros(x.shape[0], x.dtype), jnp.ones(x.shape[0], bool))
    (proposal, v, d_s, ok), _ = jax.lax.scan(baoab, init, jax.random.split(k_o, n_steps))
    d_s = d_s + 0.5 * squared_norm(v0) - 0.5 * squared_norm(v)
    return _unadjusted(point, proposal, w, ok, d_s)
