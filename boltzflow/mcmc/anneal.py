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

Sequential Monte Carlo (Del Moral, Doucet & Jasra 2006), with ``smc`` an :class:`SMC`: the batch split into
``n_groups`` SMC runs, each resampled systematically when its Kish ESS fraction falls below ``threshold``, its
weights reset to their mean and remembered in an offset, so that offset + log mean w estimates log Z_k - log Z_0
(``AnnealInfo.log_w_offset``); optionally adaptive levels (the largest step whose conditional ESS is at least
``cess``; Zhou, Johansen & Aston 2016) and step sizes tuned within the run from each level's acceptance
(``tune_rate``, with a per-move ``jitter``; Fearnhead & Taylor 2013). Only Metropolis-adjusted kernels keep SMC exact.
The formulas and why: docs/concepts/ais.md, "Sequential Monte Carlo".
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from boltzflow.errors import BoltzflowError
from boltzflow.estimators import effective_sample_size, systematic_resample
from boltzflow.mcmc.base import Kernel
from boltzflow.mcmc.point import Point, annealed_log_prob
from boltzflow.mcmc.step_size import LOG_CLIP


class SMC(NamedTuple):
    """Resample a group below ESS fraction ``threshold``; ``n_groups`` independent groups; ``cess``: None for the
    given levels, else the conditional ESS each adaptive level keeps; ``levels_at_end``: with ``cess``, the levels
    that move at the end density before the rest are skipped (None: all move); ``tune_rate``: tune the step size
    within the run towards the kernel's target acceptance (the rule in docs/concepts/ais.md; None: the given step
    sizes), each particle's jittered by a factor exp(U(-``jitter``, ``jitter``))."""

    threshold: float = 0.5
    n_groups: int = 8
    cess: float | None = None
    levels_at_end: int | None = None
    tune_rate: float | None = None
    jitter: float = 0.5


class AnnealInfo(NamedTuple):
    """accept: (L,) mean acceptance per level (over samples and moves; unadjusted kernels: fraction of moves
    taken); n_nonfinite: () moves rejected because a density was not finite; log_w_standard: (n,) Neal's
    increments over the L levels (module docstring). With SMC: log_w_offset (n,) the groups' offsets c_g
    (docs/concepts/ais.md), n_resampled () group resamplings, betas (L,) the levels' positions on the path, w_last
    (2,) the last level's weights and levels_run () the levels that moved (L unless ``SMC.levels_at_end`` skipped
    some; a skipped level's accept is 0)."""

    accept: jax.Array
    n_nonfinite: jax.Array
    log_w_standard: jax.Array
    log_w_offset: jax.Array | None = None
    n_resampled: jax.Array | None = None
    betas: jax.Array | None = None
    w_last: jax.Array | None = None
    levels_run: jax.Array | None = None


def _resample_groups(key, tree, log_w, offset, threshold: float, n_groups: int):
    """Resample systematically, resetting the weights (docs/concepts/ais.md), each of ``n_groups`` groups whose
    ESS fraction is below ``threshold``; ``tree``'s leaves (n, ...) follow their ancestors. Returns (tree, log_w,
    offset, number of groups resampled)."""
    n = log_w.shape[0]
    m = n // n_groups
    lw = jnp.where(jnp.isfinite(log_w), log_w, -jnp.inf).reshape(n_groups, m)
    lse = jax.scipy.special.logsumexp(lw, axis=1)
    do = (jax.vmap(effective_sample_size)(lw) < threshold) & jnp.isfinite(lse)
    anc = jax.vmap(systematic_resample)(jax.random.split(key, n_groups), lw)
    idx = (jnp.where(do[:, None], anc, jnp.arange(m)) + m * jnp.arange(n_groups)[:, None]).reshape(n)
    tree = jax.tree_util.tree_map(lambda a: a[idx], tree)
    offset = offset + jnp.repeat(jnp.where(do, lse - jnp.log(m), 0.0), m)
    log_w = jnp.where(jnp.repeat(do, m), 0.0, log_w)
    return tree, log_w, offset, jnp.sum(do, dtype=jnp.int32)


def _next_beta(log_w, slope, beta, cess: float, n_groups: int):
    """The adaptive step (docs/concepts/ais.md): the largest beta' in (beta, 1] with mean group CESS >= cess."""
    ok = jnp.isfinite(log_w) & jnp.isfinite(slope)
    lw = jnp.where(ok, log_w, -jnp.inf).reshape(n_groups, -1)
    sl = jnp.where(ok, slope, 0.0).reshape(n_groups, -1)
    log_W = lw - jax.scipy.special.logsumexp(lw, axis=1, keepdims=True)

    def mean_cess(delta):
        a = jax.scipy.special.logsumexp(log_W + delta * sl, axis=1)
        b = jax.scipy.special.logsumexp(log_W + 2 * delta * sl, axis=1)
        return jnp.mean(jnp.where(jnp.isfinite(a) & jnp.isfinite(b), jnp.exp(2 * a - b), 0.0))

    room = 1.0 - beta

    def halve(carry, _):
        lo, hi = carry
        mid = 0.5 * (lo + hi)
        good = mean_cess(mid) >= cess
        return (jnp.where(good, mid, lo), jnp.where(good, hi, mid)), None

    (lo, _), _ = jax.lax.scan(halve, (jnp.zeros_like(room), room), None, length=30)
    delta = jnp.where(mean_cess(room) >= cess, room, jnp.maximum(lo, room * 1e-6))
    return jnp.minimum(beta + delta, 1.0)


def anneal(kernel: Kernel, keys: jax.Array, point: Point, w_start, ws: jax.Array, step_sizes: jax.Array,
           n_inner: int, log_q_fn, log_p_fn, smc: SMC | None = None, w_end=None
           ) -> tuple[Point, jax.Array, AnnealInfo]:
    """Run ``kernel`` at L levels; ``keys`` (L,), ``ws`` (L, 2), ``step_sizes`` (L,) or (L, d).

    Level k splits its key into ``n_inner`` move keys (and, with ``smc``, one more for the resampling first). Returns
    (point, dS (n,), AnnealInfo). With ``smc``, ``log_w_standard`` holds the weights since each group's last
    resampling; with ``smc.cess`` the levels are chosen adaptively on the segment from ``w_start`` to ``w_end``
    and ``ws`` only sets their number."""
    n, dtype = point.x.shape[0], point.x.dtype
    zero_ds = jnp.zeros(n, dtype)
    w_start = jnp.asarray(w_start, ws.dtype)
    if smc is not None:
        threshold, n_groups = float(smc.threshold), int(smc.n_groups)
        if not (0.0 <= threshold <= 1.0 and n_groups >= 1 and n % n_groups == 0 and n // n_groups >= 2):
            raise BoltzflowError(f"SMC needs a threshold in [0, 1] and n_groups >= 1 dividing the batch into groups "
                                 f"of >= 2; got threshold {smc.threshold}, n_groups {smc.n_groups}, batch {n}")
        if smc.cess is not None and not (0.0 < float(smc.cess) < 1.0 and w_end is not None):
            raise BoltzflowError(f"adaptive SMC levels need cess in (0, 1) and w_end; got cess {smc.cess}")
        if not kernel.metropolised:
            raise BoltzflowError(f"SMC needs a kernel that leaves each level invariant; {kernel.name!r} has no "
                                 f"accept step")
        if smc.levels_at_end is not None and not (smc.cess is not None and int(smc.levels_at_end) >= 1):
            raise BoltzflowError(f"SMC levels_at_end needs adaptive levels (cess) and must be >= 1, got "
                                 f"{smc.levels_at_end}")
        if smc.tune_rate is not None and not (float(smc.tune_rate) > 0 and kernel.target_accept is not None):
            raise BoltzflowError(f"SMC tune_rate must be > 0 with a kernel that has a target acceptance; got "
                                 f"{smc.tune_rate} for {kernel.name!r}")
    adaptive = smc is not None and smc.cess is not None
    if adaptive:
        w_end = jnp.asarray(w_end, ws.dtype)
    tune = None if smc is None or smc.tune_rate is None else (float(smc.tune_rate), float(kernel.target_accept),
                                                              float(smc.jitter))
    at_end = None if smc is None or smc.levels_at_end is None else int(smc.levels_at_end)

    def level(carry, inputs):
        point, d_s, log_w_std, w_prev, beta, offset, n_res, log_tune, n_run, n_end = carry
        k, w_k, eps_k = inputs
        if adaptive:
            slope = annealed_log_prob(point, w_end) - annealed_log_prob(point, w_start)
            beta = _next_beta(log_w_std, slope, beta, float(smc.cess), n_groups)
            w_k = w_start + beta * (w_end - w_start)
        log_w_std = log_w_std + annealed_log_prob(point, w_k) - annealed_log_prob(point, w_prev)
        if smc is not None:
            k, k_res = jax.random.split(k)
            (point, d_s), log_w_std, offset, done = _resample_groups(k_res, (point, d_s), log_w_std, offset,
                                                                     threshold, n_groups)
            n_res = n_res + done
        eps_k = eps_k * jnp.exp(log_tune).astype(dtype)

        def move(c, kk):
            point, d_s, acc, bad = c
            eps = eps_k
            if tune is not None:  # tuned within the run: each particle's step size jittered
                kk, k_eps = jax.random.split(kk)
                u = jax.random.uniform(k_eps, (n, 1), dtype, -tune[2], tune[2])
                eps = jnp.exp(u) * (eps_k if jnp.ndim(eps_k) else eps_k[None, None])
            point, info = kernel.step(kk, point, w_k, eps, log_q_fn, log_p_fn)
            return (point, d_s + info.dS, acc + jnp.mean(info.accept), bad + info.n_nonfinite), None

        init = (point, d_s, jnp.zeros((), dtype), jnp.zeros((), jnp.int32))
        (point, d_s, acc, bad), _ = jax.lax.scan(move, init, jax.random.split(k, n_inner))
        acc = acc / n_inner
        if tune is not None:
            log_tune = jnp.clip(log_tune + tune[0] * (acc - tune[1]), -LOG_CLIP, LOG_CLIP)
        n_end = n_end + (beta >= 1.0).astype(jnp.int32)
        return (point, d_s, log_w_std, w_k, beta, offset, n_res, log_tune, n_run + 1, n_end), (acc, bad, beta)

    def skip(carry, inputs):  # the path already ended, and ``at_end`` levels moved there
        return carry, (jnp.zeros((), dtype), jnp.zeros((), jnp.int32), carry[4])

    def level_or_skip(carry, inputs):
        if at_end is None:
            return level(carry, inputs)
        return jax.lax.cond((carry[4] >= 1.0) & (carry[9] >= at_end), skip, level, carry, inputs)

    zero_i = jnp.zeros((), jnp.int32)
    init = (point, zero_ds, zero_ds, w_start, jnp.zeros((), ws.dtype), zero_ds, zero_i, jnp.zeros((), dtype), zero_i,
            zero_i)
    (point, d_s, log_w_std, w_last, _, offset, n_res, _, n_run, _), (accept, bad, betas) = jax.lax.scan(
        level_or_skip, init, (keys, ws, step_sizes))
    if smc is None:
        return point, d_s, AnnealInfo(accept, jnp.sum(bad), log_w_std)
    return point, d_s, AnnealInfo(accept, jnp.sum(bad), log_w_std, offset, n_res, betas if adaptive else None,
                                  w_last, n_run)
