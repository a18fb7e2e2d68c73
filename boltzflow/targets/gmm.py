"""Gaussian mixtures: a generic isotropic mixture and FAB's 40-mode benchmark ``GMM40``.

``p(x) = sum_k w_k N(x; mu_k, s_k^2 I)`` with ``sum_k w_k = 1``, so the density is normalised and ``log_z = 0``.

GMM40 (Midgley et al., ICLR 2023, "Flow Annealed Importance Sampling Bootstrap", sec. 5.1): 40 equal-weight
components in 2-D with means uniform in [-40, 40]^2 (``data/gmm40_means.json``, fixed) and isotropic standard
deviation softplus(1) = log(1 + e) = 1.31326.

Mode coverage rule (:meth:`GaussianMixture.modes_covered`): each finite sample is assigned to the component k that
minimises the scaled distance ``|x - mu_k| / s_k`` (the nearest mean when all stds are equal); component k is
*covered* when at least ``min_count`` (default 1) samples are assigned to it and lie within ``radius`` (default 3)
standard deviations of its mean, ``|x - mu_k| <= radius * s_k``.
"""

from __future__ import annotations

import json
import math
from importlib import resources

import jax
import jax.numpy as jnp
import numpy as np

from boltzflow.errors import BoltzflowError
from boltzflow.targets.base import Target

#: softplus(1.0) = log(1 + e): the GMM40 component standard deviation.
GMM40_STD = math.log1p(math.e)


def load_gmm40_means() -> np.ndarray:
    """The 40 x 2 GMM40 means shipped in ``boltzflow/targets/data/gmm40_means.json``."""
    text = resources.files("boltzflow.targets").joinpath("data", "gmm40_means.json").read_text()
    means = np.asarray(json.loads(text), dtype=np.float64)
    assert means.shape == (40, 2), means.shape
    return means


class GaussianMixture(Target):
    """Isotropic Gaussian mixture ``sum_k w_k N(mu_k, s_k^2 I)`` (normalised: ``log_z = 0``) with exact samples.

    Args:
        means: ``(K, dim)`` component means.
        stds: a scalar or ``(K,)`` per-component isotropic standard deviations (> 0).
        weights: ``(K,)`` non-negative weights (normalised here); ``None`` for equal weights.
        name: short name used in reports.
    """

    name = "gmm"
    log_z = 0.0

    def __init__(self, means, stds=1.0, weights=None, name: str = "gmm"):
        means = np.asarray(means, dtype=np.float64)
        if means.ndim != 2 or means.shape[0] < 1 or not np.all(np.isfinite(means)):
            raise BoltzflowError(f"GaussianMixture means must be a finite (K, dim) array, got shape {means.shape}")
        k, dim = means.shape
        stds = np.broadcast_to(np.asarray(stds, dtype=np.float64), (k,)).copy()
        if not np.all(stds > 0) or not np.all(np.isfinite(stds)):
            raise BoltzflowError("GaussianMixture stds must be finite and > 0")
        weights = np.full(k, 1.0 / k) if weights is None else np.asarray(weights, dtype=np.float64)
        if weights.shape != (k,) or np.any(weights < 0) or not np.isfinite(weights.sum()) or weights.sum() <= 0:
            raise BoltzflowError(f"GaussianMixture weights must be {k} non-negative numbers with a positive sum")
        self.name = name
        self.dim = dim
        self.means = means
        self.stds = stds
        self.weights = weights / weights.sum()
        with np.errstate(divide="ignore"):
            self._log_w = np.log(self.weights)
        # log w_k - dim log s_k - dim/2 log 2 pi: the per-component constant of the log density.
        self._log_const = self._log_w - dim * np.log(stds) - 0.5 * dim * math.log(2.0 * math.pi)

    @property
    def n_components(self) -> int:
        return self.means.shape[0]

    def _log_prob(self, x: jax.Array) -> jax.Array:
        if not jnp.issubdtype(x.dtype, jnp.floating):
            x = x.astype(jnp.zeros(()).dtype)
        dt = x.dtype
        mu = jnp.asarray(self.means, dt)
        inv_var = jnp.asarray(1.0 / self.stds**2, dt)
        sq = jnp.sum((x[:, None, :] - mu[None, :, :]) ** 2, axis=-1)  # (n, K)
        return jax.scipy.special.logsumexp(jnp.asarray(self._log_const, dt) - 0.5 * sq * inv_var, axis=1)

    def sample(self, key: jax.Array, n: int) -> jax.Array:
        """``n`` exact samples ``(n, dim)``: a component k ~ w, then ``mu_k + s_k eps``; jittable (static ``n``)."""
        n = int(n)
        dt = jnp.zeros(()).dtype
        k_comp, k_eps = jax.random.split(key)
        comp = jax.random.categorical(k_comp, jnp.asarray(self._log_w, dt), shape=(n,))
        eps = jax.random.normal(k_eps, (n, self.dim), dtype=dt)
        return jnp.asarray(self.means, dt)[comp] + jnp.asarray(self.stds, dt)[comp, None] * eps

    # Modes ---------------------------------------------------------------------------------------------------------
    @property
    def n_modes(self) -> int:
        return self.n_components

    def mode_points(self) -> jax.Array:
        """The component means, ``(K, dim)``."""
        return jnp.asarray(self.means, jnp.zeros(()).dtype)

    def modes_hit(self, samples, radius: float = 3.0, min_count: int = 1) -> np.ndarray:
        """Boolean ``(K,)``: which components are covered (rule in the module docstring)."""
        x = np.asarray(samples, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise BoltzflowError(f"samples must have shape (n, {self.dim}), got {x.shape}")
        x = x[np.all(np.isfinite(x), axis=1)]
        counts = np.zeros(self.n_components, dtype=np.int64)
        for start in range(0, len(x), 65536):  # chunks bound the (n, K) distance matrix, not a per-sample loop
            xc = x[start : start + 65536]
            dist = np.sqrt(((xc[:, None, :] - self.means[None]) ** 2).sum(-1)) / self.stds[None]
            nearest = np.argmin(dist, axis=1)
            close = dist[np.arange(len(xc)), nearest] <= radius
            counts += np.bincount(nearest[close], minlength=self.n_components)
        return counts >= min_count

    def modes_covered(self, samples, radius: float = 3.0, min_count: int = 1) -> int:
        """Number of components covered by ``samples`` (rule in the module docstring)."""
        return int(self.modes_hit(samples, radius, min_count).sum())

    # Constructors --------------------------------------------------------------------------------------------------
    @classmethod
    def grid4(cls, spacing: float = 8.0, std: float = 1.0) -> "GaussianMixture":
        """A small 2-D test mixture: 4 equal-weight modes at (+-spacing/2, +-spacing/2), well separated."""
        h = spacing / 2.0
        means = np.array([[-h, -h], [-h, h], [h, -h], [h, h]])
        return cls(means, std, name="gmm4")

    def __repr__(self) -> str:
        return f"GaussianMixture(n_components={self.n_components}, dim={self.dim})"


class GMM40(GaussianMixture):
    """FAB's 2-D mixture of 40 equal-weight Gaussians, std softplus(1) = 1.31326 (Midgley et al. 2023)."""

    def __init__(self):
        super().__init__(load_gmm40_means(), GMM40_STD, name="gmm40")

    def __repr__(self) -> str:
        return "GMM40()"


def small_gmm() -> GaussianMixture:
    """Alias of :meth:`GaussianMixture.grid4` with its defaults."""
    return GaussianMixture.grid4()
