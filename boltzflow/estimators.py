"""Importance-sampling estimators from log weights: ESS, log Z with a standard error, self-normalised means.

All functions take log weights log w_i (n,) of samples x_i ~ q (or AIS paths), w = p~ / q with p~ unnormalised,
are pure ``jax.numpy`` (usable inside ``jit``/``vmap``), and treat a non-finite log weight (NaN, +-inf) as a
sample with weight 0: it still counts in n, so invalid samples lower the ESS and the estimate of Z.

- Kish effective sample size as a *fraction* of n (in [0, 1]):

      ESS = (sum_i w_i)^2 / (n sum_i w_i^2).

- log Z (Z = E_q[w]) and its delta-method standard error:

      log Z^ = logsumexp(log w) - log n,   se(log Z^) = std(w) / (sqrt(n) mean(w)),

  with the sample standard deviation (ddof = 1); for ddof = 0 this equals sqrt((1/ESS - 1) / n). log Z^ is
  biased low by about se^2 / 2 (Jensen), negligible when se is small.
- Self-normalised expectation with normalised weights W_i = w_i / sum_j w_j:

      E^[f] = sum_i W_i f(x_i),    se^2 = sum_i W_i^2 (f(x_i) - E^[f])^2

  (the delta-method variance of a ratio estimator; Owen 2013, "Monte Carlo theory", eq. 9.8).

- Streaming: :class:`WeightSums` holds, for a shift m (the largest finite log w seen), n, the non-finite count,
  s1 = sum_i e^(log w_i - m), s2 = sum_i e^(2 (log w_i - m)) and sf = sum_i e^(log w_i - m) f(x_i); chunks merge
  by rescaling to the larger shift, so the ESS, log Z^ with its se and E^[f] come from any number of samples,
  chunk by chunk, without holding them: ESS = s1^2 / (n s2), log Z^ = m + log(s1 / n), se from the sample variance
  (s2 - s1^2 / n) / (n - 1) of w e^(-m), E^[f] = sf / s1. They equal the functions above up to rounding.
  :func:`stream_sums` draws and merges such sums chunk by chunk.
- Resampling (Kitagawa 1996): systematic resampling of n weighted samples draws one u ~ U(0, 1) and takes as
  ancestors the samples at the positions (u + j) / n, j = 0..n-1, of the cumulative normalised weights, so sample i
  gets floor or ceil of n W_i copies (:func:`systematic_resample`; SMC's groups, boltzflow.mcmc.anneal);
  :func:`resample` draws m unweighted samples of p from n weighted ones: k = ceil(m / n) independent systematic
  resamplings pooled, m of the k n ancestors kept uniformly without replacement, so sample i appears m W_i times on
  average.

Derivations (the delta method, the resampling's counts): docs/concepts/estimators.md.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from boltzflow.errors import BoltzflowError
from boltzflow.sharding import to_host


def _clean(log_w: jax.Array) -> jax.Array:
    log_w = jnp.asarray(log_w)
    if not jnp.issubdtype(log_w.dtype, jnp.floating):
        log_w = log_w.astype(jnp.zeros(()).dtype)
    return jnp.where(jnp.isfinite(log_w), log_w, -jnp.inf)


def normalised_weights(log_w: jax.Array) -> jax.Array:
    """W = softmax(log w) with non-finite log weights as 0; all zeros if no weight is finite."""
    lw = _clean(log_w)
    any_ok = jnp.any(jnp.isfinite(lw))
    w = jax.nn.softmax(jnp.where(any_ok, lw, 0.0))
    return jnp.where(any_ok & jnp.isfinite(lw), w, 0.0)


def systematic_resample(key: jax.Array, log_w: jax.Array) -> jax.Array:
    """Ancestor indices (m,) of one systematic resampling (module docstring) of m samples with log weights
    ``log_w`` (m,); with no finite weight the samples are kept."""
    m = log_w.shape[0]
    ok = jnp.isfinite(log_w)
    w = normalised_weights(log_w)
    positions = (jax.random.uniform(key, (), log_w.dtype) + jnp.arange(m, dtype=log_w.dtype)) / m
    idx = jnp.searchsorted(jnp.cumsum(w), positions, side="right")
    return jnp.where(jnp.any(ok), jnp.clip(idx, 0, m - 1), jnp.arange(m))


def resample(key: jax.Array, x: np.ndarray, log_w: np.ndarray, m: int) -> np.ndarray:
    """m unweighted samples of p from n weighted ones (module docstring): sample i appears m W_i times on average;
    m = n is one systematic resampling. Non-finite log weights count as 0.

    Args:
        key: a JAX key.
        x: samples ``(n, ...)``.
        log_w: their importance log weights ``(n,)``, log p - log q up to a constant.
        m: how many.

    Returns:
        ``(m, ...)``: rows of ``x`` (repeated where a weight is large), in the order of ``x``.

    Example:
        >>> x, log_w = run.sample(jax.random.key(1), 100_000)
        >>> frames = resample(jax.random.key(2), x, log_w, 1000)
    """
    x, lw = np.asarray(x), np.asarray(log_w, np.float64).reshape(-1)
    if lw.shape[0] != x.shape[0]:
        raise BoltzflowError(f"{lw.shape[0]} log weights for {x.shape[0]} samples")
    if int(m) < 1:
        raise BoltzflowError(f"resample needs m >= 1, got {m}")
    if not np.isfinite(lw).any():
        raise BoltzflowError("no sample has a finite log weight: there is nothing to resample")
    n, m = lw.shape[0], int(m)
    keys = jax.random.split(key, -(-m // n) + 1)
    with jax.enable_x64(True):  # the cumulative weights of many samples, in float64
        lw64 = jnp.asarray(lw, jnp.float64)
        pool = np.concatenate([np.asarray(systematic_resample(k, lw64)) for k in keys[1:]])
    chosen = np.sort(np.asarray(jax.random.permutation(keys[0], pool.shape[0]))[:m])
    return x[pool[chosen]]


def effective_sample_size(log_w: jax.Array) -> jax.Array:
    """Kish ESS (module docstring) as a fraction of n in [0, 1]; 0 when no weight is finite."""
    lw = _clean(log_w)
    n = lw.shape[0]
    W = normalised_weights(lw)
    ess = 1.0 / (n * jnp.sum(W * W))
    return jnp.where(jnp.any(jnp.isfinite(lw)), jnp.clip(ess, 0.0, 1.0), 0.0)


def log_z_estimate(log_w: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(log Z^, se), se the delta-method standard error (module docstring). With no finite weight: (-inf, inf);
    with n = 1: se = inf."""
    lw = _clean(log_w)
    n = lw.shape[0]
    m = jnp.max(lw)
    any_ok = jnp.isfinite(m)
    w = jnp.exp(lw - jnp.where(any_ok, m, 0.0))  # in [0, 1], max 1
    mean = jnp.mean(w)
    log_z = jnp.where(any_ok, jnp.log(mean) + m, -jnp.inf)
    if n < 2:
        return log_z, jnp.full((), jnp.inf, lw.dtype)
    std = jnp.std(w, ddof=1)
    se = std / (jnp.sqrt(n) * mean)
    return log_z, jnp.where(any_ok, se, jnp.inf)


def self_normalised_expectation(log_w: jax.Array, values: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(E^[f], se), the self-normalised expectation and its delta-method error (module docstring), from log
    weights (n,) and f(x_i) ``values`` (n,) or (n, ...).

    Values of samples with weight 0 are ignored (even if not finite). NaN where no weight is finite.
    """
    W = normalised_weights(log_w)
    v = jnp.asarray(values)
    Wb = W.reshape(W.shape + (1,) * (v.ndim - 1))
    v = jnp.where(Wb > 0, v, 0.0)
    est = jnp.sum(Wb * v, axis=0)
    se = jnp.sqrt(jnp.sum(Wb**2 * (v - est) ** 2, axis=0))
    ok = jnp.any(W > 0)
    return jnp.where(ok, est, jnp.nan), jnp.where(ok, se, jnp.nan)


class WeightSums(NamedTuple):
    """Mergeable sums of log weights (module docstring, "Streaming"); a pytree of scalars (``sf`` shaped like f)."""

    n: jax.Array
    n_nonfinite: jax.Array
    m: jax.Array
    s1: jax.Array
    s2: jax.Array
    sf: jax.Array

    @classmethod
    def of(cls, log_w: jax.Array, valid: jax.Array | None = None, values: jax.Array | None = None) -> "WeightSums":
        """The sums of the rows with ``valid`` True (all by default); ``values`` f(x_i) (n,) or (n, ...)."""
        raw = jnp.asarray(log_w)
        valid = jnp.ones(raw.shape, bool) if valid is None else valid
        lw = jnp.where(valid, _clean(raw), -jnp.inf)
        m = jnp.max(lw)
        e = jnp.exp(lw - jnp.where(jnp.isfinite(m), m, 0.0))
        v = jnp.zeros(raw.shape, lw.dtype) if values is None else jnp.asarray(values)
        eb = e.reshape(e.shape + (1,) * (v.ndim - 1))
        sf = jnp.sum(jnp.where(eb > 0, eb * v, 0.0), axis=0)
        return cls(jnp.sum(valid), jnp.sum(valid & ~jnp.isfinite(raw)), m, jnp.sum(e), jnp.sum(e * e), sf)

    def merge(self, other: "WeightSums") -> "WeightSums":
        """The sums of both sets of weights (each rescaled to the larger maximum)."""
        m = jnp.maximum(self.m, other.m)
        shift = jnp.where(jnp.isfinite(m), m, 0.0)
        a, b = (jnp.where(jnp.isfinite(s.m), jnp.exp(s.m - shift), 0.0) for s in (self, other))
        return WeightSums(self.n + other.n, self.n_nonfinite + other.n_nonfinite, m, a * self.s1 + b * other.s1,
                          a * a * self.s2 + b * b * other.s2, a * self.sf + b * other.sf)

    def ess(self) -> jax.Array:
        """Kish ESS as a fraction of n; 0 when no weight is finite."""
        ok = jnp.isfinite(self.m)
        return jnp.where(ok, jnp.clip(self.s1**2 / (self.n * jnp.where(ok, self.s2, 1.0)), 0.0, 1.0), 0.0)

    def log_z(self) -> tuple[jax.Array, jax.Array]:
        """(log Z^, se) as :func:`log_z_estimate`: (-inf, inf) with no finite weight, se = inf for n < 2."""
        ok = jnp.isfinite(self.m)
        mean = self.s1 / self.n
        var = jnp.maximum(self.s2 - self.s1 * mean, 0.0) / jnp.maximum(self.n - 1, 1)
        se = jnp.sqrt(var) / (jnp.sqrt(self.n) * mean)
        return jnp.where(ok, jnp.log(mean) + self.m, -jnp.inf), jnp.where(ok & (self.n > 1), se, jnp.inf)

    def expectation(self) -> jax.Array:
        """E^[f] = sf / s1 (module docstring); NaN when no weight is finite."""
        return jnp.where(jnp.isfinite(self.m), self.sf / self.s1, jnp.nan)


def _merge(a, b):
    """Chunk results merged: :class:`WeightSums` by their rule, every other leaf summed."""
    return jax.tree_util.tree_map(lambda u, v: u.merge(v) if isinstance(u, WeightSums) else u + v, a, b,
                                  is_leaf=lambda t: isinstance(t, WeightSums))


def stream_sums(fn: Callable, key: jax.Array, n: int, chunk: int,
                keep: Callable[[dict], dict] | None = None) -> tuple[Any, dict[str, np.ndarray]]:
    """Sums of ``fn(key_i, valid_i) -> (sums, rows)`` over ceil(n / chunk) chunks of ``chunk`` samples, merged
    (:class:`WeightSums` by their rule, other leaves added), and the chunks' rows kept in host memory.

    Args:
        fn: one chunk, jitted once: ``valid_i`` (chunk,) masks the last chunk's rows past n; ``rows`` is a dict of
            per-sample arrays (chunk, ...).
        key: split into one key per chunk.
        n: samples in all.
        chunk: samples per chunk.
        keep: what is kept of a chunk's rows (host arrays cut to its valid rows); default: the rows as they are.

    Returns:
        (the merged sums, each kept row array concatenated over the chunks).
    """
    step = jax.jit(lambda k, count: fn(k, jnp.arange(chunk) < count))
    total, kept = None, []
    for i, k in enumerate(jax.random.split(key, -(-n // chunk))):
        count = min(chunk, n - i * chunk)
        # one chunk's program finishes before the next starts: with more devices than cores, XLA:CPU could run
        # devices of two chunks' programs at once and deadlock in an all-reduce (seen on 4 forced host devices)
        sums, rows = jax.block_until_ready(step(k, jnp.asarray(count, jnp.int32)))
        total = sums if total is None else _merge(total, sums)
        rows = {name: np.asarray(r)[:count] for name, r in to_host(rows).items()}
        kept.append(keep(rows) if keep is not None else rows)
    return total, {name: np.concatenate([rows[name] for rows in kept]) for name in kept[0]}
