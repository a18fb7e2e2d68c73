"""Exploring a target without a flow: tempered SMC from a broad Gaussian that grows until it is wider than all the
mass it finds, and the mass stops moving.

Reference r = N(c, s^2 I) on R^d. Tempered SMC (boltzflow.ais with resampling, boltzflow.mcmc.anneal R1; Del Moral,
Doucet & Jasra 2006) runs from r to p through

    log pi_k(x) = (1 - beta_k) log r(x) + beta_k log p(x),     0 = beta_0 < ... < beta_{K+1} = 1,           (X1)

with HMC moves at each level and a group resampled whenever its ESS fraction falls below one half. It returns
weighted samples (x_i, w_i), in G independent groups, with E[mean_{i in g} w_i] = Z in each group, hence

    log Z^ = log mean_g Z^_g,      se(log Z^) = sd_g(Z^_g) / (sqrt(G) mean_g Z^_g)                          (X2)

(the delta method over independent groups: the particles of one group are not independent after resampling), and
self-normalised estimates of p's mean m and per-dimension standard deviation sigma.

Why SMC and not AIS (measured on the far-mode mixtures of boltzflow.targets.far_modes, exploration alone; numbers
in docs/benchmarks.md): AIS from a reference 10 times wider than the target, 64 linear levels, gave log Z errors
of 1-5 nats in 9 dimensions. Resampling keeps the particles where pi_k's mass is at every level; for equal widths
a far mode's share relative to the bulk, w_far^beta r(mu_far)^(1-beta), moves monotonically in log between its
value under r and w_far, so a mode that r reaches is followed to the end. A mode narrower than the bulk starts
with fewer particles ((width ratio)^d under r) that are then multiplied, the source of most of the groups' spread;
hence 32,768 particles by default (ExploreSettings).

Growth (no bounds given). Round j uses r_j = N(c_j, s_j^2 I): c_0 = 0, s_0 = ``scale``; then c_{j+1} = m^_j and

    s_{j+1} = max(``growth`` s_j, ``factor`` sigma^_j),        sigma^_j = max_i sigma^_{j,i},                 (X3)

and the exploration stops (``converged``) at the first round that is (a) usable: it reached p, ESS n >=
``min_ess``, and at least half of its groups estimate Z within 100x of the largest (:func:`groups_agree`; after
resampling, a round whose weight one group carries still shows ESS n / G, from copies of one ancestor), (b) wide,
s_j >= ``factor`` sigma^_j: the reference is ``factor`` times wider than everything found, so a mode up to about
``factor`` found scales from the found mass starts with a fair share of the particles, and (c) agrees with the round
before on log Z (the mass stopped moving; new mass raises log Z):

    |log Z^_j - log Z^_{j-1}| <= tol + 3 sqrt(se_j^2 + se_{j-1}^2).                                          (X4)

(The first version stopped on (c) alone, growing from s = 1 by doubling: a 3 % mode at 8 bulk scales is missed by
the rounds at s = 1 and 2 alike, which then agree; (b) is what keeps growing.) With ``bounds`` (a box [lo, hi] per
dimension) one round runs from r = N(box centre, diag(half-widths^2)) and ``converged`` is true by fiat. Without a
converged round in ``max_rounds`` the result is the last usable round (or the last) and ``converged`` is false.

The result does not depend on a flow, so it serves as the independent check of a flow's log Z (a flow that missed
a mode shows a significantly lower log Z; boltzflow.evaluate), as samples to seed FAB's replay buffer with
(boltzflow.train.fab), and as the scale and bounds of a flow for an unknown target (boltzflow.autoflow).
Limits: a mode farther than about ``factor`` found scales, or much narrower than the found mass in many
dimensions (its share under r is then (width ratio)^d smaller), can still be missed: give ``bounds``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from boltzflow.ais import build_ais
from boltzflow.errors import BoltzflowError
from boltzflow.estimators import effective_sample_size, self_normalised_expectation
from boltzflow.mcmc.anneal import SMC
from boltzflow.mcmc.registry import make_kernel

RESAMPLE_BELOW = 0.5  # ESS fraction below which a group is resampled
CESS = 0.9  # conditional ESS each adaptive level keeps
ADAPT_RATE = 0.3  # step-size adaptation rate (boltzflow.mcmc.step_size, S2): a round adapts from scratch


#: dimensions up to which ``check`` is on by default: 32,768 SMC particles over 64 adaptive levels cost 15-35 s on
#: the 2-10-D far-mode targets (2-core CPU); Many Well 32 does not converge (its quartic walls need more than 64
#: levels from a reference ten times wider than a well), so it is left out
AUTO_MAX_DIM = 16
#: The least mass of p the check calls missing (X5). Well-trained flows whose tails are thinner than p's by more
#: than 10x over 0.03 % of its mass were flagged at 3-4 standard errors (far-mode family, training seed 1;
#: docs/benchmarks.md), a difference no user acts on; the modes the check is for carry 1 % or more.
MIN_MISSING_MASS = 1e-3
#: (X6): an unseen mass above ``MIN_MISSING_MASS`` at more than this many standard errors but not 3 is inconclusive
#: and the check looks again (:func:`check_flow`)
SECOND_LOOK_SIGMA = 2.0


@dataclass(frozen=True)
class ExploreSettings:
    """A config's ``explore`` section. ``check``: ``boltzflow evaluate`` (and the report after training) compares the
    flow with an exploration (:func:`unseen_mass`, log Z both ways); ``seed_buffer``: FAB's replay buffer starts with
    the exploration's samples (boltzflow.train.fab; off by default until its effect on the published GMM40 / Many Well
    numbers is measured); None means on for targets of at most ``AUTO_MAX_DIM`` dimensions that are not molecules (the
    default of ``check``). ``bounds``: the box of the reference instead of growth (:func:`explore`); ``n``,
    ``n_groups``, ``n_intermediate``: particles, independent groups, levels. 32,768 particles in 8 groups: with 8,192
    the groups' estimates of a 3 % mode narrower than the bulk in 9-D ranged from 1 % to 50 % (a narrow mode starts
    with few particles under a broad reference and each is multiplied many times), and the check flagged 6 of 10
    bulk-only flows of the far-mode family; with 32,768, 10 of 12, the other two being modes at 4 bulk scales that the
    bulk's own tails reach (the flow's importance sampling sees them too; docs/benchmarks.md)."""

    check: bool | None = None
    seed_buffer: bool | None = False
    bounds: list[Any] | None = None
    n: int = 32768
    n_groups: int = 8
    n_intermediate: int = 64

    def __post_init__(self):
        _check_particles(self.n, self.n_groups)
        if self.n_intermediate < 1:
            raise BoltzflowError(f"explore.n_intermediate must be >= 1, got {self.n_intermediate}")

    def wants(self, what: str, target) -> bool:
        """Whether ``check`` or ``seed_buffer`` is on for ``target`` (None: by its size and kind)."""
        on = getattr(self, what)
        return on if on is not None else (target.dim <= AUTO_MAX_DIM and not hasattr(target, "molecule"))

    def run(self, key, target, dtype=jnp.float32) -> "Exploration":
        return explore(key, target.log_prob, target.dim, n=self.n, n_groups=self.n_groups, bounds=self.bounds,
                       n_intermediate=self.n_intermediate, dtype=dtype)


@dataclass(frozen=True)
class Exploration:
    """The final round's weighted samples (x (n, d), log_w (n,); mean w estimates Z; log_p (n,) the target's
    unnormalised log density there, -inf where x is not finite) and estimates (X2), the reference N(center,
    scale^2 I) it used, one summary per round, and the target evaluations of all rounds."""

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

    def summary(self) -> dict[str, Any]:
        """What a run records (auto.json, eval.json): everything but the samples."""
        return {"log_z": self.log_z, "log_z_stderr": self.log_z_stderr, "ess": self.ess,
                "converged": self.converged, "reference_scale": float(np.max(self.scale)),
                "target_evals": self.target_evals, "rounds": list(self.rounds)}


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


def _group_weights(log_w: np.ndarray, n_groups: int) -> tuple[np.ndarray, float]:
    """The weights w_i e^-top as (n_groups, n / n_groups), non-finite log weights as 0, and top, the largest finite
    log weight (-inf if none: then every weight is 0)."""
    lw = np.where(np.isfinite(log_w), log_w, -np.inf).reshape(n_groups, -1)
    top = float(lw.max())
    return (np.exp(lw - top) if np.isfinite(top) else np.zeros(lw.shape)), top


def group_log_z(log_w: np.ndarray, n_groups: int) -> tuple[float, float]:
    """(X2): log Z^ and its standard error from ``n_groups`` contiguous independent groups of equal size."""
    w, top = _group_weights(log_w, n_groups)
    if not np.isfinite(top):
        return -math.inf, math.inf
    z = w.mean(axis=1)  # Z^_g e^-top
    log_z = float(top + math.log(z.mean()))
    se = float(z.std(ddof=1) / (math.sqrt(n_groups) * z.mean())) if n_groups > 1 else math.inf
    return log_z, se


def groups_agree(log_w: np.ndarray, n_groups: int, factor: float = 100.0) -> bool:
    """Whether at least half of the groups (and two) estimate Z within ``factor`` of the largest estimate: a
    round whose weight one or two groups carry has resampled its particles into copies of a few ancestors, and
    its ESS after resampling (1 / n_groups of n at least) says nothing."""
    w, top = _group_weights(log_w, n_groups)
    z = w.mean(axis=1)
    return bool(np.isfinite(top) and np.sum(z >= z.max() / factor) >= max(2, n_groups // 2))


def _check_particles(n: int, n_groups: int) -> None:
    """n / 8 particles per adaptation pass, in n_groups >= 2 groups of at least 2 (the one check of both sizes)."""
    if n_groups < 2 or n % (8 * n_groups) or n < 16 * n_groups:
        raise BoltzflowError(f"explore.n must be a multiple of 8 * n_groups with n_groups >= 2 and at least 16 "
                             f"particles per group; got n={n}, n_groups={n_groups}")


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


def explore(key, log_p, dim: int, n: int = 4096, n_groups: int = 8, bounds=None, scale: float = 1.0,
            growth: float = 2.0, factor: float = 10.0, max_rounds: int = 6, n_intermediate: int = 64,
            kernel: str = "hmc", adapt_passes: int = 20, tol: float = 0.005, min_ess: float = 200.0,
            dtype=jnp.float32, **kernel_options) -> Exploration:
    """Tempered SMC from a broad Gaussian (module docstring): one round from ``bounds`` if given, else rounds of
    growing width by (X3) until (X4) with a wide, usable round, or ``max_rounds``. ``log_p``: (n, dim) -> (n,);
    ``kernel_options`` go to the kernel (default ``n_leapfrog`` 5 for hmc). Step sizes are adapted, per level, on
    ``adapt_passes`` passes of n / 8 samples before each round's pass of n."""
    if not (scale > 0 and growth > 1 and factor >= 1 and max_rounds >= 1 and n_intermediate >= 1):
        raise BoltzflowError(f"explore needs scale > 0, growth > 1, factor >= 1, max_rounds >= 1 and "
                             f"n_intermediate >= 1; got scale={scale}, growth={growth}, factor={factor}, "
                             f"max_rounds={max_rounds}, n_intermediate={n_intermediate}")
    _check_particles(n, n_groups)
    if kernel == "hmc":
        kernel_options = {"n_leapfrog": 5, **kernel_options}
    kern = make_kernel(kernel, **kernel_options)

    def smc(log_p_fn):
        return build_ais(log_p_fn, kern, n_intermediate, smc=SMC(RESAMPLE_BELOW, n_groups, CESS), step_size=0.5,
                         adapt_rate=ADAPT_RATE)

    # SMC runs in standardized coordinates y = (x - c) / s, from N(0, I) to p_y(y) = p(c + s y) prod_i s_i (same Z),
    # where one step size per level suits every dimension and every round; c and s are traced: one compilation
    def run(k, st, c, s, m, adapt):
        res, st = smc(lambda y: log_p(c + s * y) + jnp.sum(jnp.log(s))).run(
            k, st, *_gaussian(jnp.zeros_like(c), jnp.ones_like(s)), m, adapt)
        return res._replace(x=c + s * res.x, log_p=res.log_p - jnp.sum(jnp.log(s))), st

    ais = smc(log_p)  # its step-size state and evaluation count are those of every round's
    run = jax.jit(run, static_argnums=(4, 5))
    if bounds is not None:
        lo, hi = parse_bounds(bounds, dim)
        center, s, max_rounds = (lo + hi) / 2, (hi - lo) / 2, 1
    else:
        center, s = np.zeros(dim), np.full(dim, float(scale))
    rounds, results, evals, converged, prev = [], [], 0, bounds is not None, None
    for _ in range(int(max_rounds)):
        key, k_adapt, k_run = jax.random.split(key, 3)
        state = ais.init_state(dtype)
        c_arr, s_arr = jnp.asarray(center, dtype), jnp.asarray(s, dtype)
        for k in jax.random.split(k_adapt, adapt_passes):
            state = run(k, state, c_arr, s_arr, n // 8, True)[1]
        res = run(k_run, state, c_arr, s_arr, n, False)[0]
        evals += (adapt_passes * (n // 8) + n) * ais.evals_per_sample
        x, log_w, log_px = (np.asarray(v, np.float64) for v in (res.x, res.log_w, res.log_p))
        log_z, se = group_log_z(log_w, n_groups)
        ok = np.isfinite(log_w)
        ess = float(effective_sample_size(res.log_w))
        reached = res.info.betas is None or float(res.info.betas[-1]) >= 1.0  # else the last step jumped to p
        usable = ess * n >= min_ess and reached and groups_agree(log_w, n_groups)
        mean, std = weighted_moments(x, log_w) if ok.any() else (center, s)
        found = float(np.max(std))
        rounds.append({"scale": float(np.max(s)), "log_z": log_z, "log_z_stderr": se, "ess": ess, "reached_p": reached,
                       "usable": usable, "found_scale": found,
                       "accept": float(np.mean(np.asarray(res.info.accept)))})
        results.append((x, log_w, log_px, mean, std, center.copy(), s.copy()))
        wide = np.max(s) >= factor * found * (1 - 1e-6)
        if bounds is None and usable and wide and prev is not None and \
                abs(log_z - prev["log_z"]) <= tol + 3 * math.hypot(se, prev["log_z_stderr"]):
            converged = True
            break
        prev = rounds[-1] if usable else None
        if usable and np.all(np.isfinite(mean)):
            center = mean
        s = np.full(dim, max(growth * float(np.max(s)), factor * found))
    usable_rounds = [i for i, r in enumerate(rounds) if r["usable"]]
    best = len(rounds) - 1 if converged or not usable_rounds else usable_rounds[-1]
    x, log_w, log_px, mean, std, center, s = results[best]
    r = rounds[best]
    return Exploration(x=x, log_w=log_w, log_p=log_px, log_z=r["log_z"], log_z_stderr=r["log_z_stderr"],
                       ess=r["ess"], mean=mean, std=std, center=center, scale=s, converged=converged,
                       rounds=tuple(rounds), target_evals=int(evals), n_groups=n_groups)


def group_fraction(log_w: np.ndarray, inside: np.ndarray, n_groups: int) -> tuple[float, float]:
    """Self-normalised weight of the samples ``inside`` a region (the ratio estimator over all groups) and its
    standard error from the spread of the groups' own estimates (independent SMC runs)."""
    w, top = _group_weights(log_w, n_groups)
    if not np.isfinite(top):
        return math.nan, math.inf
    inside = np.asarray(inside, bool).reshape(n_groups, -1)
    total = float((w * inside).sum() / w.sum())
    per_group = (w * inside).sum(1) / np.maximum(w.sum(1), 1e-300)
    return total, float(per_group.std(ddof=1) / math.sqrt(n_groups))


def mass_missing(unseen: float, stderr: float, min_mass: float = MIN_MISSING_MASS) -> bool:
    """The verdict of (X5): the unseen mass D is both significant (D > 3 se) and material (D > ``min_mass``)."""
    return bool(unseen > 3 * stderr and unseen > min_mass)


def inconclusive(unseen: float, stderr: float, min_mass: float = MIN_MISSING_MASS) -> bool:
    """(X6): material (D > ``min_mass``) and above ``SECOND_LOOK_SIGMA`` standard errors, but not above 3."""
    return bool(unseen > min_mass and SECOND_LOOK_SIGMA * stderr < unseen <= 3 * stderr)


def unseen_mass(log_w_e: np.ndarray, n_groups: int, log_ratio_e: np.ndarray, flow_log_w: np.ndarray,
                flow_log_z: float, tau: float = math.log(10.0), min_mass: float = MIN_MISSING_MASS) -> dict[str, float]:
    """Mass of p that a flow q under-covers, estimated twice: by the exploration (which does not use q) and by
    the flow's own importance sampling, in the region where q is more than e^tau times too thin,

        R = {x : log p(x) - log Z^_q - log q(x) > tau},       Z^_q the flow's estimate of Z,                    (X5)

    P_e(R) = the exploration's self-normalised weight of its samples in R (group standard error), P_q(R) = the same
    with the flow's samples and weights (estimators.self_normalised_expectation, E3, and its error). For a flow that
    covers p both estimate P_p(R); for a flow that misses a mode of mass m, R contains the mode, the flow's samples
    never land there (P_q(R) ~ 0 with a tiny error) while the exploration finds about m: D = P_e - P_q > 3 se(D) and D
    > ``min_mass`` say "mass may be missing" (:func:`mass_missing`). (X5) is far more sensitive than comparing log Z
    (a 1 % mode moves log Z by 0.01, below the SMC estimate's error at a few thousand particles) because only R's
    particles count.

    ``log_w_e``: the exploration's log weights in ``n_groups`` contiguous groups; ``log_ratio_e``: log p(x) - log q(x)
    at its samples; ``flow_log_w``: log p - log q of flow samples."""
    thr = flow_log_z + tau
    p_e, se_e = group_fraction(log_w_e, np.asarray(log_ratio_e) > thr, n_groups)
    p_q, se_q = (float(v) for v in self_normalised_expectation(flow_log_w, np.asarray(flow_log_w) > thr))
    d = p_e - p_q
    se = math.hypot(se_e, se_q)
    return {"unseen_mass": d, "unseen_mass_stderr": se, "thin_region_mass_explore": p_e,
            "thin_region_mass_flow": p_q, "mass_missing": mass_missing(d, se, min_mass)}


def check_flow(look, key, flow_log_w: np.ndarray, flow_log_z: float) -> dict[str, Any]:
    """The missing-mass check of a flow: (X5) on one exploration, ``look(key) -> (Exploration, log p - log q at its
    samples)``, and, where that is inconclusive,

        D > MIN_MISSING_MASS  and  SECOND_LOOK_SIGMA se(D) < D <= 3 se(D),                                       (X6)

    (X5) again on the pooled groups of that exploration and a second, independent one (each group is an
    independent SMC run whose weights estimate the same Z, so the pooled groups are one exploration of twice the
    particles, with its error from twice the groups). A mode the first look found only partly (in 10 dimensions,
    a third of a 2.9 % mode at 2.6 se: far-mode family, docs/benchmarks.md) gets a second chance at 3 se; a flow
    that misses nothing gets a fresh estimate, not a lower bar (the verdict is still D > 3 se, now of the pooled
    estimate). Returns (X5)'s numbers, the (pooled) exploration's log Z and error, and ``explore_looks``."""
    e, log_ratio = look(key)
    looks = [(e, np.asarray(log_ratio))]
    r = unseen_mass(e.log_w, e.n_groups, log_ratio, flow_log_w, flow_log_z)
    if inconclusive(r["unseen_mass"], r["unseen_mass_stderr"]):
        e2, log_ratio2 = look(jax.random.fold_in(key, 1))
        looks.append((e2, np.asarray(log_ratio2)))
    log_w = np.concatenate([e.log_w for e, _ in looks])
    n_groups = sum(e.n_groups for e, _ in looks)
    if len(looks) > 1:
        r = unseen_mass(log_w, n_groups, np.concatenate([lr for _, lr in looks]), flow_log_w, flow_log_z)
    log_z, log_z_se = group_log_z(log_w, n_groups)
    return {"explore_log_z": log_z, "explore_log_z_stderr": log_z_se,
            "explore_converged": all(e.converged for e, _ in looks),
            "explore_target_evals": sum(e.target_evals for e, _ in looks), "explore_looks": len(looks), **r}
