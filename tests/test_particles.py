"""Particle targets (boltzflow.targets.particles): the centre-of-mass-free coordinates, the energies' invariances,
LJ-13's and LJ-55's known global minima, DW's pair minimum, and the two pair-sum conventions."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.optimize import minimize

from boltzflow.errors import BoltzflowError
from boltzflow.targets.particles import (DoubleWellParticles, LennardJonesCluster, dw4, helmert, lj13, lj55,
                                         random_rotation)


def test_helmert_columns_are_orthonormal_and_centre_of_mass_free():
    for n in (2, 4, 13):
        h = helmert(n)
        np.testing.assert_allclose(h.T @ h, np.eye(n - 1), atol=1e-12)
        np.testing.assert_allclose(h.sum(axis=0), 0.0, atol=1e-12)


@pytest.mark.parametrize("make", [dw4, lj13])
def test_energy_is_invariant_under_rotations_translations_permutations(make):
    """y -> positions -> P X R^T + t -> y' gives y' with the same log p; positions have their centre at 0; y
    round-trips through the positions."""
    with jax.enable_x64(True):
        target = make()
        n, d = target.n_particles, target.spatial_dim
        key = jax.random.key(0)
        y = 0.6 * jax.random.normal(key, (16, target.dim), jnp.float64)
        x = target.positions(y)
        np.testing.assert_allclose(jnp.mean(x, axis=1), 0.0, atol=1e-12)
        np.testing.assert_allclose(target.coordinates(x), y, atol=1e-12)
        for k in range(5):
            kr, kp, kt = jax.random.split(jax.random.fold_in(key, k), 3)
            rotation = random_rotation(kr, d)
            perm = jax.random.permutation(kp, n)
            moved = x[:, perm] @ rotation.T + jax.random.normal(kt, (1, 1, d), jnp.float64)
            y2 = target.coordinates(moved)
            np.testing.assert_allclose(target.log_prob(y2), target.log_prob(y), rtol=1e-10, atol=1e-9)
            assert np.isclose(float(jnp.linalg.det(rotation)), 1.0)


def _icosahedron(r: float) -> np.ndarray:
    phi = (1 + 5**0.5) / 2
    v = [(0, s1, s2 * phi) for s1 in (-1, 1) for s2 in (-1, 1)]
    v += [(s1, s2 * phi, 0) for s1 in (-1, 1) for s2 in (-1, 1)]
    v += [(s2 * phi, 0, s1) for s1 in (-1, 1) for s2 in (-1, 1)]
    v = np.asarray(v, float)
    return np.concatenate([np.zeros((1, 3)), r * v / np.linalg.norm(v, axis=1, keepdims=True)])


def _mackay55() -> np.ndarray:
    """The 55-atom Mackay icosahedron: the centre, 12 vertices, and a second shell of 12 vertices and 30 edge
    midpoints."""
    inner = _icosahedron(1.0)[1:]
    edge = np.min(np.linalg.norm(inner[1:] - inner[0], axis=1))
    edges = [(i, j) for i in range(12) for j in range(i + 1, 12)
             if np.isclose(np.linalg.norm(inner[i] - inner[j]), edge)]
    assert len(edges) == 30
    return np.concatenate([np.zeros((1, 3)), inner, 2 * inner, np.array([inner[i] + inner[j] for i, j in edges])])


def _minimum(target, x0):
    def f(flat):
        with jax.enable_x64(True):
            v, g = jax.value_and_grad(lambda z: target.pair_energy(z.reshape(1, -1, 3))[0])(jnp.asarray(flat))
        return float(v), np.asarray(g)

    return minimize(f, x0.reshape(-1), jac=True, method="L-BFGS-B", options={"gtol": 1e-10, "maxiter": 5000}).fun


def test_lennard_jones_global_minima_match_the_cambridge_cluster_database():
    """Pair term alone, each pair once: LJ-13's icosahedron -44.326801, LJ-55's Mackay icosahedron -279.248470
    (Wales & Doye 1997); the "ordered" convention doubles it."""
    np.testing.assert_allclose(_minimum(lj13(), _icosahedron(1.0)), -44.326801, atol=1e-5)
    start = _mackay55()
    assert start.shape == (55, 3)
    np.testing.assert_allclose(_minimum(lj55(), 0.95 * start), -279.248470, atol=1e-5)
    x = _icosahedron(1.0)[None]
    with jax.enable_x64(True):
        pairs, ordered = lj13().pair_energy(jnp.asarray(x)), lj13(pair_sum="ordered").pair_energy(jnp.asarray(x))
    np.testing.assert_allclose(np.asarray(ordered), 2 * np.asarray(pairs), rtol=1e-12)


def test_double_well_pair_minimum_and_lj_harmonic_term():
    """Two particles: the DW pair energy b r^2 + c r^4 (r = d - d0) is least, -b^2 / 4c, at r^2 = -b / 2c; LJ's
    harmonic term is c_osc / 2 sum |x_i - mean|^2, i.e. |y|^2 / 2 in the centre-of-mass-free coordinates."""
    with jax.enable_x64(True):
        pair = DoubleWellParticles(2, 2)
        for sign in (-1.0, 1.0):
            dist = 4.0 + sign * np.sqrt(4.0 / 1.8)
            y = jnp.array([[dist, 0.0]]) / np.sqrt(2.0)  # two particles dist apart: y = (x_2 - x_1) / sqrt 2
            np.testing.assert_allclose(-pair.log_prob(y), -16.0 / 3.6, rtol=1e-12)
        cluster = LennardJonesCluster(13, 3, eps=0.0)
        y = jax.random.normal(jax.random.key(1), (4, cluster.dim), jnp.float64)
        np.testing.assert_allclose(-cluster.log_prob(y), 0.5 * jnp.sum(y**2, axis=1), rtol=1e-12)
    assert (dw4().dim, lj13().dim, lj55().dim) == (6, 36, 162)
    assert (dw4().name, lj13().name, lj13(pair_sum="ordered").name) == ("dw4", "lj13", "lj13_ordered")


def test_overlapping_particles_have_zero_density_and_mistakes_are_one_line():
    target = lj13()
    y = jnp.zeros((1, target.dim))  # every particle at the origin
    assert float(target.log_prob(y)[0]) == -np.inf
    with pytest.raises(BoltzflowError, match="pair_sum"):
        lj13(pair_sum="half")
    with pytest.raises(BoltzflowError, match="at least 2 particles"):
        DoubleWellParticles(1, 2)


@pytest.mark.parametrize("make", [dw4, lj13, lj55])
def test_start_is_a_lattice_with_the_pair_spacing(make):
    target = make()
    y = target.start()
    x = np.asarray(target.positions(jnp.asarray(y)[None]))[0]
    distances = np.linalg.norm(x[:, None] - x[None], axis=-1)[np.triu_indices(target.n_particles, 1)]
    assert y.shape == (target.dim,) and np.isclose(distances.min(), target.spacing, rtol=1e-5)
    assert np.isfinite(float(target.log_prob(jnp.asarray(y, jnp.float32)[None])[0]))


def test_wasserstein_1d_against_scipy_and_sorted_samples():
    from scipy.stats import wasserstein_distance

    from boltzflow.targets.particles import wasserstein_1d

    rng = np.random.default_rng(0)
    a, b, wa, wb = rng.normal(size=500), rng.normal(1, 2, size=800), rng.random(500), rng.random(800)
    np.testing.assert_allclose(wasserstein_1d(a, b, wa, wb, p=1), wasserstein_distance(a, b, wa, wb), rtol=1e-10)
    a, b = rng.normal(size=1000), rng.normal(0.5, 1.5, size=1000)  # equal sizes: W2^2 = mean (a_(i) - b_(i))^2
    np.testing.assert_allclose(wasserstein_1d(a, b), np.sqrt(np.mean((np.sort(a) - np.sort(b)) ** 2)), rtol=1e-12)


def test_report_against_the_reference_is_zero_for_the_reference_itself(tmp_path):
    """Model rows made of the reference's own samples: energy W2, distance W1 and TV are 0, raw and reweighted with
    equal weights; weights that drop the low-energy half move the reweighted numbers only."""
    from boltzflow.estimators import WeightSums
    from boltzflow.targets.report import ModelSamples

    target = dw4()
    ref = (target.start() + 0.3 * np.random.default_rng(2).normal(size=(400, target.dim))).astype(np.float32)
    np.savez(tmp_path / "ref.npz", x=ref)
    target = dw4(reference=str(tmp_path / "ref.npz"))
    rows = {k: np.asarray(v) for k, v in target.sample_rows(jnp.asarray(ref), jnp.zeros(len(ref))).items()}
    kept = target.keep_rows(rows)
    log_q = lambda v: -0.5 * jnp.sum(v**2, axis=-1)  # noqa: E731
    s = ModelSamples(len(ref), 128, WeightSums.of(jnp.zeros(len(ref))), kept, log_q, jax.random.key(0),
                     jax.random.key(1))
    report = target.metrics(s)
    for name in ("energy_w2", "energy_w1", "distance_w1", "distance_tv"):  # energies kept in float32: W2 ~ 1e-5
        assert report[name] == pytest.approx(0.0, abs=1e-4)
        assert report[f"{name}_reweighted"] == pytest.approx(0.0, abs=1e-4)
    np.testing.assert_allclose(report["mean_log_q_reference"], np.mean(-0.5 * np.sum(ref.astype(np.float64)**2, 1)),
                               rtol=1e-5)
    low = kept["energy"] < np.median(kept["energy"])
    s = ModelSamples(len(ref), 128, WeightSums.of(jnp.zeros(len(ref))), kept | {"log_w": np.where(low, -np.inf, 0.0)},
                     log_q, jax.random.key(0), jax.random.key(1))
    report = target.metrics(s)
    assert report["energy_w2"] == pytest.approx(0.0, abs=1e-4) and report["energy_w2_reweighted"] > 0.1
    assert 0 < report["energy_w1_reference_noise"] < np.std(kept["energy"])  # halves of one set: closer than its spread
    assert report["distance_tv_reweighted"] > 0 and kept["distances"].sum(axis=1).tolist() == [6] * len(ref)


def test_shipped_lj13_reference_is_used_by_default():
    from boltzflow.targets.particles import LJ13_REFERENCE

    assert lj13().reference_path == str(LJ13_REFERENCE) and lj13(pair_sum="ordered").reference_path is None
    ref = np.load(LJ13_REFERENCE)["x"]
    assert ref.shape == (16_000, 36) and np.all(np.isfinite(np.asarray(lj13().log_prob(jnp.asarray(ref)))))


def test_shipped_dw4_reference_is_used_by_default_and_samples_the_target():
    """dw4() reports against its shipped MD samples (and a dw4 with another potential against none); their mean
    energy agrees with self-normalised importance sampling from a broad Gaussian within 5 standard errors."""
    from boltzflow.targets.particles import DW4_REFERENCE

    assert dw4().reference_path == str(DW4_REFERENCE) and dw4(tau=2.0).reference_path is None
    target = dw4()
    ref = np.load(DW4_REFERENCE)["x"]
    assert ref.shape == (64_000, 6) and ref.dtype == np.float32
    e_ref = -np.asarray(target.log_prob(jnp.asarray(ref)), np.float64)
    rng = np.random.default_rng(0)
    y = rng.normal(scale=2.5, size=(400_000, 6))
    log_w = np.asarray(target.log_prob(jnp.asarray(y, jnp.float32)), np.float64) + 0.5 * np.sum(y**2, 1) / 2.5**2
    w = np.exp(log_w - log_w.max())
    e = -np.asarray(target.log_prob(jnp.asarray(y, jnp.float32)), np.float64)
    e_is = np.sum(w * e) / w.sum()
    se_is = np.sqrt(np.sum(w**2 * (e - e_is) ** 2)) / w.sum()
    se_ref = e_ref.std() / np.sqrt(len(e_ref) / 4)  # ~4x autocorrelated (lag-1 0.36; dw4_reference.json)
    assert abs(e_is - e_ref.mean()) < 5 * np.hypot(se_is, se_ref), (e_is, e_ref.mean(), se_is, se_ref)


def test_particle_pictures_show_energies_and_distances(tmp_path):
    from boltzflow.config import config_from_dict
    from boltzflow.evaluate import draw_pictures
    from boltzflow.experiment import build_experiment

    cfg = config_from_dict({"target": "dw4", "flow": {"type": "eacf", "n_layers": 2, "hidden": 8, "blocks": 1},
                            "method": {"name": "fab"}})
    paths = draw_pictures(build_experiment(cfg), tmp_path, jax.random.key(0))
    assert [p.name for p in paths] == ["particles.png"] and paths[0].stat().st_size > 10_000


def test_particle_pictures_show_the_baseline_the_run_keeps(tmp_path, saved):
    """Once an evaluation with the baseline has kept its exploration in the run directory, the pictures draw its
    reweighted energies and distances beside the model's and the reference's; before, they do not (nothing is
    run to make them)."""
    from boltzflow.config import config_from_dict
    from boltzflow.evaluate import CheckSetup, baseline_report, draw_pictures, kept_baseline
    from boltzflow.experiment import build_experiment

    exp = build_experiment(config_from_dict({"target": "dw4", "flow": {"type": "eacf", "n_layers": 2, "hidden": 8,
                                                                        "blocks": 1}, "method": {"name": "fab"}}))
    setup = CheckSetup(30_000, tmp_path)
    assert kept_baseline(exp, setup) is None
    report = baseline_report(exp, jax.random.key(1), 1024, setup)
    x, log_w = kept_baseline(exp, setup)
    assert len(x) == len(log_w) == report["baseline_samples"]
    assert kept_baseline(exp, CheckSetup(60_000, tmp_path)) is None  # another budget: another baseline
    draw_pictures(exp, tmp_path, jax.random.key(0), (x, log_w))
    labels = [[line.get_label() for line in ax.get_lines()] for ax in saved[-1].axes]
    assert labels == [["reference", "model", "model, reweighted", "SMC baseline, reweighted"]] * 2
