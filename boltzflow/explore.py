"""Exploring a target without a flow: AIS from a broad Gaussian reference that grows until the mass stops moving.

Reference r_s = N(0, s^2 I) on R^d. AIS (boltzflow.ais with alpha = 1, Neal 2001) from r_s to p through

    log pi_k(x) = (1 - beta_k) log r_s(x) + beta_k log p(x),     0 = beta_0 < ... < beta_{K+1} = 1,        (X1)

gives weighted samples (x_i, w_i) with E[w] = Z for any s (boltzflow.ais, eq. A3), hence log Z^ (estimators, E2)
and self-normalised estimates of p's mean m and per-dimension standard deviation sigma. Unbiasedness is
asymptotic: mass that r_s and the kernels never reach is missed silently, with a small standard error. A wider
reference reaches further; what it costs is weight variance, which more intermediate distributions pay for.

Growth: s_0 = ``scale``, s_{j+1} = ``growth`` s_j, one AIS run per round (step sizes adapted per level first). A
round is usable when its weights are worth at least ``min_ess`` independent samples (ESS n >= min_ess); growth stops
when two consecutive usable rounds agree on log Z, i.e. the mass stopped moving (new mass found by a wider reference
raises log Z):

    |log Z^_j - log Z^_{j-1}| <= tol + 3 sqrt(se_j^2 + se_{j-1}^2).                                        (X2)

Without two such rounds in ``max_rounds`` the result is the round with the most effective samples and
``converged`` is false: a target much narrower than the reference it must be found from (e.g. a sharp mode far from
the origin) needs more intermediate distributions than ``n_intermediate``, or a ``scale`` of its own size.

The result does not depend on a flow, so it serves as the independent check of a flow's log Z (a flow that missed
a mode shows a significantly lower log Z) and as the scale and bounds a flow for an unknown target should start
from (its m, sigma and the extent of the weighted samples).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from boltzflow.ais import build_ais
from boltzflow.errors import BoltzflowError
from boltzflow.estimators import effective_sample_size, log_z_estimate
from boltzflow.mcmc.registry import make_kernel


@dataclass(frozen=True)
class Exploration:
    """The last round's weighted samples (x (n, d), log_w (n,)) and estimates, the reference scale s it used,
    one summary per round, and the target evaluations spent in all rounds."""

    x: np.ndarray
    log_w: np.ndarray
    log_z: float
    log_z_stderr: float
    ess: float
    mean: np.ndarray
    std: np.ndarray
    scale: float
    converged: bool
    rounds: tuple[dict, ...]
    target_evals: int


def _gaussian(dim: int, s, dtype):
    """(sample_and_log_q, log_q) of N(0, s^2 I_dim); ``s`` may be traced (one compilation for every round)."""
    const = -0.5 * dim * jnp.log(2 * math.pi * s * s)

    def log_q(x):
        return const - 0.5 * jnp.sum(x * x, axis=1) / (s * s)

    def sample_and_log_q(key, n):
        x = s * jax.random.normal(key, (n, dim), dtype)
        return x, log_q(x)

    return sample_and_log_q, log_q


def _weighted_moments(x: np.ndarray, log_w: np.ndarray):
    ok = np.isfinite(log_w)
    w = np.exp(log_w[ok] - log_w[ok].max())
    w /= w.sum()
    mean = w @ x[ok]
    return mean, np.sqrt(np.maximum(w @ (x[ok] - mean) ** 2, 0.0))


def explore(key, log_p, dim: int, n: int = 4096, scale: float = 1.0, growth: float = 2.0, max_rounds: int = 8,
            n_intermediate: int = 16, kernel: str = "hmc", adapt_passes: int = 20, adapt_batch: int = 256,
            tol: float = 0.05, min_ess: float = 200.0, dtype=jnp.float32, **kernel_options) -> Exploration:
    """Grow the reference of (X1) from ``scale`` by ``growth`` until (X2) holds or ``max_rounds`` rounds ran
    (``converged`` says which); module docstring. ``log_p``: (n, dim) -> (n,); ``kernel_options`` go to the
    kernel (e.g. ``n_leapfrog``)."""
    if not (scale > 0 and growth > 1 and max_rounds >= 1 and n >= 2):
        raise BoltzflowError(f"explore needs scale > 0, growth > 1, max_rounds >= 1 and n >= 2; got scale={scale}, "
                             f"growth={growth}, max_rounds={max_rounds}, n={n}")
    ais = build_ais(log_p, make_kernel(kernel, **kernel_options), n_intermediate)
    run = jax.jit(lambda k, st, s, m, adapt: ais.run(k, st, *_gaussian(dim, s, dtype), m, adapt),
                  static_argnums=(3, 4))
    rounds, results, prev, evals, s, converged = [], [], None, 0, float(scale), False
    for _ in range(int(max_rounds)):
        key, k_adapt, k_run = jax.random.split(key, 3)
        state = ais.init_state(dtype)
        s_arr = jnp.asarray(s, dtype)
        for k in jax.random.split(k_adapt, adapt_passes):
            state = run(k, state, s_arr, adapt_batch, True)[1]
        res = run(k_run, state, s_arr, n, False)[0]
        evals += (adapt_passes * adapt_batch + n) * ais.evals_per_sample
        x, log_w = np.asarray(res.x, np.float64), np.asarray(res.log_w, np.float64)
        log_z, se = (float(v) for v in log_z_estimate(jnp.asarray(log_w)))
        ess = float(effective_sample_size(jnp.asarray(log_w)))
        rounds.append({"scale": s, "log_z": log_z, "log_z_stderr": se, "ess": ess,
                       "accept": [float(a) for a in np.asarray(res.info.accept)]})
        results.append((x, log_w))
        usable = ess * n >= min_ess
        if usable and prev is not None and abs(log_z - prev["log_z"]) <= tol + 3 * math.hypot(se, prev["log_z_stderr"]):
            converged = True
            break
        prev = rounds[-1] if usable else None
        s *= growth
    best = len(rounds) - 1 if converged else int(np.argmax([r["ess"] for r in rounds]))
    (x, log_w), r = results[best], rounds[best]
    mean, std = _weighted_moments(x, log_w)
    return Exploration(x=x, log_w=log_w, log_z=r["log_z"], log_z_stderr=r["log_z_stderr"], ess=r["ess"], mean=mean,
                       std=std, scale=r["scale"], converged=converged, rounds=tuple(rounds), target_evals=int(evals))
