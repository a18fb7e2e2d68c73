"""Exploring a target without a flow: tempered SMC from a broad Gaussian that grows until it is wider than all the
mass it finds, and the mass stops moving; then one larger round there, within a budget of target evaluations.
Derivations, and the missing-mass check built on it (:func:`unseen_mass`, :func:`check_flow`):
docs/concepts/missing-mass-check.md.

Reference r = N(c, s^2 I) on R^d. Tempered SMC (boltzflow.ais with resampling as in boltzflow.mcmc.anneal; Del Moral,
Doucet & Jasra 2006) runs from r to p through

    log pi_k(x) = (1 - beta_k) log r(x) + beta_k log p(x),     0 = beta_0 < ... < beta_{K+1} = 1,

with HMC moves at each level, the levels chosen at conditional ESS 0.9 and run only until beta reaches 1 (and 4
more), the step size tuned within the run (boltzflow.mcmc.anneal), and a group resampled whenever its ESS fraction
falls below one half. It returns weighted samples (x_i, w_i), in G independent groups, with E[mean_{i in g} w_i] = Z
in each, hence (the delta method over independent groups: the particles of one group are not independent after
resampling)

    log Z^ = log mean_g Z^_g,      se(log Z^) = sd_g(Z^_g) / (sqrt(G) mean_g Z^_g),

and self-normalised estimates of p's mean m and per-dimension standard deviation sigma. (SMC, not AIS: resampling
keeps the particles where pi_k's mass is at every level; docs/benchmarks.md.)

Growth: pilot rounds of ``n_pilot`` particles (1,024) with r_j = N(c_j, s_j^2 I): c_0 = 0, s_0 = ``scale``; then
c_{j+1} = m^_j and s_{j+1} = max(``growth`` s_j, ``factor`` sigma^_j), sigma^_j = max_i sigma^_{j,i}, until the
first round that is (a) usable: it reached p, ESS n >= ``min_ess``, and at least half of its groups estimate Z
within 100x of the largest (:func:`groups_agree`), (b) wide, s_j >= ``factor`` sigma^_j / 1.25 (the pilot's sigma^
is noisy), and (c) agrees with the round before on log Z (new mass raises log Z):

    |log Z^_j - log Z^_{j-1}| <= tol + 3 sqrt(se_j^2 + se_{j-1}^2).

That round's reference is the exploration's (``converged``). With ``bounds`` (a box [lo, hi] per dimension) one
pilot runs from r = N(box centre, diag(half-widths^2)) and ``converged`` is true by fiat.

Budget. A round of n particles costs n (1 + L k) target evaluations (L its levels, k = 5 per HMC move). A pilot
round runs only if the previous one's cost still fits in ``budget``; a converged search is followed by one final
round at its reference with n_final = min(n, 4096 max(d, 2), (budget - spent) / (1.25 cost per particle of the
converged pilot)) particles (a multiple of G; none if that is not more than a pilot's), whose samples are the
result. Without a converged round in ``max_rounds`` or the budget, the result is the last usable round (or the
last), ``converged`` is false and ``out_of_budget`` says whether the budget stopped it: the check cannot conclude.

The result does not depend on a flow: it checks a flow's log Z and mass (boltzflow.evaluate), seeds FAB's replay
buffer (boltzflow.train.fab), and gives the scale and bounds of a flow for an unknown target (boltzflow.autoflow).
Limits: a mode farther than about ``factor`` found scales, or much narrower than the found mass in many dimensions,
can still be missed, more often with fewer particles: give ``bounds``, or a larger ``budget``.
"""

from __future__ import annotations

import functools
import math
import time
from dataclasses import dataclass
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from boltzflow.ais import build_ais
from boltzflow.errors import BoltzflowError
from boltzflow.estimators import effective_sample_size, self_normalised_expectation
from boltzflow.mcmc.anneal import SMC
from boltzflow.mcmc.registry import make_kernel

Groups = int | Sequence[int]  # G equal contiguous groups, or their sizes
RESAMPLE_BELOW = 0.5  # ESS fraction below which a group is resampled
CESS = 0.9  # conditional ESS each adaptive level keeps
STEP_SIZE = 0.5  # the first level's HMC step size (standardized coordinates), then tuned within the run
TUNE_RATE = 1.0  # r of the step-size tuning in boltzflow.mcmc.anneal
LEVELS_AT_END = 4  # levels that move at p once the path reached it; the rest are skipped
MAX_LEVELS = 256  # the most levels of a round (a round runs those it needs)
PILOT_PARTICLES = 1024  # particles of each pilot round (module docstring, "Budget")
MIN_PILOT = 512  # the fewest a config may set: a usable round needs ESS n >= 200 (``min_ess``)
FINAL_MARGIN = 1.25  # budget: the final round's cost per particle, predicted from the pilot's, times this
PARTICLES_PER_DIM = 4096  # budget: the most final particles per dimension (and at least 2 dimensions' worth)
WIDE_SLACK = 1.25  # growth: a pilot's found scale is noisy (1,024 particles): "wide" is s >= factor found / this


#: dimensions up to which ``check`` is on by default (within its budget, the training's own target evaluations);
#: Many Well 32 does not converge (its quartic walls need many levels from a reference ten times wider than a
#: well), so it is left out
AUTO_MAX_DIM = 16
#: The least mass of p the check calls missing (:func:`unseen_mass`). Well-trained flows whose tails are thinner
#: than p's by more than 10x over 0.03 % of its mass were flagged at 3-4 standard errors (far-mode family, training
#: seed 1; docs/benchmarks.md), a difference no user acts on; the modes the check is for carry 1 % or more.
MIN_MISSING_MASS = 1e-3
#: An unseen mass above ``MIN_MISSING_MASS`` at more than this many standard errors but not 3 is inconclusive and
#: the check looks again (:func:`check_flow`, the second look)
SECOND_LOOK_SIGMA = 2.0


@dataclass(frozen=True)
class ExploreSettings:
    """A config's ``explore`` section. ``check``: ``boltzflow evaluate`` (and the report after training) compares the
    flow with an exploration (:func:`unseen_mass`, log Z both ways); ``seed_buffer``: FAB's replay buffer starts with
    the exploration's samples (boltzflow.train.fab; off by default until its effect on the published GMM40 / Many Well
    numbers is measured); None means on for targets of at most ``AUTO_MAX_DIM`` dimensions that are not molecules (the
    default of ``check``). ``budget``: the most target evaluations of one exploration (None: the training's own,
    see :meth:`run`); ``bounds``: the box of the reference instead of growth (:func:`explore`); ``n``: the most
    particles of the final round; ``n_pilot``: particles of each pilot round; ``n_groups``: independent groups;
    ``n_intermediate``: the most levels of a round. Up to 32,768 particles in 8 groups: with 8,192 the groups'
    estimates of a 3 % mode narrower than the bulk in 9-D ranged from 1 % to 50 % (a narrow mode starts with few
    particles under a broad reference and each is multiplied many times; docs/benchmarks.md)."""

    check: bool | None = None
    seed_buffer: bool | None = False
    budget: float | None = None
    bounds: list[Any] | None = None
    n: int = 32768
    n_pilot: int = PILOT_PARTICLES
    n_groups: int = 8
    n_intermediate: int = MAX_LEVELS

    def __post_init__(self):
        _check_particles(self.n, self.n_groups)
        _check_particles(self.n_pilot, self.n_groups, "explore.n_pilot")
        if self.n_pilot < MIN_PILOT:
            raise BoltzflowError(f"explore.n_pilot must be at least {MIN_PILOT} (a pilot round is usable with 200 "
                                 f"effective samples), got {self.n_pilot}")
        if self.n_intermediate < 1:
            raise BoltzflowError(f"explore.n_intermediate must be >= 1, got {self.n_intermediate}")
        if self.budget is not None and not self.budget > 0:
            raise BoltzflowError(f"explore.budget must be a positive number of target evaluations, got {self.budget}")

    def wants(self, what: str, target) -> bool:
        """Whether ``check`` or ``seed_buffer`` is on for ``target`` (None: by its size and kind)."""
        on = getattr(self, what)
        return on if on is not None else (target.dim <= AUTO_MAX_DIM and not hasattr(target, "molecule"))

    def run(self, key, target, dtype=jnp.float32, budget: float | None = None) -> "Exploration":
        """:func:`explore` of ``target`` with these settings; the budget is ``explore.budget`` if set, else
        ``budget`` (what the caller spends on training; None: no limit but ``n``)."""
        return explore(key, target.log_prob, target.dim, n=self.n, n_groups=self.n_groups, bounds=self.bounds,
                       budget=self.budget if self.budget is not None else budget, n_pilot=self.n_pilot,
                       n_intermediate=self.n_intermediate, dtype=dtype)


@dataclass(frozen=True)
class Exploration:
    """The chosen round's weighted samples (x (n, d), log_w (n,); mean w estimates Z; log_p (n,) the target's
    unnormalised log density there, -inf where x is not finite) and estimates (log Z^ and its se from the groups,
    module docstring), the reference N(center, scale^2 I) it used, one summary per round, and the cost of all
    rounds: target evaluations and seconds, against ``budget`` (None: none given); ``out_of_budget``: the pilot
    rounds stopped for the budget before converging."""

    x: np.ndarray
    log_w: np.ndarray
    log_p: np.ndarray
    log_z: float
    log_z_stderr: float
    ess: float
    mean: np.ndarray
    std: np.ndarray
    center: np.ndarray
    scale: np.ndarray
    converged: bool
    rounds: tuple[dict, ...]
    target_evals: int
    n_groups: int
    seconds: float = 0.0
    budget: float | None = None
    out_of_budget: bool = False

    def summary(self) -> dict[str, Any]:
        """What a run records (auto.json, explore.json): everything but the samples."""
        return {"log_z": self.log_z, "log_z_stderr": self.log_z_stderr, "ess": self.ess,
                "converged": self.converged, "reference_scale": float(np.max(self.scale)),
                "particles": len(self.log_w), "target_evals": self.target_evals, "seconds": self.seconds,
                "budget": self.budget, "out_of_budget": self.out_of_budget, "rounds": list(self.rounds)}


def _gaussian(center, scale):
    """(sample_and_log_q, log_q) of N(center, diag(scale^2)); both may be traced (one compilation for all rounds)."""
    dim = center.shape[0]
    const = -0.5 * dim * math.log(2 * math.pi) - jnp.sum(jnp.log(scale))

    def log_q(x):
        return const - 0.5 * jnp.sum(((x - center) / scale) ** 2, axis=1)

    def sample_and_log_q(key, n):
        x = center + scale * jax.random.normal(key, (n, dim), center.dtype)
        return x, log_q(x)

    return sample_and_log_q, log_q


def weighted_moments(x: np.ndarray, log_w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Self-normalised mean and per-dimension standard deviation of the finite samples."""
    ok = np.isfinite(log_w) & np.all(np.isfinite(x), axis=1)
    w = np.exp(log_w[ok] - log_w[ok].max())
    w /= w.sum()
    mean = w @ x[ok]
    return mean, np.sqrt(np.maximum(w @ (x[ok] - mean) ** 2, 0.0))


def _group_means(log_w: np.ndarray, groups: Groups, inside: np.ndarray | None = None):
    """(z (G,), z_in (G,), top): per group, the mean of w_i e^-top and of w_i e^-top [inside_i] (non-finite log weights
    count as w = 0), top the largest finite log weight (-inf if none: then every mean is 0). ``groups``: G contiguous
    groups of equal size, or their sizes (the pooled groups of two explorations may differ)."""
    lw = np.where(np.isfinite(log_w), log_w, -np.inf)
    sizes = np.full(groups, len(lw) // groups) if isinstance(groups, (int, np.integer)) else np.asarray(groups)
    if sizes.sum() != len(lw):
        raise ValueError(f"groups of sizes {sizes.tolist()} do not split {len(lw)} weights")
    top = float(lw.max()) if len(lw) else -math.inf
    w = np.exp(lw - top) if np.isfinite(top) else np.zeros(len(lw))
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    z = np.add.reduceat(w, starts) / sizes
    z_in = None if inside is None else np.add.reduceat(w * np.asarray(inside, bool), starts) / sizes
    return z, z_in, top


def group_log_z(log_w: np.ndarray, groups: Groups) -> tuple[float, float]:
    """log Z^ = log mean_g Z^_g and its standard error (module docstring), from contiguous independent groups
    (:func:`_group_means`)."""
    z, _, top = _group_means(log_w, groups)
    if not np.isfinite(top):
        return -math.inf, math.inf
    log_z = float(top + math.log(z.mean()))
    se = float(z.std(ddof=1) / (math.sqrt(len(z)) * z.mean())) if len(z) > 1 else math.inf
    return log_z, se


def groups_agree(log_w: np.ndarray, groups: Groups, factor: float = 100.0) -> bool:
    """Whether at least half of the groups (and two) estimate Z within ``factor`` of the largest estimate: a
    round whose weight one or two groups carry has resampled its particles into copies of a few ancestors, and
    its ESS after resampling (1 / n_groups of n at least) says nothing."""
    z, _, top = _group_means(log_w, groups)
    return bool(np.isfinite(top) and np.sum(z >= z.max() / factor) >= max(2, len(z) // 2))


def _check_particles(n: int, n_groups: int, what: str = "explore.n") -> int:
    """``n`` particles in ``n_groups`` >= 2 groups of at least 16 (the one check of both sizes); returns n."""
    if n_groups < 2 or n % n_groups or n < 16 * n_groups:
        raise BoltzflowError(f"{what} must be a multiple of explore.n_groups (>= 2) with at least 16 particles per "
                             f"group; got {what.split('.')[-1]}={n}, n_groups={n_groups}")
    return n


def parse_bounds(bounds, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """(lo (d,), hi (d,)) from one [lo, hi] for every dimension or d such pairs; a clear error otherwise."""
    try:
        box = np.asarray(bounds, np.float64)
    except (TypeError, ValueError):
        box = np.zeros(0)
    if box.shape == (2,):
        box = np.tile(box, (dim, 1))
    if box.shape != (dim, 2) or not np.all(np.isfinite(box)) or not np.all(box[:, 1] > box[:, 0]):
        raise BoltzflowError(f"bounds must be [lo, hi] with lo < hi, or {dim} such pairs; got {bounds!r}")
    return box[:, 0], box[:, 1]


@functools.lru_cache(maxsize=8)
def _round_runner(log_p, kernel: str, kernel_options: tuple, n_groups: int, n_intermediate: int, dtype):
    """The jitted SMC round of :func:`explore` and its kernel. SMC runs in standardized coordinates
    y = (x - c) / s, from N(0, I) to p_y(y) = p(c + s y) prod_i s_i (same Z), where one step size suits every
    dimension and every round; c and s are traced: one compilation per particle count."""
    kern = make_kernel(kernel, **dict(kernel_options))
    smc = SMC(RESAMPLE_BELOW, n_groups, CESS, levels_at_end=LEVELS_AT_END, tune_rate=TUNE_RATE)

    def run(k, c, s, m):
        ais = build_ais(lambda y: log_p(c + s * y) + jnp.sum(jnp.log(s)), kern, n_intermediate, smc=smc,
                        step_size=STEP_SIZE)
        res = ais.run(k, ais.init_state(c.dtype), *_gaussian(jnp.zeros_like(c), jnp.ones_like(s)), m)[0]
        return res._replace(x=c + s * res.x, log_p=res.log_p - jnp.sum(jnp.log(s)))

    return jax.jit(run, static_argnums=3), kern


def explore(key, log_p, dim: int, n: int = 4096, n_groups: int = 8, bounds=None, budget: float | None = None,
            n_pilot: int = PILOT_PARTICLES, scale: float = 1.0, growth: float = 2.0, factor: float = 10.0,
            max_rounds: int = 6, n_intermediate: int = MAX_LEVELS, kernel: str = "hmc", tol: float = 0.005,
            min_ess: float = 200.0, dtype=jnp.float32, **kernel_options) -> Exploration:
    """Tempered SMC from a broad Gaussian (module docstring): pilot rounds of ``n_pilot`` particles grow the
    reference by the growth rule until a wide, usable round agrees with the one before on log Z, or ``max_rounds``
    (one round from ``bounds`` if given), then one final round of up to ``n`` particles at the reference found,
    within the budget.

    Args:
        key: a JAX key.
        log_p: the unnormalised log density, (m, dim) -> (m,).
        dim: the dimension.
        n: the most particles of the final round.
        n_groups: independent SMC groups (G of the module docstring).
        bounds: a box [lo, hi] (or one per dimension) for the reference, instead of growth.
        budget: the most target evaluations in all (None: no limit but ``n`` and ``max_rounds``).
        n_pilot: particles of each pilot round.
        scale, growth, factor, max_rounds, tol, min_ess: the growth rule and its stop (module docstring).
        n_intermediate: the most SMC levels of a round (a round runs those it needs, boltzflow.mcmc.anneal).
        kernel: the SMC move (default hmc, ``n_leapfrog`` 5; ``kernel_options`` go to it).
        dtype: of the particles.

    Returns:
        The :class:`Exploration`.
    """
    if not (scale > 0 and growth > 1 and factor >= 1 and max_rounds >= 1 and n_intermediate >= 1):
        raise BoltzflowError(f"explore needs scale > 0, growth > 1, factor >= 1, max_rounds >= 1 and "
                             f"n_intermediate >= 1; got scale={scale}, growth={growth}, factor={factor}, "
                             f"max_rounds={max_rounds}, n_intermediate={n_intermediate}")
    _check_particles(n, n_groups)
    n_pilot = min(_check_particles(n_pilot, n_groups, "explore.n_pilot"), n)
    if budget is not None and not budget > 0:
        raise BoltzflowError(f"explore.budget must be a positive number of target evaluations, got {budget!r}")
    if kernel == "hmc":
        kernel_options = {"n_leapfrog": 5, **kernel_options}
    try:  # one compilation per target and settings in a process (the seeding, the check's looks, evaluate again)
        run, kern = _round_runner(log_p, kernel, tuple(sorted(kernel_options.items())), n_groups, n_intermediate,
                                  jnp.dtype(dtype))
    except TypeError:  # an unhashable log_p or option: compiled for this call only
        run, kern = _round_runner.__wrapped__(log_p, kernel, tuple(sorted(kernel_options.items())), n_groups,
                                              n_intermediate, jnp.dtype(dtype))
    t0 = time.perf_counter()
    evals = 0

    def one_round(k, center, s, m, kind):
        nonlocal evals
        res = run(k, jnp.asarray(center, dtype), jnp.asarray(s, dtype), m)
        levels = int(res.info.levels_run)
        cost = m * (1 + levels * kern.evals_per_step)
        evals += cost
        x, log_w, log_px = (np.asarray(v, np.float64) for v in (res.x, res.log_w, res.log_p))
        log_z, se = group_log_z(log_w, n_groups)
        ess = float(effective_sample_size(res.log_w))
        reached = float(res.info.betas[-1]) >= 1.0  # else the last step jumped to p
        usable = ess * m >= min_ess and reached and groups_agree(log_w, n_groups)
        mean, std = weighted_moments(x, log_w) if np.isfinite(log_w).any() else (center, s)
        summary = {"kind": kind, "particles": m, "scale": float(np.max(s)), "log_z": log_z, "log_z_stderr": se,
                   "ess": ess, "reached_p": reached, "usable": usable, "found_scale": float(np.max(std)),
                   "levels": levels, "target_evals": cost,
                   "accept": float(np.sum(np.asarray(res.info.accept)) / max(levels, 1))}
        return summary, (x, log_w, log_px, mean, std, np.array(center, np.float64), np.array(s, np.float64))

    if bounds is not None:
        lo, hi = parse_bounds(bounds, dim)
        center, s, max_rounds = (lo + hi) / 2, (hi - lo) / 2, 1
    else:
        center, s = np.zeros(dim), np.full(dim, float(scale))
    rounds, results, converged, prev, out_of_budget = [], [], bounds is not None, None, False
    for j in range(int(max_rounds)):
        if budget is not None and j > 0 and evals + rounds[-1]["target_evals"] > budget:
            out_of_budget = True
            break
        key, k_run = jax.random.split(key)
        r, res = one_round(k_run, center, s, n_pilot, "pilot")
        rounds.append(r)
        results.append(res)
        wide = np.max(s) >= factor * r["found_scale"] / WIDE_SLACK
        if bounds is None and r["usable"] and wide and prev is not None and \
                abs(r["log_z"] - prev["log_z"]) <= tol + 3 * math.hypot(r["log_z_stderr"], prev["log_z_stderr"]):
            converged = True
            break
        prev = r if r["usable"] else None
        if r["usable"] and np.all(np.isfinite(res[3])):
            center = res[3]
        s = np.full(dim, max(growth * float(np.max(s)), factor * r["found_scale"]))
    usable_rounds = [i for i, r in enumerate(rounds) if r["usable"]]
    best = len(rounds) - 1 if converged or not usable_rounds else usable_rounds[-1]
    if converged:  # the final round at the reference found, with the particles the budget leaves
        per_particle = FINAL_MARGIN * rounds[best]["target_evals"] / rounds[best]["particles"]
        room = math.inf if budget is None else (budget - evals) / per_particle
        m = int(min(n, max(2, dim) * PARTICLES_PER_DIM, room) // n_groups * n_groups)
        if m > n_pilot:
            r, res = one_round(key, results[best][5], results[best][6], m, "final")
            rounds.append(r)
            results.append(res)
            if r["usable"]:
                best = len(rounds) - 1
    x, log_w, log_px, mean, std, center, s = results[best]
    r = rounds[best]
    return Exploration(x=x, log_w=log_w, log_p=log_px, log_z=r["log_z"], log_z_stderr=r["log_z_stderr"],
                       ess=r["ess"], mean=mean, std=std, center=center, scale=s, converged=converged,
                       rounds=tuple(rounds), target_evals=int(evals), n_groups=n_groups,
                       seconds=time.perf_counter() - t0, budget=budget, out_of_budget=out_of_budget)


def group_fraction(log_w: np.ndarray, inside: np.ndarray, groups: Groups) -> tuple[float, float, np.ndarray]:
    """The weight of the samples ``inside`` a region relative to all, sum_g Z^_g P^_g / sum_g Z^_g (for groups of
    equal size the self-normalised weight over all samples), its standard error from the spread of the groups'
    own estimates P^_g (independent SMC runs), and the P^_g."""
    z, z_in, top = _group_means(log_w, groups, inside)
    if not np.isfinite(top):
        return math.nan, math.inf, np.full(len(z), math.nan)
    per_group = z_in / np.maximum(z, 1e-300)
    return float(z_in.sum() / z.sum()), float(per_group.std(ddof=1) / math.sqrt(len(z))), per_group


def mass_missing(unseen: float, stderr: float, min_mass: float = MIN_MISSING_MASS, every_group: bool = False) -> bool:
    """The verdict on the unseen mass D of :func:`unseen_mass`: material (D > ``min_mass``) and significant: D > 3 se,
    or every group of the exploration sees more than ``min_mass`` unseen (``every_group``, the sign test of
    docs/concepts/missing-mass-check.md)."""
    return bool((unseen > 3 * stderr or every_group) and unseen > min_mass)


def inconclusive(unseen: float, stderr: float, min_mass: float = MIN_MISSING_MASS) -> bool:
    """Whether :func:`check_flow` takes a second look: D material (D > ``min_mass``) and above
    ``SECOND_LOOK_SIGMA`` standard errors, but not above 3."""
    return bool(unseen > min_mass and SECOND_LOOK_SIGMA * stderr < unseen <= 3 * stderr)


def unseen_mass(log_w_e: np.ndarray, groups: Groups, log_ratio_e: np.ndarray, flow_log_w: np.ndarray,
                flow_log_z: float, tau: float = math.log(10.0), min_mass: float = MIN_MISSING_MASS) -> dict[str, float]:
    """Mass of p that a flow q under-covers, estimated twice: by the exploration (which does not use q) and by
    the flow's own importance sampling, in the region where q is more than e^tau times too thin,

        R = {x : log p(x) - log Z^_q - log q(x) > tau},       Z^_q the flow's estimate of Z.

    P_e(R) = the exploration's self-normalised weight of its samples in R (group standard error), P_q(R) = the same
    with the flow's samples and weights (estimators.self_normalised_expectation, with its delta-method error). For a
    flow that covers p both estimate P_p(R); for a flow that misses a mode of mass m, R contains the mode, the flow's
    samples never land there (P_q(R) ~ 0 with a tiny error) while the exploration finds about m: D = P_e - P_q >
    3 se(D) and D > ``min_mass`` say "mass may be missing" (:func:`mass_missing`). This is far more sensitive than
    comparing log Z (a 1 % mode moves log Z by 0.01, below the SMC estimate's error at a few thousand particles)
    because only R's particles count.

    The sign test: where every group's own estimate P_g exceeds P_q + ``min_mass``, the mass is called missing too
    (a chance of at most 2^-G if none is; ``unseen_in_groups``, the fraction of groups that do; :func:`mass_missing`).
    Why, and the two estimates: docs/concepts/missing-mass-check.md.

    ``log_w_e``: the exploration's log weights in contiguous ``groups`` (a number of equal ones, or their sizes);
    ``log_ratio_e``: log p(x) - log q(x)
    at its samples; ``flow_log_w``: log p - log q of flow samples."""
    thr = flow_log_z + tau
    p_e, se_e, per_group = group_fraction(log_w_e, np.asarray(log_ratio_e) > thr, groups)
    p_q, se_q = (float(v) for v in self_normalised_expectation(flow_log_w, np.asarray(flow_log_w) > thr))
    d = p_e - p_q
    se = math.hypot(se_e, se_q)
    above = float(np.mean(per_group - p_q > min_mass))
    return {"unseen_mass": d, "unseen_mass_stderr": se, "unseen_in_groups": above, "thin_region_mass_explore": p_e,
            "thin_region_mass_flow": p_q, "mass_missing": mass_missing(d, se, min_mass, above == 1.0)}


def check_flow(look, key, flow_log_w: np.ndarray, flow_log_z: float) -> dict[str, Any]:
    """The missing-mass check of a flow: :func:`unseen_mass` on one exploration, ``look(key) -> (Exploration,
    log p - log q at its samples)``, and, where that is inconclusive,

        D > MIN_MISSING_MASS  and  SECOND_LOOK_SIGMA se(D) < D <= 3 se(D),

    :func:`unseen_mass` again on the pooled groups of that exploration and a second, independent one (each group is
    an independent SMC run whose weights estimate the same Z, so the pooled groups are one exploration of twice the
    groups, with its error from their spread; the two may differ in size, each group counting once). A mode the
    first look found only partly gets a second chance at 3 se; a flow that misses nothing gets a fresh estimate,
    not a lower bar (the verdict is still D > 3 se, now of the pooled estimate). Measured cases: the second look of
    docs/concepts/missing-mass-check.md. Returns :func:`unseen_mass`'s numbers, the (pooled) exploration's log Z and
    error, its particles, and the looks' number and cost (target evaluations, seconds)."""
    e, log_ratio = look(key)
    looks = [(e, np.asarray(log_ratio))]
    r = unseen_mass(e.log_w, e.n_groups, log_ratio, flow_log_w, flow_log_z)
    if not r["mass_missing"] and inconclusive(r["unseen_mass"], r["unseen_mass_stderr"]):
        e2, log_ratio2 = look(jax.random.fold_in(key, 1))
        looks.append((e2, np.asarray(log_ratio2)))
    log_w = np.concatenate([e.log_w for e, _ in looks])
    groups = [len(e.log_w) // e.n_groups for e, _ in looks for _ in range(e.n_groups)]
    if len(looks) > 1:
        r = unseen_mass(log_w, groups, np.concatenate([lr for _, lr in looks]), flow_log_w, flow_log_z)
    log_z, log_z_se = group_log_z(log_w, groups)
    return {"explore_log_z": log_z, "explore_log_z_stderr": log_z_se,
            "explore_converged": all(e.converged for e, _ in looks),
            "explore_target_evals": sum(e.target_evals for e, _ in looks),
            "explore_seconds": sum(e.seconds for e, _ in looks), "explore_particles": len(log_w),
            "explore_looks": len(looks), **r}
