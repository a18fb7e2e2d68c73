"""Annealed importance sampling (Neal 2001) from a tractable q to g = p^alpha q^(1-alpha), as FAB uses it.

Distributions. With betas 0 = beta_0 < beta_1 < ... < beta_{K+1} = 1 (K = ``n_intermediate``),

    log pi_k(x) = (1 - beta_k alpha) log q(x) + beta_k alpha log p(x),

so pi_0 = q and pi_{K+1} = g = p^alpha q^(1-alpha), the target of FAB (paper eq. 7; alpha = 1 gives p itself,
alpha = 2 the minimum-variance importance distribution p^2/q of the alpha = 2 divergence). A transition T_k
(``n_inner_steps`` moves of one kernel, see boltzflow.mcmc) acts at each intermediate pi_k, k = 1..K; none acts
at pi_0 or pi_{K+1}. With K = 0 this is plain importance sampling, log w = alpha (log p - log q).

Weights. Neal's AIS weight (Neal 2001, eq. 3; FAB Algorithm 2) sums the increments

    log w_AIS = sum_{k=1}^{K+1} [ log pi_k(x_{k-1}) - log pi_{k-1}(x_{k-1}) ],

exact when every T_k leaves pi_k invariant. boltzflow instead computes the SNF path weight (SNF eq. 11) with the
kernels' log path ratios dS (SNF eq. 8):

    log w = log pi_{K+1}(x_K) - log q(x_0) + sum_{k=1}^{K} dS_k,

an importance weight of the forward path against a backward one from pi_{K+1}, so E[w] = Z_g / Z_q = Z_g for *any*
kernels, including unadjusted Langevin (ULA, BAOAB). For kernels in detailed balance (dS_k = log pi_k(x_{k-1}) -
log pi_k(x_k), SNF eq. 22) the two weights are equal. Both are computed (Neal's costs nothing: every density is
cached in the points): the path weight is ``log_w``, Neal's ``info.log_w_standard``, a diagnostic that agrees with
``log_w`` up to rounding for MH kernels and is biased for unadjusted ones. Derivation: docs/concepts/ais.md.

Numerics: a sample whose final weight is not finite, or whose position is not finite, gets log w = -inf (its x
replaced by 0 and its log q, log p by -inf), and is counted in ``info.n_invalid_weights``; moves onto non-finite
densities are rejected by the kernels and counted in ``info.n_nonfinite``. The batch shape never changes.

Step sizes: one per intermediate distribution, adapted after each pass when ``adapt`` is true (training) and
frozen otherwise (evaluation); see boltzflow.mcmc.step_size. Everything runs under lax.scan (over distributions,
inner steps and leapfrog steps) and is traceable inside an outer ``jax.jit`` whose arguments the callables close
over (``n`` and ``adapt`` must then be static / Python values, or ``adapt`` a traced bool).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from boltzflow.errors import BoltzflowError
from boltzflow.mcmc.base import Kernel
from boltzflow.mcmc.anneal import SMC, anneal
from boltzflow.mcmc.point import annealed_log_prob, make_point
from boltzflow.mcmc.registry import make_kernel
from boltzflow.mcmc.step_size import DEFAULT_RATE, StepSizeState, adapt_step_sizes, init_step_sizes

SCHEDULES = ("linear", "geometric")

#: The AIS state is the step-size state (boltzflow.mcmc.step_size): ``.step_sizes`` gives eps_k.
AISState = StepSizeState


class AISInfo(NamedTuple):
    """Diagnostics of one AIS pass.

    accept: (K,) mean acceptance probability at each intermediate distribution (over samples and inner steps).
    step_sizes: (K,) or (K, d) step sizes used in this pass.
    n_nonfinite: () moves rejected because a proposal met a non-finite density.
    n_invalid_weights: () samples whose final log weight (or position) was not finite, now log w = -inf.
    log_w_standard: (n,) Neal's increment weights (module docstring), to compare with the path weights ``log_w``.
    n_resampled, betas, levels_run: with ``smc``, the group resamplings (), the adaptive levels' betas (K,) and the
    levels that moved () (K unless ``SMC.levels_at_end`` skipped some; else None).
    """

    accept: jax.Array
    step_sizes: jax.Array
    n_nonfinite: jax.Array
    n_invalid_weights: jax.Array
    log_w_standard: jax.Array
    n_resampled: jax.Array | None = None
    betas: jax.Array | None = None
    levels_run: jax.Array | None = None


class AISResult(NamedTuple):
    """Final samples x (n, d), log weights log_w (n,) w.r.t. g = p^alpha q^(1-alpha), and log q, log p (n,) at
    the final points (what the FAB replay buffer stores), plus :class:`AISInfo`."""

    x: jax.Array
    log_w: jax.Array
    log_q: jax.Array
    log_p: jax.Array
    info: AISInfo


class AIS(NamedTuple):
    """``init_state(dtype=None) -> StepSizeState`` and
    ``run(key, state, sample_and_log_q, log_q_fn, n, adapt=False) -> (AISResult, StepSizeState)``;
    ``evals_per_sample``: density evaluations per sample of one pass (each one log q and one log p): the start
    point, then ``evals_per_step`` per kernel move at each of the K intermediate distributions."""

    init_state: Callable[..., StepSizeState]
    run: Callable[..., tuple[AISResult, StepSizeState]]
    betas: np.ndarray
    kernel: Kernel
    alpha: float
    evals_per_sample: int


def make_betas(n_intermediate: int, schedule: str = "linear") -> np.ndarray:
    """The K + 2 inverse temperatures beta_0 = 0 < ... < beta_{K+1} = 1 (float64 numpy).

    - ``linear``: ``linspace(0, 1, K + 2)``.
    - ``geometric``: fab-torch's spacing (lollcat/fab-torch, ``AnnealedImportanceSampler.
      setup_distribution_spacing``), geometric in 1 - beta, i.e. dense near beta = 1: with
      n_lin = max(floor(K / 4), 2),

          B = [linspace(0, 0.01, n_lin + 3)[:-1], geomspace(0.01, 1, K - n_lin)],   betas = reverse(1 - B),

      so n_lin + 2 intermediate distributions lie in [0.99, 1) and the rest spread geometrically in 1 - beta
      (K = 8: 0, .602, .842, .937, .975, .99, .9925, .995, .9975, 1). fab-torch falls back to linear for K < 3;
      here for K < 4, because with K = 3 the formula's geomspace has one point and never reaches beta = 0.
    """
    k = int(n_intermediate)
    if schedule not in SCHEDULES:
        raise BoltzflowError(f"unknown AIS schedule {schedule!r}; known: {', '.join(SCHEDULES)}")
    if schedule == "linear" or k < 4:
        return np.linspace(0.0, 1.0, k + 2)
    n_lin = max(k // 4, 2)
    b = np.concatenate([np.linspace(0.0, 0.01, n_lin + 3)[:-1], np.geomspace(0.01, 1.0, k - n_lin)])
    betas = np.flip(1.0 - b).copy()
    assert len(betas) == k + 2 and abs(betas[0]) < 1e-12 and betas[-1] == 1.0, betas
    betas[0] = 0.0
    return betas


def _positive_int(value, what: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise BoltzflowError(f"{what} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def build_ais(log_p_fn: Callable[[jax.Array], jax.Array], kernel: Kernel | str, n_intermediate: int,
              schedule: str = "linear", alpha: float = 1.0, n_inner_steps: int = 1,
              target_accept: float | None = None, step_size=0.1, adapt_rate: float = DEFAULT_RATE,
              smc: SMC | None = None) -> AIS:
    """AIS from a sampler of q to g = p^alpha q^(1-alpha) with ``kernel`` at K = ``n_intermediate`` distributions.

    Args:
        log_p_fn: batched unnormalised log target, (n, d) -> (n,).
        kernel: a :class:`~boltzflow.mcmc.base.Kernel` (from ``make_kernel``) or a kernel name.
        n_intermediate: K >= 0 intermediate distributions (transitions happen only there).
        schedule: ``linear`` or ``geometric`` (see :func:`make_betas`).
        alpha: the exponent of the intermediate distributions (module docstring); 1 targets p, 2 targets p^2/q
            (FAB).
        n_inner_steps: kernel moves per intermediate distribution.
        target_accept: acceptance the step sizes adapt to (default: the kernel's; unadjusted kernels: none).
        step_size: initial step size of every distribution, a scalar or a (d,) vector.
        adapt_rate: the rate of the step-size update in boltzflow.mcmc.step_size.
        smc: sequential Monte Carlo instead of AIS (boltzflow.mcmc.anneal: groups resampled below an ESS
            threshold, and optionally adaptive levels between q and g); ``log_w`` is then Neal's weight
            plus the group's offset, so its mean in each group still estimates Z_g. Needs a Metropolis kernel.
    """
    if isinstance(kernel, str):
        kernel = make_kernel(kernel)
    k_int = _positive_int(n_intermediate, "n_intermediate", 0)
    n_inner = _positive_int(n_inner_steps, "n_inner_steps", 1)
    alpha = float(alpha)
    if not (math.isfinite(alpha) and alpha > 0):
        raise BoltzflowError(f"alpha must be a positive number, got {alpha!r}")
    if target_accept is None:
        target_accept = kernel.target_accept
    elif not kernel.metropolised:
        raise BoltzflowError(f"kernel {kernel.name!r} has no accept step, so it cannot adapt to target_accept")
    elif not 0.0 < float(target_accept) < 1.0:
        raise BoltzflowError(f"target_accept must be in (0, 1), got {target_accept!r}")
    if not float(adapt_rate) >= 0:
        raise BoltzflowError(f"adapt_rate must be >= 0, got {adapt_rate!r}")
    betas = make_betas(k_int, schedule)
    init_step_sizes(step_size, k_int)  # validate now, with a clear error

    def init_state(dtype=None) -> StepSizeState:
        return init_step_sizes(step_size, k_int, dtype)

    def run(key, state: StepSizeState, sample_and_log_q, log_q_fn, n: int, adapt=False):
        """One AIS pass of ``n`` samples; returns (AISResult, state with step sizes adapted if ``adapt``)."""
        k_q, k_chain = jax.random.split(key)
        x0, log_q0 = sample_and_log_q(k_q, n)
        x_shape, lq_shape = getattr(x0, "shape", None), getattr(log_q0, "shape", None)
        if x_shape is None or len(x_shape) != 2 or x_shape[0] != n:
            raise BoltzflowError(f"sample_and_log_q must return x of shape ({n}, dim), got {x_shape}")
        if lq_shape != (n,):
            raise BoltzflowError(f"sample_and_log_q must return log q of shape ({n},), got {lq_shape}")
        dtype = x0.dtype
        if state.log_local.shape != (k_int,):
            raise BoltzflowError(f"AIS state has {state.log_local.shape[0]} step sizes, expected {k_int}")
        if state.scale.ndim == 1 and state.scale.shape[0] != x0.shape[1]:
            raise BoltzflowError(f"per-dimension step_size has {state.scale.shape[0]} entries, x has dim {x0.shape[1]}")
        point = make_point(x0, log_q_fn, log_p_fn, with_grad=kernel.needs_grad and k_int > 0, log_q=log_q0)
        log_q0 = point.log_q  # NaN / +inf -> -inf
        w_p = jnp.asarray(betas, dtype) * alpha
        ws = jnp.stack([1.0 - w_p, w_p], axis=-1)  # (K + 2, 2): (w_q, w_p) of log pi_k (module docstring)
        eps = state.step_sizes.astype(dtype)
        smc_on = smc is not None and k_int > 0
        if k_int > 0:
            point, d_s, info = anneal(kernel, jax.random.split(k_chain, k_int), point, ws[0], ws[1:-1], eps,
                                      n_inner, log_q_fn, log_p_fn, smc, ws[-1])
            accept, n_bad, log_w_std = info.accept, info.n_nonfinite, info.log_w_standard
        else:
            d_s = log_w_std = jnp.zeros(n, dtype)
            accept, n_bad = jnp.zeros((0,), dtype), jnp.zeros((), jnp.int32)

        log_pi_final = annealed_log_prob(point, ws[-1])
        w_last = info.w_last if smc_on else ws[-2]
        log_w_std = log_w_std + log_pi_final - annealed_log_prob(point, w_last)
        if smc_on:  # ancestors changed: Neal's weight and the groups' offsets
            log_w = log_w_std = log_w_std + info.log_w_offset
        else:
            log_w = log_pi_final - log_q0 + d_s  # the SNF path weight (module docstring)
        x_ok = jnp.all(jnp.isfinite(point.x), axis=1)
        ok = x_ok & jnp.isfinite(log_w)
        result = AISResult(
            x=jnp.where(x_ok[:, None], point.x, 0.0),
            log_w=jnp.where(ok, log_w, -jnp.inf),
            log_q=jnp.where(x_ok, point.log_q, -jnp.inf),
            log_p=jnp.where(x_ok, point.log_p, -jnp.inf),
            info=AISInfo(accept, eps, n_bad, jnp.sum(~ok, dtype=jnp.int32),
                         jnp.where(x_ok & jnp.isfinite(log_w_std), log_w_std, -jnp.inf),
                         *((info.n_resampled, info.betas, info.levels_run) if smc_on else ())),
        )
        if target_accept is not None:
            state = adapt_step_sizes(state, accept, float(target_accept), float(adapt_rate), adapt)
        return result, state

    return AIS(init_state=init_state, run=run, betas=betas, kernel=kernel, alpha=alpha,
               evals_per_sample=1 + k_int * n_inner * kernel.evals_per_step)


@dataclass(frozen=True)
class AISSettings:
    """A config's ``ais`` section (used by FAB and by ``evaluate --ais``); keys that are not fields here are the
    kernel's settings (e.g. ``n_leapfrog`` for hmc), kept in ``kernel_options`` and checked against the kernel."""

    kernel: str = "hmc"
    n_intermediate: int = 4
    schedule: Literal["linear", "geometric"] = "linear"
    n_inner_steps: int = 1
    step_size: float | list[float] = 0.1
    target_accept: float | None = None
    adapt_rate: float = DEFAULT_RATE
    kernel_options: dict = field(default_factory=dict, metadata={"extra": True})

    def __post_init__(self):
        ais_from_settings(None, self)  # builds nothing heavy: checks every value with build_ais's own checks


def ais_from_settings(log_p_fn, s: AISSettings, alpha: float = 1.0) -> AIS:
    """:func:`build_ais` from a config's ``ais`` section."""
    return build_ais(log_p_fn, make_kernel(s.kernel, **s.kernel_options), s.n_intermediate, schedule=s.schedule,
                     alpha=alpha, n_inner_steps=s.n_inner_steps, target_accept=s.target_accept,
                     step_size=s.step_size, adapt_rate=s.adapt_rate)
