"""Targets with modes nobody told the sampler about: a bulk near the origin and one or two far, light modes.

``far_modes(seed, dim=None)`` draws, from ``numpy.random.default_rng(seed)``:

- the dimension d uniform in {2, ..., 10} (unless given);
- a bulk of 1-3 unit-variance components with weights from Dirichlet(2, ..., 2) and means m_j ~ N(0, 0.7^2 I), so
  the bulk is a lumpy blob; its scale sigma_b is the RMS per-dimension standard deviation of the bulk mixture;
- 1 far mode (2 with probability 0.3), each with weight U(1 %, 5 %) of the total, standard deviation
  U(0.7, 1.0), and mean at the bulk's mean plus D sigma_b u with D ~ U(3, 8) and u a uniform random direction
  (two far modes of one target may sit near each other).

It is a :class:`~boltzflow.targets.gmm.GaussianMixture` (normalised, log Z = 0, exact samples), with the far
components last and their number in ``n_far``. The mass of a far mode, as a sampler recovers it, is the mass of its
*region*: the points whose most responsible component is that mode (:meth:`FarModes.region_mass`, the same rule
applied to exact samples gives the truth; the regions differ from the weights by the overlap, well under 1 % of a
weight for D >= 3).
"""

from __future__ import annotations

import numpy as np

from boltzflow.errors import BoltzflowError
from boltzflow.targets.gmm import GaussianMixture


class FarModes(GaussianMixture):
    """A bulk plus ``n_far`` far light modes (module docstring); ``distances`` in bulk scales, ``bulk_scale``."""

    def __init__(self, means, stds, weights, n_far: int, bulk_scale: float, distances, seed: int):
        super().__init__(means, stds, weights, name=f"far_modes_{seed}")
        self.n_far, self.bulk_scale, self.distances, self.seed = int(n_far), float(bulk_scale), distances, seed

    def region_of(self, x) -> np.ndarray:
        """Index (n,) of the most responsible component of each sample (-1 for non-finite samples)."""
        x = np.asarray(x, np.float64)
        sq = ((x[:, None, :] - self.means[None]) ** 2).sum(-1)
        score = self._log_const[None] - 0.5 * sq / self.stds[None] ** 2
        out = np.argmax(score, axis=1)
        return np.where(np.all(np.isfinite(x), axis=1), out, -1)

    def region_mass(self, x, log_w=None) -> np.ndarray:
        """Self-normalised mass (n_far,) of each far mode's region under weighted samples (equal weights when
        ``log_w`` is None; non-finite weights count as 0)."""
        x = np.asarray(x, np.float64)
        w = np.ones(len(x)) if log_w is None else np.exp(np.where(np.isfinite(log_w), log_w, -np.inf)
                                                         - np.nanmax(np.where(np.isfinite(log_w), log_w, np.nan)))
        region = self.region_of(x)
        w = np.where(region >= 0, w, 0.0)
        far = range(self.n_components - self.n_far, self.n_components)
        return np.array([w[region == k].sum() for k in far]) / w.sum()

    def __repr__(self) -> str:
        return f"FarModes(seed={self.seed}, dim={self.dim}, n_far={self.n_far})"


def far_modes(seed: int = 0, dim: int | None = None) -> FarModes:
    """The far-mode mixture number ``seed`` (module docstring)."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise BoltzflowError(f"far_modes seed must be an integer >= 0, got {seed!r}")
    rng = np.random.default_rng(int(seed))
    d = int(rng.integers(2, 11))
    if dim is not None:
        if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) or dim < 1:
            raise BoltzflowError(f"far_modes dim must be an integer >= 1, got {dim!r}")
        d = int(dim)
    n_bulk = int(rng.integers(1, 4))
    bulk_means = 0.7 * rng.standard_normal((n_bulk, d))
    bulk_w = rng.dirichlet(np.full(n_bulk, 2.0))
    bulk_mean = bulk_w @ bulk_means
    bulk_scale = float(np.sqrt(1.0 + np.mean(bulk_w @ (bulk_means - bulk_mean) ** 2)))
    n_far = 2 if rng.random() < 0.3 else 1
    far_w = rng.uniform(0.01, 0.05, n_far)
    far_std = rng.uniform(0.7, 1.0, n_far)
    dist = rng.uniform(3.0, 8.0, n_far)
    u = rng.standard_normal((n_far, d))
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    far_means = bulk_mean + (dist * bulk_scale)[:, None] * u
    weights = np.concatenate([(1.0 - far_w.sum()) * bulk_w, far_w])
    return FarModes(np.concatenate([bulk_means, far_means]), np.concatenate([np.ones(n_bulk), far_std]), weights,
                    n_far, bulk_scale, dist.tolist(), int(seed))
