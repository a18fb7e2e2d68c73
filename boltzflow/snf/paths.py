"""FAB for stochastic normalizing flows: the alpha-divergence bootstrap in path space (derivation:
docs/concepts/path-weights.md, "FAB for an SNF, in path space").

An SNF has no tractable marginal q(x), so FAB (boltzflow.train.fab), which needs log q at arbitrary points, runs on
whole paths. For an SNF whose stochastic blocks are unadjusted Langevin (ULA) moves, with deterministic maps G_j
between the M moves, m_j(a) = a + (eps_j^2/2) grad log pi_j(a) (SNF sec. 4), forward noises xi_j and the backward
noises eta_j = (y_j - m_j(v_j)) / eps_j (SNF eq. 19), the map

    T_theta : (z, xi_1, ..., xi_M)  ->  u = (x, eta_1, ..., eta_M)

is a bijection for every theta, and in u the two path measures are

    Q_theta(u) = q0(z) prod_j N(xi_j) / |det dT_theta/d(z, xi)|,      P(u) = p(x) prod_j N(eta_j),

with |det dT| the product of the flow layers' |det J|. log P - log Q_theta is the SNF path weight (eq. 11 with the
ULA ratio, eq. 20), P's normaliser is Z, and P does not depend on theta, so FAB applies verbatim:
:func:`path_space` returns a :class:`~boltzflow.flows.paths.Space` whose points are u (dimension (M + 1) d) and
whose log q is log Q_theta; AIS's HMC moves x and the noises jointly. The path divergence bounds the marginal one
(D_alpha(P || Q_theta) >= D_alpha(p || q_theta)).

Limits. Metropolised blocks (Metropolis, HMC, MALA) have a point mass at rejection, so no bijection T_theta exists
and :func:`path_space` refuses them. Underdamped blocks would need the velocities as further noises (not done).
Non-finite densities are not rejected (there is no accept step): a path through one has a non-finite log Q and
is dropped by AIS and the buffer like any non-finite sample.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from boltzflow.errors import BoltzflowError
from boltzflow.flows.base import Flow
from boltzflow.flows.paths import Space
from boltzflow.mcmc.langevin import langevin_mean
from boltzflow.snf.block import StochasticBlock


def _plan(model: Flow):
    """[(deterministic layers before move j, its block)] for j = 1..M, and the layers after the last move."""
    moves, pending = [], []
    for layer in model.layers:
        if not layer.stochastic:
            pending.append(layer)
            continue
        if not isinstance(layer, StochasticBlock) or layer.kernel != "ula":
            kind = getattr(layer, "kernel", type(layer).__name__)
            raise BoltzflowError(f"this SNF has {kind} blocks, whose moves have a point mass at rejection, so its "
                                 f"density is intractable even over paths (only unadjusted Langevin blocks, kernel "
                                 f"ula, have a smooth one)")
        for _ in range(layer.n_steps):
            moves.append((tuple(pending), layer))
            pending = []
    if not moves:
        raise BoltzflowError("path_space needs an SNF with at least one stochastic block")
    return moves, tuple(pending)


def n_path_points(model: Flow) -> int:
    """M + 1: the number of d-dimensional points in a path."""
    return len(_plan(model)[0]) + 1


def _push(layers, v, inverse: bool = False):
    logdet = jnp.zeros(v.shape[0], v.dtype)
    for layer in (reversed(layers) if inverse else layers):
        v, ld = layer.inverse(v) if inverse else layer.forward(v)
        logdet = logdet + ld
    return v, logdet


def _drift(block: StochasticBlock, a):
    """m(a) = a + (eps^2/2) grad log pi_lambda(a) (boltzflow.mcmc.langevin.langevin_mean), and eps. A gradient
    that is not finite stays so: the path then has a non-finite density and is dropped, as any such sample."""
    prior, lam, eps = jax.lax.stop_gradient(block.prior), block.lam, block.step_size

    def log_pi(b):
        return jnp.sum((1.0 - lam) * prior.log_prob(b) + lam * block.target.log_prob(b))

    return langevin_mean(a, jax.grad(log_pi)(a), eps), eps


def _log_normal(e):
    return -0.5 * jnp.sum(e * e, axis=-1) - 0.5 * e.shape[-1] * math.log(2 * math.pi)


def noise_to_path(model: Flow, z, xis):
    """The bijection T_theta (module docstring): z (n, d) and forward noises xis (M, n, d) -> u = (x, eta_1..eta_M)
    (n, (M+1) d), with log Q_theta(u) = log q0(z) + sum_j log N(xi_j) - sum log|det J_G|."""
    moves, tail = _plan(model)
    v, log_q, etas = z, model.base.log_prob(z), []
    for (layers, block), xi in zip(moves, xis):
        y, logdet = _push(layers, v)
        mean, eps = _drift(block, y)
        v = mean + eps * xi
        back, _ = _drift(block, v)
        etas.append((y - back) / eps)
        log_q = log_q + _log_normal(xi) - logdet
    x, logdet = _push(tail, v)
    return jnp.concatenate([x] + etas, axis=1), log_q - logdet


def sample_path(model: Flow, key: jax.Array, n: int):
    """n paths in u-coordinates and their log Q_theta(u), from one pass of :func:`noise_to_path`."""
    k_z, k_xi = jax.random.split(key)
    z = model.base.sample(k_z, n)
    xis = jax.random.normal(k_xi, (n_path_points(model) - 1,) + z.shape, z.dtype)
    return noise_to_path(model, z, xis)


def path_log_q(model: Flow, u):
    """log Q_theta(u) (module docstring), by inverting T_theta."""
    moves, tail = _plan(model)
    parts = _split(model, u)
    v, log_q = _push(tail, parts[0], inverse=True)
    for (layers, block), eta in zip(reversed(moves), reversed(parts[1:])):
        back, eps = _drift(block, v)
        y = back + eps * eta
        v_prev, logdet = _push(layers, y, inverse=True)
        mean, _ = _drift(block, y)
        log_q = log_q + _log_normal((v - mean) / eps) + logdet
        v = v_prev
    return log_q + model.base.log_prob(v)


def path_log_p(target, u):
    """log P(u) = log p(x) + sum_j log N(eta_j) (module docstring): unnormalised, normaliser Z; no parameters."""
    x, etas = u[:, : target.dim], u[:, target.dim:]
    return target.log_prob(x) + _log_normal(etas.reshape(u.shape[0], -1, target.dim)).sum(axis=1)


def _split(model: Flow, u):
    m = n_path_points(model)
    if u.ndim != 2 or u.shape[1] != m * model.dim:
        raise BoltzflowError(f"a path of this SNF has shape (n, {m * model.dim}), got {u.shape}")
    return jnp.split(u, m, axis=1)


def path_space(model: Flow, target) -> Space:
    """The :class:`~boltzflow.flows.paths.Space` of paths u = (x, eta_1..eta_M) of this SNF's layout (the
    space's functions take the trained model as an argument; only the layout of ``model`` is used here)."""
    dim = n_path_points(model) * target.dim
    return Space(dim=dim, sample_and_log_q=sample_path, log_q=path_log_q, log_p=lambda v: path_log_p(target, v),
                 to_x=lambda u: u[:, :target.dim])
