"""Particle systems whose energy is invariant under rotations, translations and permutations of identical particles:
DW-4 and the Lennard-Jones clusters LJ-13 and LJ-55 (Köhler, Klein & Noé 2020, "Equivariant flows: exact
likelihood generative learning for symmetric densities", sec. 6), in reduced units (kT = tau).

Energies of N particles x_1 .. x_N in d dimensions, d_ij = |x_i - x_j|:

    DW-4 (N = 4, d = 2):   E(x) = (1 / tau) sum_{i<j} [a (d_ij - d0) + b (d_ij - d0)^2 + c (d_ij - d0)^4],
                           a = 0, b = -4, c = 0.9, d0 = 4, tau = 1;
    LJ-N (N = 13, 55; d = 3):
                           E(x) = (eps / tau) s sum_{i<j} [(r_m / d_ij)^12 - 2 (r_m / d_ij)^6]
                                  + (c_osc / (2 tau)) sum_i |x_i - x_mean|^2,
                           eps = r_m = tau = c_osc = 1.

The pair sum of LJ comes in two conventions in the literature: s = 1 (``pair_sum="pairs"``: each pair once, the
pair minimum -eps at d = r_m; Köhler et al.'s ``eps / 2 sum_{i != j}``, and the Cambridge Cluster Database's global
minima, -44.326801 eps for LJ-13) and s = 2 (``pair_sum="ordered"``: sum_{i != j} without the 1/2, as some later
code writes it). Every table names the one it uses.

Coordinates. E does not change when every particle moves by the same vector, so exp(-E) is not normalisable on
R^{N d}; the target lives on the centre-of-mass-free subspace sum_i x_i = 0, of dimension (N - 1) d. Its x is the
vector y of R^{(N-1) d} with positions X = H y (per spatial axis, X[:, k] = H y[:, k]), H the N x (N - 1) Helmert
matrix with orthonormal columns orthogonal to (1, .., 1):

    H[:, k - 1] = (1, .., 1, -k, 0, .., 0) / sqrt(k (k + 1))      (k ones, then -k),  k = 1 .. N - 1.

H is an isometry onto the subspace, so p(y) = exp(-E(H y)) / Z with no Jacobian, and a density of y is one of the
centre-of-mass-free positions with respect to their (N - 1) d-dimensional volume: any flow on R^{(N-1) d} learns it;
an equivariant flow works on :meth:`ParticleTarget.positions`. Rotations and permutations of X act on y linearly
and orthogonally (H^T P H and R per axis), so p(y) keeps their invariance.

Report (:meth:`ParticleTarget.metrics`), against reference samples y (``reference=``: an ``.npz`` with ``x``, e.g.
``samples.npz`` of ``boltzflow md``):

- ``mean_log_q_reference``: E_ref[log q(y)], q as a density of the centre-of-mass-free coordinates of labelled
  particles (no factor N! for permutations, none for orientations: q and p are densities of the same y);
- ``energy_w2``, ``energy_w1`` (``_reweighted``): the 2- and 1-Wasserstein distances between the energies E / tau
  of the model's samples (raw, or importance-weighted) and of the reference, Wp^p = int_0^1 |F^-1(u) - G^-1(u)|^p du
  of the two (weighted) empirical distributions; ``energy_w1_reference_noise``: W1 between the reference's two
  halves, the size of W1 that the reference's own sampling noise gives;
- ``distance_w1`` and ``distance_tv`` (``_reweighted``): the interatomic distances of all pairs, histogrammed on
  :data:`DISTANCE_BINS` bins over [0, 2 spacing N^(1/d)]: W1 = sum_b |F_b - G_b| width (the histograms' CDFs) and
  the total variation 1/2 sum_b |f_b - g_b|.
"""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from boltzflow.errors import BoltzflowError
from boltzflow.molecules.metrics import normalised_weights
from boltzflow.molecules.reference import load_reference
from boltzflow.targets.base import Target
from boltzflow.targets.report import ModelSamples, Pictures, apply_in_chunks

PAIR_SUMS = {"pairs": 1.0, "ordered": 2.0}
#: bins of the interatomic-distance histograms of the report
DISTANCE_BINS = 60


def helmert(n: int) -> np.ndarray:
    """The ``(n, n - 1)`` Helmert matrix (module docstring): orthonormal columns spanning {v: sum v = 0}."""
    h = np.zeros((n, n - 1))
    for k in range(1, n):
        h[:k, k - 1] = 1.0
        h[k, k - 1] = -k
        h[:, k - 1] /= np.sqrt(k * (k + 1.0))
    return h


def helmert_positions(y: jax.Array, n: int, d: int) -> jax.Array:
    """``(B, (n - 1) d) -> (B, n, d)``: X = H y, centre of mass at the origin."""
    return jnp.einsum("ik,bkd->bid", jnp.asarray(helmert(n), y.dtype), y.reshape(y.shape[0], n - 1, d))


def helmert_coordinates(positions: jax.Array) -> jax.Array:
    """``(B, n, d) -> (B, (n - 1) d)``: y = H^T X (the centre of mass dropped)."""
    y = jnp.einsum("ik,bid->bkd", jnp.asarray(helmert(positions.shape[1]), positions.dtype), positions)
    return y.reshape(positions.shape[0], -1)


def pair_distances(positions: jax.Array) -> jax.Array:
    """``(..., N, d) -> (..., N (N - 1) / 2)``: d_ij for i < j (row-major order)."""
    i, j = np.triu_indices(positions.shape[-2], 1)
    diff = positions[..., i, :] - positions[..., j, :]
    return jnp.sqrt(jnp.sum(diff * diff, axis=-1))


class ParticleTarget(Target):
    """N identical particles in d dimensions, on the centre-of-mass-free coordinates y (module docstring).

    Attributes:
        n_particles: N.
        spatial_dim: d.
        dim: (N - 1) d, the dimension of y.
    """

    def __init__(self, n_particles: int, spatial_dim: int, reference: str | None = None):
        if n_particles < 2 or spatial_dim < 1:
            raise BoltzflowError(f"need at least 2 particles in >= 1 dimension, got {n_particles} in {spatial_dim}")
        self.n_particles, self.spatial_dim = int(n_particles), int(spatial_dim)
        self.dim = (self.n_particles - 1) * self.spatial_dim
        self._h = helmert(self.n_particles)
        self.reference_path = reference

    def positions(self, y: jax.Array) -> jax.Array:
        """``(n, (N - 1) d) -> (n, N, d)``: X = H y, centre of mass at the origin."""
        return helmert_positions(y, self.n_particles, self.spatial_dim)

    def coordinates(self, positions: jax.Array) -> jax.Array:
        """``(n, N, d) -> (n, (N - 1) d)``: y = H^T X (the centre of mass dropped)."""
        return helmert_coordinates(positions)

    def energy_of_positions(self, positions: jax.Array) -> jax.Array:
        """E / tau of positions ``(n, N, d) -> (n,)``."""
        raise NotImplementedError

    @property
    def spacing(self) -> float:
        """The pair potential's preferred distance: :meth:`start`'s lattice spacing, the histograms' length scale."""
        raise NotImplementedError

    @property
    def particles(self) -> tuple[int, int, float]:
        """(N, d, :attr:`spacing`): what an equivariant flow needs to know of the target (flow type ``eacf``)."""
        return self.n_particles, self.spatial_dim, self.spacing

    def start(self) -> np.ndarray:
        """A starting configuration y ``(dim,)`` for MCMC: the particles on a square (cubic) lattice with spacing
        :attr:`spacing`, the first N points nearest its centre, centre of mass at the origin."""
        side = int(np.ceil(self.n_particles ** (1 / self.spatial_dim))) + 1
        axes = np.meshgrid(*[np.arange(side)] * self.spatial_dim, indexing="ij")
        grid = np.stack(axes, -1).reshape(-1, self.spatial_dim)
        grid = grid - grid.mean(axis=0)
        points = grid[np.argsort(np.linalg.norm(grid, axis=1), kind="stable")[: self.n_particles]] * self.spacing
        return np.asarray(self._h.T @ (points - points.mean(axis=0))).reshape(-1)

    def _log_prob(self, y: jax.Array) -> jax.Array:
        e = self.energy_of_positions(self.positions(y))
        return jnp.where(jnp.isfinite(e), -e, -jnp.inf)

    # the report (module docstring) ------------------------------------------------------------------------------
    def distance_edges(self) -> np.ndarray:
        """Edges of the interatomic-distance histograms: :data:`DISTANCE_BINS` bins over [0, 2 spacing N^(1/d)]."""
        return np.linspace(0.0, 2 * self.spacing * self.n_particles ** (1 / self.spatial_dim), DISTANCE_BINS + 1)

    def distance_counts(self, y) -> np.ndarray:
        """``(n, DISTANCE_BINS)`` uint16: each sample's pair distances histogrammed (the last bin takes the rest)."""
        d = np.asarray(pair_distances(self.positions(jnp.asarray(y))))
        edges = self.distance_edges()
        bins = np.clip(np.searchsorted(edges, d, side="right") - 1, 0, DISTANCE_BINS - 1)
        counts = np.zeros((d.shape[0], DISTANCE_BINS), np.uint16)
        np.add.at(counts, (np.arange(d.shape[0])[:, None], bins), 1)
        return counts

    def sample_rows(self, x: jax.Array, log_w: jax.Array) -> dict[str, jax.Array]:
        """x, its energy E / tau and its log weight."""
        return {"x": x, "energy": -self.log_prob(x), "log_w": log_w}

    def keep_rows(self, rows: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The energy (float32), log weight (float64) and distance histogram of each sample, not x."""
        return {"energy": np.asarray(rows["energy"], np.float32), "log_w": np.asarray(rows["log_w"], np.float64),
                "distances": self.distance_counts(rows["x"])}

    def metrics(self, s: ModelSamples) -> dict:
        """The particle metrics (module docstring) where the target has reference samples."""
        out = super().metrics(s)
        if self.reference_path is None:
            return out
        ref = np.asarray(load_reference(self.reference_path)["x"], np.float32)
        if ref.ndim != 2 or ref.shape[1] != self.dim:
            raise BoltzflowError(f"reference {self.reference_path}: x must be (n, {self.dim}), got {ref.shape}")
        xs = jnp.asarray(ref, jnp.result_type(float))
        if s.log_q is not None:
            out["mean_log_q_reference"] = float(np.mean(np.asarray(s.log_q(xs), np.float64)))
        ref_energy = -np.asarray(apply_in_chunks(jax.jit(self.log_prob), xs, s.chunk), np.float64)
        ref_hist = self.distance_counts(ref).sum(axis=0, dtype=np.float64)
        half = len(ref_energy) // 2
        out["energy_w1_reference_noise"] = wasserstein_1d(ref_energy[:half], ref_energy[half:], p=1)
        ok = np.isfinite(s.kept["energy"])  # a sample with infinite energy (overlapping particles) is left out
        w = normalised_weights(s.kept["log_w"][ok])
        width = np.diff(self.distance_edges())[0]
        for suffix, weights in (("", np.ones(len(w)) / len(w)), ("_reweighted", w)):
            for p in (2, 1):
                out[f"energy_w{p}{suffix}"] = wasserstein_1d(s.kept["energy"][ok], ref_energy, weights, p=p)
            hist = (s.kept["distances"][ok].astype(np.float64) * weights[:, None]).sum(0)
            f, g = hist / hist.sum(), ref_hist / ref_hist.sum()
            out[f"distance_w1{suffix}"] = float(np.sum(np.abs(np.cumsum(f) - np.cumsum(g))) * width)
            out[f"distance_tv{suffix}"] = float(0.5 * np.sum(np.abs(f - g)))
        return out

    def draw(self, pictures: Pictures) -> list[Path]:
        """``particles.png``: the energies E / tau and the interatomic distances of 20,000 model samples, raw and
        reweighted, beside the reference's where the target has one and the equal-cost baseline's (reweighted) where
        the run keeps them (the E-ACF paper's figures)."""
        panels = {"energy E / tau": [], "interatomic distance": []}

        def add(points, *lines) -> None:  # the energies and every pair's distance of points, one line per (label, log w)
            points = jnp.asarray(points)
            energy = -np.asarray(self.log_prob(points), np.float64)
            dist = np.asarray(pair_distances(self.positions(points)), np.float64)
            for label, log_w in lines:
                w = normalised_weights(log_w)
                panels["energy E / tau"].append((label, energy, w))
                panels["interatomic distance"].append((label, dist.ravel(), None if w is None else
                                                       np.repeat(w, dist.shape[1])))

        if self.reference_path is not None:
            add(np.asarray(load_reference(self.reference_path)["x"], np.float32)[:20_000], ("reference", None))
        x, log_w = pictures.weighted_samples(pictures.key, 20_000)
        add(x, ("model", None), ("model, reweighted", log_w))
        if pictures.baseline is not None:
            add(np.asarray(pictures.baseline[0], x.dtype), ("SMC baseline, reweighted", pictures.baseline[1]))
        return [pictures.plot_histograms(panels, pictures.out_dir / "particles.png", title=pictures.name)]

    def __repr__(self) -> str:
        return f"{type(self).__name__}(n_particles={self.n_particles}, spatial_dim={self.spatial_dim})"


class DoubleWellParticles(ParticleTarget):
    """DW-4: 4 particles in 2-D with a double-well pair potential (module docstring).

    Args:
        n_particles: N (4 for DW-4).
        spatial_dim: d (2 for DW-4).
        a: the pair potential's linear coefficient.
        b: its quadratic coefficient.
        c: its quartic coefficient.
        d0: its centre distance.
        tau: the temperature.
        reference: an ``.npz`` of reference samples (``x`` (n, dim)) for the report.
    """

    def __init__(self, n_particles: int = 4, spatial_dim: int = 2, a: float = 0.0, b: float = -4.0, c: float = 0.9,
                 d0: float = 4.0, tau: float = 1.0, reference: str | None = None):
        super().__init__(n_particles, spatial_dim, reference)
        if not tau > 0:
            raise BoltzflowError(f"tau must be positive, got {tau}")
        self.a, self.b, self.c, self.d0, self.tau = map(float, (a, b, c, d0, tau))
        self.name = "dw4" if (n_particles, spatial_dim) == (4, 2) else f"dw{n_particles}_{spatial_dim}d"

    @property
    def spacing(self) -> float:
        """d0."""
        return self.d0

    def energy_of_positions(self, positions: jax.Array) -> jax.Array:
        """The energy (module docstring) of positions ``(..., N, d)``."""
        r = pair_distances(positions) - self.d0
        return jnp.sum(self.a * r + self.b * r**2 + self.c * r**4, axis=-1) / self.tau


class LennardJonesCluster(ParticleTarget):
    """LJ-N: a Lennard-Jones cluster held together by a harmonic well around its centre (module docstring).

    Args:
        n_particles: N (13 or 55).
        spatial_dim: d (3).
        pair_sum: ``"pairs"`` (each pair once) or ``"ordered"`` (i != j, each pair twice).
        eps: the well depth.
        r_m: the pair minimum's distance.
        tau: the temperature.
        c_osc: the harmonic well's constant.
        reference: an ``.npz`` of reference samples (``x`` (n, dim)) for the report.
    """

    def __init__(self, n_particles: int = 13, spatial_dim: int = 3, pair_sum: str = "pairs", eps: float = 1.0,
                 r_m: float = 1.0, tau: float = 1.0, c_osc: float = 1.0, reference: str | None = None):
        super().__init__(n_particles, spatial_dim, reference)
        if pair_sum not in PAIR_SUMS:
            raise BoltzflowError(f"pair_sum must be one of {sorted(PAIR_SUMS)}, got {pair_sum!r}")
        if not (tau > 0 and r_m > 0):
            raise BoltzflowError(f"tau and r_m must be positive, got {tau}, {r_m}")
        self.pair_sum = pair_sum
        self.eps, self.r_m, self.tau, self.c_osc = map(float, (eps, r_m, tau, c_osc))
        self.name = f"lj{n_particles}" + ("" if pair_sum == "pairs" else "_ordered")

    @property
    def spacing(self) -> float:
        """r_m."""
        return self.r_m

    def pair_energy(self, positions: jax.Array) -> jax.Array:
        """The Lennard-Jones term alone, eps s sum_{i<j} [(r_m/d)^12 - 2 (r_m/d)^6] (before dividing by tau)."""
        s6 = (self.r_m / pair_distances(positions)) ** 6
        return PAIR_SUMS[self.pair_sum] * self.eps * jnp.sum(s6 * s6 - 2.0 * s6, axis=-1)

    def energy_of_positions(self, positions: jax.Array) -> jax.Array:
        """The energy (module docstring) of positions ``(..., N, d)``."""
        centred = positions - jnp.mean(positions, axis=-2, keepdims=True)
        harmonic = 0.5 * self.c_osc * jnp.sum(centred * centred, axis=(-2, -1))
        return (self.pair_energy(positions) + harmonic) / self.tau


#: reference samples of DW-4 with its default potential (64,000 from replica-exchange Langevin dynamics; how they were
#: made: dw4_reference.json beside it)
DW4_REFERENCE = Path(__file__).parent / "data" / "dw4_reference.npz"


def dw4(**kwargs) -> DoubleWellParticles:
    """DW-4 as Köhler et al. define it; with no option given, its report is against the shipped reference samples
    (:data:`DW4_REFERENCE`)."""
    return DoubleWellParticles(4, 2, **(kwargs or {"reference": str(DW4_REFERENCE)}))


#: reference samples of LJ-13 with its default potential (16,000 from replica-exchange Langevin dynamics; how they
#: were made: lj13_reference.json beside it)
LJ13_REFERENCE = Path(__file__).parent / "data" / "lj13_reference.npz"


def lj13(**kwargs) -> LennardJonesCluster:
    """LJ-13 (``pair_sum="pairs"`` unless given); with no option given, its report is against the shipped
    reference samples (:data:`LJ13_REFERENCE`)."""
    return LennardJonesCluster(13, 3, **(kwargs or {"reference": str(LJ13_REFERENCE)}))


def lj55(**kwargs) -> LennardJonesCluster:
    """LJ-55 (``pair_sum="pairs"`` unless given)."""
    return LennardJonesCluster(55, 3, **kwargs)


def random_rotation(key: jax.Array, d: int) -> jax.Array:
    """A Haar-random orthogonal ``(d, d)`` matrix with determinant +1 (QR of a Gaussian matrix, signs fixed)."""
    q, r = jnp.linalg.qr(jax.random.normal(key, (d, d)))
    q = q * jnp.sign(jnp.diag(r))[None, :]
    return q.at[:, 0].multiply(jnp.sign(jnp.linalg.det(q)))


def wasserstein_1d(a, b, wa=None, wb=None, p: int = 2) -> float:
    """The p-Wasserstein distance of two weighted empirical distributions on the line,
    (int_0^1 |F^-1(u) - G^-1(u)|^p du)^(1/p), the quantile functions piecewise constant (weights: None = equal)."""
    qa, ca = _quantiles(a, wa)
    qb, cb = _quantiles(b, wb)
    u = np.union1d(ca, cb)  # breakpoints of both quantile functions, ending at 1
    lo = np.concatenate([[0.0], u[:-1]])
    ia = np.minimum(np.searchsorted(ca, lo, side="right"), len(qa) - 1)
    ib = np.minimum(np.searchsorted(cb, lo, side="right"), len(qb) - 1)
    out = np.sum((u - lo) * np.abs(qa[ia] - qb[ib]) ** p)
    return float(out ** (1 / p))


def _quantiles(v, w):
    """Sorted values and their cumulative normalised weights (the last exactly 1)."""
    v = np.asarray(v, np.float64).reshape(-1)
    w = np.ones_like(v) if w is None else np.asarray(w, np.float64).reshape(-1)
    order = np.argsort(v, kind="stable")
    c = np.cumsum(w[order])
    c /= c[-1]
    c[-1] = 1.0
    return v[order], c
