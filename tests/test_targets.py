"""Targets: exact log Z against quadrature, exact samplers against quadrature histograms (chi-square, p > 1e-3,
fixed seeds), mode sets, shape checks, and the target registry (presets, user functions, errors)."""

from __future__ import annotations

import math
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import integrate, stats

from boltzflow.errors import BoltzflowError
from boltzflow.estimators import log_z_estimate
from boltzflow.targets import (
    GMM40,
    DoubleWell,
    Funnel,
    FunctionTarget,
    GaussianMixture,
    ImageTarget,
    ManyWell,
    Rotated,
    Target,
    list_targets,
    make_target,
    random_rotation,
    targets_table,
)
from boltzflow.targets import wells
from boltzflow.targets.wells import LOG_Z_X1, X1_BARRIER, X1_MINIMA, Z_X1, energy_x1, sample_x1

P_MIN = 1e-3  # goodness-of-fit tests fail below this p-value


def chi2_pvalue(counts, probs, n_total, min_expected=5.0) -> float:
    """Chi-square goodness of fit of ``counts`` (out of ``n_total`` samples) to bin probabilities ``probs``; bins
    expecting fewer than ``min_expected`` samples are pooled with the remainder (the probability and the samples
    outside all bins) into one extra bin."""
    counts = np.asarray(counts, dtype=np.float64).ravel()
    expected = np.asarray(probs, dtype=np.float64).ravel() * n_total
    keep = expected >= min_expected
    obs = np.append(counts[keep], n_total - counts[keep].sum())
    exp = np.append(expected[keep], max(n_total - expected[keep].sum(), 0.0))
    if exp[-1] < min_expected:  # too little left to pool: merge the remainder into the last kept bin
        obs[-2] += obs[-1]
        exp[-2] += exp[-1]
        obs, exp = obs[:-1], exp[:-1]
    return float(stats.chisquare(obs, exp * obs.sum() / exp.sum()).pvalue)


def gof(samples, probs, edges) -> float:
    """p-value of 1-D samples (edges: array) or 2-D samples (edges: [ex, ey]) against bin probabilities."""
    x = np.asarray(samples, dtype=np.float64)
    if x.ndim == 1:
        counts, _ = np.histogram(x, edges)
    else:
        counts, _, _ = np.histogram2d(x[:, 0], x[:, 1], bins=edges)
    return chi2_pvalue(counts, probs, len(x))


def grid_bin_probs(target, edges, h, log_z):
    """2-D bin probabilities by midpoint quadrature of exp(log_prob - log_z) on a grid of spacing h aligned with
    the bin edges; returns (bin probabilities, total quadrature mass on the grid)."""
    ex, ey = edges
    gx = np.arange(ex[0] + h / 2, ex[-1], h)
    gy = np.arange(ey[0] + h / 2, ey[-1], h)
    xx, yy = np.meshgrid(gx, gy, indexing="ij")
    pts = jnp.asarray(np.stack([xx.ravel(), yy.ravel()], 1), jnp.float32)
    p = np.exp(np.asarray(jax.jit(target.log_prob)(pts), np.float64) - log_z) * h * h
    hist, _, _ = np.histogram2d(xx.ravel(), yy.ravel(), bins=[ex, ey], weights=p)
    return hist, p.sum()


# --------------------------------------------------------------------------------------------------------------------
# Double well / Many Well
# --------------------------------------------------------------------------------------------------------------------


def _x1_density(x):
    return np.exp(-(x**4 - 6 * x**2 - 0.5 * x))


def test_z_x1_matches_quadrature():
    z, _ = integrate.quad(_x1_density, -np.inf, np.inf, epsabs=1e-10, epsrel=1e-12)
    assert z == pytest.approx(11784.50927, rel=1e-9)
    assert Z_X1 == pytest.approx(z, rel=1e-10)
    assert LOG_Z_X1 == pytest.approx(math.log(z), abs=1e-10)


def test_log_z_values():
    assert DoubleWell().log_z == pytest.approx(math.log(Z_X1) + 0.5 * math.log(2 * math.pi), abs=1e-10)
    assert ManyWell(32).log_z == pytest.approx(164.6957, abs=1e-4)
    assert ManyWell(50).log_z == pytest.approx(257.337, abs=1e-3)
    assert ManyWell(100).log_z == pytest.approx(514.674, abs=1e-3)


def test_double_well_log_z_against_2d_grid_quadrature():
    t = DoubleWell()
    h = 0.01
    g1 = np.arange(-4.0 + h / 2, 4.0, h)
    g2 = np.arange(-9.0 + h / 2, 9.0, h)
    xx, yy = np.meshgrid(g1, g2, indexing="ij")
    pts = jnp.asarray(np.stack([xx.ravel(), yy.ravel()], 1), jnp.float32)
    lp = np.asarray(jax.jit(t.log_prob)(pts), np.float64)
    assert np.log(np.exp(lp).sum() * h * h) == pytest.approx(t.log_z, abs=1e-4)


def test_double_well_constants():
    u = lambda x: x**4 - 6 * x**2 - 0.5 * x  # noqa: E731
    assert X1_MINIMA[0] == pytest.approx(-1.71, abs=0.005) and u(X1_MINIMA[0]) == pytest.approx(-8.14, abs=0.005)
    assert X1_MINIMA[1] == pytest.approx(1.75, abs=0.005) and u(X1_MINIMA[1]) == pytest.approx(-9.87, abs=0.005)
    assert 4 * X1_BARRIER**3 - 12 * X1_BARRIER - 0.5 == pytest.approx(0.0, abs=1e-12)
    p_pos = integrate.quad(_x1_density, 0, np.inf)[0] / Z_X1
    assert p_pos == pytest.approx(0.844, abs=5e-4)


def test_rejection_bound_dominates():
    """p_x1(x) <= 3 g(x) everywhere (on a fine grid; both tails of p decay like exp(-x^4), g like exp(-2 x^2))."""
    x = jnp.linspace(-8.0, 8.0, 400001, dtype=jnp.float32)
    log_ratio = wells.log_marginal_x1(x) - wells._proposal_log_prob(x)
    assert float(jnp.max(log_ratio)) < math.log(3.0) - 0.1  # sup p/g = 2.59


def _x1_bin_probs(edges):
    inner = np.array([integrate.quad(_x1_density, a, b)[0] for a, b in zip(edges[:-1], edges[1:])]) / Z_X1
    return inner


def test_double_well_x1_marginal_goodness_of_fit():
    t = DoubleWell()
    x = np.asarray(jax.jit(t.sample, static_argnums=1)(jax.random.key(0), 200_000))
    assert x.shape == (200_000, 2) and np.all(np.isfinite(x))
    edges = np.linspace(-2.6, 2.6, 53)
    assert gof(x[:, 0], _x1_bin_probs(edges), edges) > P_MIN
    g = np.linspace(-4, 4, 41)
    assert gof(x[:, 1], np.diff(stats.norm.cdf(g)), g) > P_MIN
    # P(x1 > 0) = 0.844 within 3 binomial standard errors (two-sided p ~ 2.7e-3, the order of P_MIN)
    p_true = integrate.quad(_x1_density, 0, np.inf)[0] / Z_X1
    p_hat = np.mean(x[:, 0] > 0)
    assert abs(p_hat - p_true) < 3 * math.sqrt(p_true * (1 - p_true) / len(x))


def test_rejection_sampler_many_rounds_is_exact():
    """With a tiny proposal batch the while_loop needs many rounds; it must still return n exact samples."""
    f = jax.jit(lambda k: sample_x1(k, 20_000, oversample=0.2))
    x = np.asarray(f(jax.random.key(1)))
    assert x.shape == (20_000,) and np.all(np.isfinite(x))
    edges = np.linspace(-2.6, 2.6, 27)
    assert gof(x, _x1_bin_probs(edges), edges) > P_MIN


def test_many_well_samples_goodness_of_fit():
    t = ManyWell(32)
    x = np.asarray(jax.jit(t.sample, static_argnums=1)(jax.random.key(2), 20_000))
    assert x.shape == (20_000, 32)
    edges = np.linspace(-2.6, 2.6, 27)
    probs = _x1_bin_probs(edges)
    for copy in (0, 9, 15):
        assert gof(x[:, 2 * copy], probs, edges) > P_MIN
    g = np.linspace(-4, 4, 33)
    assert gof(x[:, 13], np.diff(stats.norm.cdf(g)), g) > P_MIN
    # copies are independent: the 2x2 sign table of two copies matches the product of the marginals
    p = integrate.quad(_x1_density, X1_BARRIER, np.inf)[0] / Z_X1
    a, b = x[:, 4] > X1_BARRIER, x[:, 22] > X1_BARRIER
    table = np.array([np.sum(a & b), np.sum(a & ~b), np.sum(~a & b), np.sum(~a & ~b)])
    assert chi2_pvalue(table, [p * p, p * (1 - p), (1 - p) * p, (1 - p) ** 2], len(x)) > P_MIN


def test_many_well_log_prob_is_sum_of_pairs():
    t = ManyWell(6)
    x = jax.random.normal(jax.random.key(3), (5, 6))
    expected = sum(DoubleWell().log_prob(x[:, 2 * i : 2 * i + 2]) for i in range(3))
    np.testing.assert_allclose(t.log_prob(x), expected, rtol=1e-5)


def test_many_well_mode_points():
    t = ManyWell(32)
    m = np.asarray(t.mode_points())
    assert m.shape == (65536, 32) and t.n_modes == 65536
    assert np.all(np.abs(m[:, 0::2]) == np.float32(1.7)) and np.all(m[:, 1::2] == 0)
    assert len(np.unique(m, axis=0)) == 65536
    assert t.modes_covered(m) == 65536
    # every mode point is within a small margin of its local maximum (the exact minimum of each copy's x1 energy)
    lp = np.asarray(jax.jit(t.log_prob)(jnp.asarray(m)))
    local_max = -np.where(m[:, 0::2] > 0, energy_x1(X1_MINIMA[1]), energy_x1(X1_MINIMA[0])).sum(1)
    gap = local_max - lp
    assert np.all(gap >= -1e-3) and np.all(gap < 0.05 * 16)
    with pytest.raises(BoltzflowError, match="too many"):
        ManyWell(50).mode_points()


def test_double_well_modes_and_marginal():
    t = DoubleWell()
    m = np.asarray(t.mode_points())
    np.testing.assert_allclose(np.sort(m[:, 0]), [-1.7, 1.7])
    x = t.sample(jax.random.key(4), 2000)
    assert t.modes_covered(x) == 2
    assert t.modes_covered(np.array([[1.0, 0.0], [2.0, 1.0], [np.nan, 0.0]])) == 1
    # the x1 marginal is normalised and is the x1 slice of log_prob up to a constant
    grid = np.linspace(-4, 4, 8001)
    assert np.trapezoid(np.exp(np.asarray(t.log_marginal_x1(jnp.asarray(grid)), np.float64)), grid) == \
        pytest.approx(1.0, abs=1e-5)
    xs = jnp.linspace(-2.5, 2.5, 11)
    diff = t.log_prob(jnp.stack([xs, jnp.zeros_like(xs)], 1)) - t.log_marginal_x1(xs)
    np.testing.assert_allclose(diff, diff[0], atol=1e-4)
    np.testing.assert_allclose(t.free_energy_x1(xs), -t.log_marginal_x1(xs))


def test_many_well_bad_dim():
    for bad in (3, 0, -2, 2.0, "32", True):
        with pytest.raises(BoltzflowError, match="even integer"):
            ManyWell(bad)


# --------------------------------------------------------------------------------------------------------------------
# Gaussian mixtures
# --------------------------------------------------------------------------------------------------------------------


def test_gmm40_definition():
    t = GMM40()
    assert t.means.shape == (40, 2) and np.all(np.abs(t.means) <= 40)
    np.testing.assert_allclose(t.stds, 1.31326, atol=1e-5)
    np.testing.assert_allclose(t.weights, 1 / 40)
    assert t.log_z == 0.0 and t.n_modes == 40


@pytest.fixture(scope="module")
def gmm40_edges():
    e = np.linspace(-46, 46, 24)  # 23 bins of width 4
    return [e, e]


def test_gmm40_normalised_and_samples_fit(gmm40_edges):
    t = GMM40()
    probs, mass = grid_bin_probs(t, gmm40_edges, 0.1, t.log_z)
    assert mass == pytest.approx(1.0, abs=1e-4)
    x = np.asarray(jax.jit(t.sample, static_argnums=1)(jax.random.key(5), 50_000))
    assert gof(x, probs, gmm40_edges) > P_MIN
    assert t.modes_covered(x) == 40


def test_gmm_log_prob_matches_scipy():
    means = np.array([[0.0, 1.0, 2.0], [-3.0, 0.0, 1.0]])
    t = GaussianMixture(means, stds=[0.5, 2.0], weights=[3.0, 1.0])
    x = np.random.default_rng(0).normal(size=(7, 3)) * 2
    ref = np.log(0.75 * stats.multivariate_normal(means[0], 0.25).pdf(x)
                 + 0.25 * stats.multivariate_normal(means[1], 4.0).pdf(x))
    np.testing.assert_allclose(t.log_prob(jnp.asarray(x, jnp.float32)), ref, rtol=1e-5)
    with jax.enable_x64(True):
        out = t.log_prob(jnp.asarray(x))
        assert out.dtype == jnp.float64
        np.testing.assert_allclose(out, ref, rtol=1e-12)


def test_gmm_modes_covered_rule():
    t = GaussianMixture.grid4()
    assert t.dim == 2 and t.n_modes == 4
    assert t.modes_covered(t.mode_points()) == 4
    assert t.modes_covered(t.sample(jax.random.key(6), 400)) == 4
    # a point 2 std from a mean is covered, one 3.5 std away is not; nearest-mean assignment
    m = t.means[0]
    assert t.modes_hit(np.array([m + [2.0, 0.0]])).tolist() == [True, False, False, False]
    assert t.modes_covered(np.array([m + [3.5, 0.0], [np.nan, 0.0]])) == 0
    assert GMM40().modes_covered(jax.random.normal(jax.random.key(7), (1000, 2))) <= 3
    with pytest.raises(BoltzflowError):
        GaussianMixture(np.zeros(3))
    with pytest.raises(BoltzflowError):
        GaussianMixture(np.zeros((2, 2)), stds=[1.0, -1.0])


# --------------------------------------------------------------------------------------------------------------------
# Funnel
# --------------------------------------------------------------------------------------------------------------------


def test_funnel_log_z_by_quadrature():
    """dim 2: integrate x1 on a grid scaled by its conditional std exp(x0/2), then x0."""
    t = Funnel(dim=2)
    x0 = np.linspace(-18, 18, 721)
    s = np.linspace(-10, 10, 401)
    xx0, ss = np.meshgrid(x0, s, indexing="ij")
    x1 = ss * np.exp(xx0 / 2)
    lp = np.asarray(t.log_prob(jnp.asarray(np.stack([xx0.ravel(), x1.ravel()], 1), jnp.float32)), np.float64)
    inner = np.trapezoid(np.exp(lp).reshape(xx0.shape) * np.exp(xx0 / 2), s, axis=1)
    assert np.trapezoid(inner, x0) == pytest.approx(1.0, abs=1e-4)
    assert t.log_z == 0.0


def test_funnel_log_prob_matches_scipy():
    t = Funnel(dim=10)
    x = np.random.default_rng(1).normal(size=(6, 10))
    ref = stats.norm(0, 3).logpdf(x[:, 0]) + stats.norm(0, np.exp(x[:, :1] / 2)).logpdf(x[:, 1:]).sum(1)
    np.testing.assert_allclose(t.log_prob(jnp.asarray(x, jnp.float32)), ref, rtol=1e-5)


def test_funnel_samples_fit():
    t = Funnel(dim=10)
    x = np.asarray(jax.jit(t.sample, static_argnums=1)(jax.random.key(8), 50_000))
    e = np.linspace(-10, 10, 41)
    assert gof(x[:, 0], np.diff(stats.norm(0, 3).cdf(e)), e) > P_MIN
    z = x[:, 3] / np.exp(x[:, 0] / 2)  # standardised conditional
    e = np.linspace(-4, 4, 33)
    assert gof(z, np.diff(stats.norm.cdf(e)), e) > P_MIN


# --------------------------------------------------------------------------------------------------------------------
# Image targets
# --------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def smiley():
    return ImageTarget.smiley()


def test_image_log_z_against_grid_quadrature(smiley):
    e = np.linspace(-6, 6, 2)
    _, mass = grid_bin_probs(smiley, [e, e], 0.01, smiley.log_z)
    assert mass == pytest.approx(1.0, abs=2e-4)
    # much mass outside the box (high floor, soft wall): the closed-form normaliser must account for it
    soft = ImageTarget.dog(floor=0.5, wall=1.0)
    assert soft.mass_inside < 0.6
    e = np.linspace(-11, 11, 2)
    _, mass = grid_bin_probs(soft, [e, e], 0.02, soft.log_z)
    assert mass == pytest.approx(1.0, abs=2e-4)
    # a non-square box
    txt = ImageTarget.text("Hi!")
    e = np.linspace(-6, 6, 2)
    _, mass = grid_bin_probs(txt, [e, e], 0.01, txt.log_z)
    assert mass == pytest.approx(1.0, abs=2e-4)


def test_image_log_prob_interpolates_nodes(smiley):
    g = smiley.grid
    xmin, xmax, ymin, ymax = smiley.extent
    i, j = np.array([0, 5, 64, 127, 100]), np.array([0, 70, 64, 127, 3])
    pts = np.stack([xmin + j * smiley.hx, ymax - i * smiley.hy], 1)
    np.testing.assert_allclose(smiley.log_prob(jnp.asarray(pts, jnp.float32)), np.log(g[i, j]), atol=1e-4)
    # continuity across the box boundary and the wall outside
    eps = 1e-4
    inside = smiley.log_prob(jnp.array([[xmax - eps, 0.3], [0.1, ymin + eps]]))
    outside = smiley.log_prob(jnp.array([[xmax + eps, 0.3], [0.1, ymin - eps]]))
    np.testing.assert_allclose(inside, outside, atol=1e-3)
    far = smiley.log_prob(jnp.array([[xmax + 1.0, 0.3]]))
    near = smiley.log_prob(jnp.array([[xmax, 0.3]]))
    np.testing.assert_allclose(far, near - 0.5 * smiley.wall, atol=1e-4)
    grad = jax.grad(lambda x: smiley.log_prob(x).sum())(jnp.array([[0.3, -1.1], [4.0, 4.0]]))
    assert np.all(np.isfinite(np.asarray(grad)))


_TINY = np.array([[1.0, 0.01, 0.3], [0.05, 0.8, 0.02], [0.5, 0.1, 1.0]])  # cells 3 units wide: in-cell shape shows


@pytest.mark.parametrize("which", ["smiley", "dog_soft", "tiny"])
def test_image_samples_fit(which, smiley):
    t = {
        "smiley": lambda: smiley,
        "dog_soft": lambda: ImageTarget.dog(floor=0.2, wall=2.0),
        "tiny": lambda: ImageTarget(_TINY, blur=0.0, floor=0.01, wall=3.0),
    }[which]()
    x = np.asarray(jax.jit(t.sample, static_argnums=1)(jax.random.key(9), 200_000))
    assert x.shape == (200_000, 2) and np.all(np.isfinite(x))
    e = np.linspace(-6, 6, 49)
    probs, _ = grid_bin_probs(t, [e, e], 0.01, t.log_z)
    assert gof(x, probs, [e, e]) > P_MIN
    box = np.all((x >= [t.extent[0], t.extent[2]]) & (x <= [t.extent[1], t.extent[3]]), axis=1)
    # 4 binomial standard errors (two-sided p ~ 6e-5); mass_inside < 1 (floor > 0), so the s.e. is positive
    assert abs(box.mean() - t.mass_inside) < 4 * math.sqrt(t.mass_inside * (1 - t.mass_inside) / len(x))


def test_image_constructors_and_errors():
    txt = ImageTarget.text("boltzflow")
    xmin, xmax, ymin, ymax = txt.extent
    assert (xmin, xmax) == (-3.0, 3.0) and 0 < ymax < 3 and ymin == -ymax
    assert ImageTarget.dog().shape == (128, 128) and ImageTarget.smiley(res=64).shape == (64, 64)
    for bad in (dict(image=np.zeros((5, 5))), dict(image=np.ones(5)), dict(image=np.ones((4, 4)), floor=0.0),
                dict(image=np.ones((4, 4)), wall=-1.0), dict(image=np.ones((4, 4)), extent=(1, 0, 0, 1))):
        with pytest.raises(BoltzflowError):
            ImageTarget(**bad)
    with pytest.raises(BoltzflowError, match="text"):
        ImageTarget.text("   ")


def test_alias_table_reproduces_probabilities():
    from boltzflow.targets.images import _alias_table

    p = np.random.default_rng(2).dirichlet(np.full(50, 0.3))
    prob, alias = _alias_table(p.copy())
    recon = prob / len(p)
    np.add.at(recon, alias, (1 - prob) / len(p))
    np.testing.assert_allclose(recon, p, atol=1e-12)


# --------------------------------------------------------------------------------------------------------------------
# Every target: shapes, dtypes, jit
# --------------------------------------------------------------------------------------------------------------------

_ALL = {
    "double_well": DoubleWell,
    "many_well": lambda: ManyWell(8),
    "gmm40": GMM40,
    "gmm4": GaussianMixture.grid4,
    "funnel": Funnel,
    "smiley": lambda: ImageTarget.smiley(res=48),
    "text": lambda: ImageTarget.text("ab"),
    "function": lambda: FunctionTarget(lambda x: -0.5 * jnp.sum(x**2, axis=1), 3, log_z=1.5 * math.log(2 * math.pi)),
}


@pytest.mark.parametrize("name", sorted(_ALL))
def test_every_target_contract(name):
    t = _ALL[name]()
    assert isinstance(t, Target) and isinstance(t.dim, int)
    d = t.dim
    for bad in (jnp.zeros((d,)), jnp.zeros((4, d + 1)), jnp.zeros((2, 3, d)), np.zeros((3, max(d - 1, 1) if d > 1
                                                                                           else 2))):
        with pytest.raises(BoltzflowError, match=f"shape \\(n, {d}\\)"):
            t.log_prob(bad)
    x = jnp.zeros((3, d)) + 0.1
    out = jax.jit(t.log_prob)(x)
    assert out.shape == (3,) and out.dtype == jnp.float32 and np.all(np.isfinite(np.asarray(out)))
    with jax.enable_x64(True):
        assert t.log_prob(jnp.zeros((2, d), jnp.float64) + 0.1).dtype == jnp.float64
    if t.can_sample:
        s = t.sample(jax.random.key(0), 5)
        assert s.shape == (5, d) and s.dtype == jnp.float32
    else:
        with pytest.raises(BoltzflowError, match="no exact sampler"):
            t.sample(jax.random.key(0), 5)
    # hashed by identity (base.py), so a target can be a static argument of jit or a static equinox field: a
    # second instance of the same class and settings is a different key, and a static target traces its log_prob
    twin = _ALL[name]()
    assert t != twin and len({t, t, twin}) == 2
    static = jax.jit(lambda target, x: target.log_prob(x), static_argnums=0)
    np.testing.assert_array_equal(static(t, x), out)


# --------------------------------------------------------------------------------------------------------------------
# Registry: presets, user functions, errors
# --------------------------------------------------------------------------------------------------------------------


@pytest.fixture()
def user_module(tmp_path, monkeypatch):
    """A user's module ``bf_user_mod`` on sys.path, with good and bad target functions."""
    (tmp_path / "bf_user_mod.py").write_text(textwrap.dedent("""
        import jax.numpy as jnp
        from boltzflow.targets import GaussianMixture

        def gauss(dim=3, scale=1.0):
            return (lambda x: -0.5 * jnp.sum((x / scale) ** 2, axis=1)), dim

        def target():
            return GaussianMixture.grid4(spacing=6.0)

        def nan():
            return (lambda x: jnp.full(x.shape[:1], jnp.nan)), 2

        def wrong_shape():
            return (lambda x: jnp.sum(x, axis=0)), 2

        def not_array():
            return (lambda x: 1.0), 2

        def raises():
            return (lambda x: x @ jnp.ones(7)), 2

        def bad_return():
            return 42

        def boom():
            raise RuntimeError("cannot load my force field")

        NOT_CALLABLE = 3
        """))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    sys.modules.pop("bf_user_mod", None)


def test_make_target_presets():
    assert isinstance(make_target("double_well"), DoubleWell)
    assert make_target("many_well").dim == 32
    assert make_target({"name": "many_well", "dim": 8}).dim == 8
    assert make_target("many_well_50").dim == 50
    assert make_target("Many-Well_4").dim == 4
    assert isinstance(make_target("gmm40"), GMM40)
    assert make_target({"name": "funnel", "dim": 5}).dim == 5
    assert make_target({"name": "text", "text": "xy"}).name == "text"
    assert make_target("smiley").name == "smiley" and make_target("dog").name == "dog"
    t = GMM40()
    assert make_target(t) is t
    names = [i.name for i in list_targets()]
    for n in ("double_well", "many_well", "gmm40", "funnel", "smiley", "dog", "text", "aldp_implicit", "aldp_vacuum",
              "ace_ala3_nme_implicit", "molecule"):
        assert n in names
    unknown = {"aldp_implicit", "aldp_vacuum", "ace_ala3_nme_implicit", "molecule", "dw4", "lj13", "lj55"}
    assert all(i.description for i in list_targets())
    assert all(i.log_z_known and i.exact_samples for i in list_targets() if i.name not in unknown)
    assert not any(i.log_z_known or i.exact_samples for i in list_targets() if i.name in unknown)
    table = targets_table()
    assert "many_well" in table and "log Z" in table


def test_make_target_user_functions(user_module):
    t = make_target("bf_user_mod:gauss")
    assert isinstance(t, FunctionTarget) and t.dim == 3 and t.log_z is None and not t.can_sample
    np.testing.assert_allclose(jax.jit(t.log_prob)(jnp.ones((2, 3))), [-1.5, -1.5])
    t = make_target({"function": "bf_user_mod:gauss", "dim": 5, "scale": 2.0})
    assert t.dim == 5
    np.testing.assert_allclose(t.log_prob(jnp.full((1, 5), 2.0)), [-2.5])
    t = make_target("bf_user_mod:target")
    assert isinstance(t, GaussianMixture) and t.n_modes == 4
    t = make_target(f"{user_module / 'bf_user_mod.py'}:gauss")
    assert t.dim == 3


@pytest.mark.parametrize("spec, pattern", [
    ("nonexistent_preset", "unknown target 'nonexistent_preset'; known presets: .*double_well.*gmm40"),
    ({"name": "many_well", "dims": 4}, "bad arguments \\['dims'\\].*accepts: dim"),
    ({"name": "many_well", "dim": 5}, "even integer"),
    ("no_such_module_xyz:f", "cannot import module 'no_such_module_xyz'"),
    ("bf_user_mod:missing", "has no attribute 'missing'"),
    ("bf_user_mod:NOT_CALLABLE", "not callable"),
    ("bf_user_mod:nan", "bf_user_mod:nan: log_prob returned no finite value"),
    ("bf_user_mod:wrong_shape", "bf_user_mod:wrong_shape: log_prob must map shape \\(n, 2\\) to \\(n,\\), got \\(2,\\)"),
    ("bf_user_mod:not_array", "must return an array"),
    ("bf_user_mod:raises", "log_prob raised TypeError"),
    ("bf_user_mod:bad_return", "must return a Target or a pair \\(log_prob, dim\\), got int"),
    ("bf_user_mod:boom", "raised RuntimeError: cannot load my force field"),
    ({"function": "bf_user_mod:gauss", "colour": 1}, "bad arguments \\['colour'\\]"),
    ("no_such_file.py:f", "no such file"),
    (12, "known presets"),
    ({"dim": 3}, "needs a 'name'"),
])
def test_make_target_errors(user_module, spec, pattern):
    with pytest.raises(BoltzflowError, match=pattern) as info:
        make_target(spec)
    assert "\n" not in str(info.value)


def test_function_target_direct():
    with pytest.raises(BoltzflowError, match="dim must be a positive integer"):
        FunctionTarget(lambda x: x[:, 0], 0)
    with pytest.raises(BoltzflowError, match="must be callable"):
        FunctionTarget(3, 2)
    t = FunctionTarget(lambda x: jnp.where(x[:, 0] > 0, 0.0, -jnp.inf), 2, name="half")  # some -inf is fine
    assert t.name == "half"
    t = FunctionTarget(lambda x: -0.5 * jnp.sum(x**2, 1), 2,
                       sampler=lambda k, n: jax.random.normal(k, (n, 2)))
    assert t.can_sample and t.sample(jax.random.key(0), 4).shape == (4, 2)


def test_random_rotation_is_a_reproducible_rotation():
    q = random_rotation(8, 3)
    np.testing.assert_allclose(q.T @ q, np.eye(8), atol=1e-12)
    assert abs(np.linalg.det(q) - 1) < 1e-12
    np.testing.assert_array_equal(q, random_rotation(8, 3))
    assert np.abs(q - random_rotation(8, 4)).max() > 0.1
    for bad in (-1, 1.5, True, "2"):
        with pytest.raises(BoltzflowError, match="rotation"):
            random_rotation(4, bad)


def _weighted_by_broad_gaussian(target, s: float, n: int):
    """n draws y of q = N(0, s^2 I) on a 2-D target and their log weights log p(y) - log q(y); asserts that their
    log Z estimate is within 4 (delta-method) standard errors of the target's exact log Z."""
    y = s * jax.random.normal(jax.random.key(0), (n, 2))
    log_q = -0.5 * jnp.sum(y**2, 1) / s**2 - 2 * math.log(s) - math.log(2 * math.pi)
    log_w = target.log_prob(y) - log_q
    log_z, se = log_z_estimate(log_w)
    assert abs(float(log_z) - target.log_z) < 4 * float(se)
    return y, log_w


def test_rotated_double_well_importance_sampling_agrees_with_its_exact_samples_and_log_z():
    """Rotated log_prob, sample and log_z agree: importance sampling from a broad Gaussian q = N(0, 3^2 I) estimates
    log Z and E[x] of the rotated double well; both must match the inner log Z and the mean of the exact samples
    within 4 standard errors (delta-method s.e. for log Z, the ratio estimator's s.e. for E[x])."""
    target = make_target({"name": "double_well", "rotation": 5})
    assert isinstance(target, Rotated) and target.log_z == DoubleWell().log_z and target.dim == 2
    n = 400_000
    y, log_w = _weighted_by_broad_gaussian(target, 3.0, n)
    w = np.exp(np.asarray(log_w, np.float64) - float(jnp.max(log_w)))
    w /= w.sum()
    mean_is = w @ np.asarray(y, np.float64)
    se_is = np.sqrt((w[:, None] ** 2 * (np.asarray(y, np.float64) - mean_is) ** 2).sum(0))
    x = np.asarray(target.sample(jax.random.key(1), n), np.float64)
    se_exact = x.std(0) / math.sqrt(n)
    assert np.all(np.abs(mean_is - x.mean(0)) < 4 * np.hypot(se_is, se_exact))
    assert np.abs(x.mean(0) @ target.matrix - DoubleWell().sample(jax.random.key(1), n).mean(0)).max() < 1e-4


@pytest.mark.parametrize("rotation", [1, 2, 3])
@pytest.mark.parametrize("spec", [{"name": "many_well", "dim": 8}, {"name": "many_well", "dim": 32},
                                  {"name": "gmm40"}], ids=["many_well_8", "many_well_32", "gmm40"])
def test_rotated_family_keeps_the_density_and_log_z_and_moves_the_modes_off_the_axes(spec, rotation):
    """The rotated built-in targets (issue: targets off the axes): the same log Z; exact samples y of the inner target
    rotated (x = y Q^T) are the rotated target's samples, with log p_Q(x) = log p(y); the modes leave the axes (Q
    is no signed permutation); modes are counted as on the inner target. For the 2-D mixture also log Z itself:
    importance sampling from N(0, 30^2 I), within 4 standard errors of the exact value."""
    inner, target = make_target(spec), make_target({**spec, "rotation": rotation})
    assert target.log_z == inner.log_z and target.dim == inner.dim
    q = target.matrix
    assert np.abs(q).max() < 0.99  # every axis of the inner target is mixed into several of ours
    y = inner.sample(jax.random.key(rotation), 4096)
    x = y @ jnp.asarray(q, y.dtype).T
    np.testing.assert_allclose(np.asarray(target.log_prob(x)), np.asarray(inner.log_prob(y)), rtol=1e-5, atol=1e-3)
    np.testing.assert_allclose(np.asarray(target.sample(jax.random.key(rotation), 4096)), np.asarray(x), atol=1e-4)
    assert target.modes_covered(x) == inner.modes_covered(y)
    if target.dim == 2:
        _weighted_by_broad_gaussian(target, 30.0, 200_000)


def test_rotated_many_well_modes_and_spec():
    inner = ManyWell(8)
    target = make_target({"name": "many_well", "dim": 8, "rotation": 1})
    assert target.log_z == inner.log_z and target.has_modes and target.can_sample and "rotated1" in target.name
    pts = np.asarray(target.mode_points())
    np.testing.assert_allclose(pts @ target.matrix, np.asarray(inner.mode_points()), atol=1e-5)
    np.testing.assert_allclose(np.asarray(target.log_prob(jnp.asarray(pts))),
                               np.asarray(inner.log_prob(inner.mode_points())), atol=1e-4)
    y = inner.sample(jax.random.key(0), 2000)
    x = np.asarray(y) @ target.matrix.T
    assert target.modes_covered(x) == inner.modes_covered(y) > 1
    # the rotation moves the modes off the axes: the rotated points are not axis-aligned like the inner ones
    assert np.abs(pts[:, 1::2]).max() > 0.5 and np.abs(np.asarray(inner.mode_points())[:, 1::2]).max() == 0
    assert isinstance(make_target({"name": "many_well", "dim": 8, "rotation": None}), ManyWell)
    with pytest.raises(BoltzflowError, match="rotation"):
        make_target({"name": "many_well", "dim": 8, "rotation": -2})
