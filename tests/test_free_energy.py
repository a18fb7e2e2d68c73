"""Free energies from weighted samples (boltzflow.molecules.free_energy): against exact state probabilities of a
known density, bootstrap errors against the spread of independent replicates, invariance to the log weights'
offset, and MD reference data reweighted back to itself."""

import jax
import numpy as np
import pytest

from boltzflow.errors import BoltzflowError
from boltzflow.molecules.free_energy import (ALANINE_DIPEPTIDE_STATES, backbone_states, collective_variables,
                                             cv_values, free_energy_surface, periodic_cvs, state_free_energies,
                                             time_blocks)
from boltzflow.molecules.metrics import dihedral

KT = 2.494  # kJ/mol, 300 K
#: target density of two angles a, b (degrees): a product of von Mises densities; proposal: uniform
KAPPA, MU = (1.0, 0.7), (-90.0, 120.0)
STATES = {"A": {"a": (-180.0, 0.0), "b": (50.0, -120.0)},  # b wraps through 180
          "B": {"a": (-180.0, 0.0), "b": (-120.0, 50.0)},
          "C": {"a": (0.0, 180.0)}}


def _log_p(v, k):
    return KAPPA[k] * np.cos(np.radians(v - MU[k]))


def _exact_mass(k, lo, hi, grid=200_000):
    """P(lo < v <= hi) of the k-th von Mises factor (an interval with lo >= hi wraps), by the midpoint rule."""
    v = -180.0 + (np.arange(grid) + 0.5) * 360.0 / grid
    d = np.exp(_log_p(v, k))
    inside = ((v > lo) & (v <= hi)) if lo < hi else ((v > lo) | (v <= hi))
    return d[inside].sum() / d.sum()


def _exact_states():
    return {name: np.prod([_exact_mass(k, *box.get(cv, (-180.0, 180.0))) for k, cv in enumerate("ab")])
            for name, box in STATES.items()}


def _samples(seed, n, offset=0.0):
    """Uniform proposal on (-180, 180]^2 and log weights to the von Mises target (with an arbitrary offset)."""
    rng = np.random.default_rng(seed)
    values = {"a": rng.uniform(-180, 180, n), "b": rng.uniform(-180, 180, n)}
    return values, _log_p(values["a"], 0) + _log_p(values["b"], 1) + offset


def test_state_free_energies_and_surface_agree_with_the_exact_density_within_their_errors():
    values, log_w = _samples(0, 20_000, offset=-37.5)
    s = state_free_energies(jax.random.key(0), values, log_w, KT, STATES, periodic=["a", "b"])
    exact = _exact_states()
    p_true = np.array([exact[k] for k in s.names])
    assert s.names == ("A", "B", "C") and np.isclose(p_true.sum(), 1.0)
    assert np.all(np.abs(s.probability - p_true) < 4 * s.probability_se)
    f_true = -KT * np.log(p_true)
    for i in range(3):
        assert abs(s.free_energy[i] - f_true[i]) < 4 * s.free_energy_se[i]
        for j in range(3):
            if i != j:
                z = (s.difference[i, j] - (f_true[i] - f_true[j])) / s.difference_se[i, j]
                assert abs(z) < 4, (s.names[i], s.names[j], z)
    off = ~np.eye(3, dtype=bool)
    assert np.all(np.diag(s.difference) == 0) and np.all(np.diag(s.difference_se) == 0)
    assert np.all(s.difference_se[off] > 0)
    assert 0.5 * 20_000 < s.n_effective < 20_000

    bins = 12
    surf = free_energy_surface(jax.random.key(1), values, log_w, KT, periodic=["a", "b"], bins=bins)
    e = np.linspace(-180, 180, bins + 1)
    p_bins = np.outer([_exact_mass(0, lo, hi) for lo, hi in zip(e[:-1], e[1:])],
                      [_exact_mass(1, lo, hi) for lo, hi in zip(e[:-1], e[1:])])
    assert np.allclose(surf.edges[0], e) and surf.free_energy.shape == (bins, bins)
    assert surf.free_energy.min() == 0 and np.isclose(surf.probability.sum(), 1.0)
    z = (-KT * np.log(surf.probability) + KT * np.log(p_bins)) / surf.free_energy_se
    assert 0.5 < np.mean(z**2) < 2.0 and np.abs(z).max() < 5  # 144 bins: chi^2 / 144 near 1, none far out
    assert np.allclose(surf.free_energy, -KT * np.log(surf.probability / surf.probability.max()))


def test_bootstrap_errors_match_the_spread_of_independent_replicates():
    estimates, errors = [], []
    for r in range(40):
        values, log_w = _samples(100 + r, 2000)
        s = state_free_energies(jax.random.key(r), values, log_w, KT, STATES, periodic=["a", "b"], n_bootstrap=100)
        estimates.append([s.difference[0, 1], s.difference[2, 0], s.free_energy[2], s.probability[1]])
        errors.append([s.difference_se[0, 1], s.difference_se[2, 0], s.free_energy_se[2], s.probability_se[1]])
    spread, mean_se = np.std(estimates, axis=0, ddof=1), np.mean(errors, axis=0)
    # the spread of 40 replicates is known to about 11 %: a factor 1.5 is 4 of its standard errors
    assert np.all(spread / mean_se < 1.5) and np.all(spread / mean_se > 1 / 1.5), spread / mean_se


def _sticky_chains(seed, n_chains=8, saves=1000, stay=0.8):
    """MD-like correlated samples of the von Mises density, laid out as `boltzflow md` saves them (all chains at a
    save, save after save): each chain keeps its value with probability ``stay`` (integrated correlation time
    (1 + stay) / (1 - stay) = 9 saves), else draws afresh from the exact density; the first save is exact, so each chain is stationary."""
    rng = np.random.default_rng(seed)
    fresh = np.stack([np.degrees(rng.vonmises(np.radians(MU[k]), KAPPA[k], (saves, n_chains))) for k in range(2)])
    keep = rng.random((saves, n_chains)) < stay
    keep[0] = False
    last = np.maximum.accumulate(np.where(keep, 0, np.arange(saves)[:, None]), axis=0)  # the save last drawn afresh
    cols = np.take_along_axis(fresh, last[None], axis=1)
    chain = np.tile(np.arange(n_chains), saves)
    return {"a": cols[0].reshape(-1), "b": cols[1].reshape(-1)}, chain


def test_block_bootstrap_errors_of_correlated_samples_match_the_spread_of_independent_runs():
    """A plain bootstrap of correlated samples is too small by about sqrt(tau) = 3; blocks of 50 saves (>> tau) give
    the spread of 40 independent runs within a factor 1.5 (4 of its standard errors, as above)."""
    estimates, block_se, plain_se = [], [], []
    for r in range(40):
        values, chain = _sticky_chains(200 + r)
        blocks = time_blocks(chain)
        s = state_free_energies(jax.random.key(r), values, None, KT, STATES, periodic=["a", "b"], n_bootstrap=100,
                                blocks=blocks)
        plain = state_free_energies(jax.random.key(r), values, None, KT, STATES, periodic=["a", "b"], n_bootstrap=100)
        estimates.append([s.difference[0, 1], s.probability[2]])
        block_se.append([s.difference_se[0, 1], s.probability_se[2]])
        plain_se.append([plain.difference_se[0, 1], plain.probability_se[2]])
    spread = np.std(estimates, axis=0, ddof=1)
    assert np.all(spread / np.mean(block_se, axis=0) < 1.5) and np.all(spread / np.mean(block_se, axis=0) > 1 / 1.5)
    assert np.all(spread / np.mean(plain_se, axis=0) > 2)
    assert blocks.shape == chain.shape and set(np.unique(blocks)) == set(range(20))
    assert np.all(blocks.reshape(1000, 8) == (np.arange(1000) // 50)[:, None])


def test_time_blocks_needs_chains_side_by_side():
    with pytest.raises(BoltzflowError, match="side by side"):
        time_blocks(np.array([0, 0, 1, 1]))


def test_the_log_weights_offset_changes_nothing():
    values, log_w = _samples(1, 3000)
    runs = [(free_energy_surface(jax.random.key(2), values, log_w + c, KT, periodic=["a", "b"], bins=20),
             state_free_energies(jax.random.key(2), values, log_w + c, KT, STATES, periodic=["a", "b"]))
            for c in (0.0, 700.0, -1234.5)]
    for surf, states in runs[1:]:
        np.testing.assert_allclose(surf.free_energy, runs[0][0].free_energy, atol=1e-9)
        np.testing.assert_allclose(surf.free_energy_se, runs[0][0].free_energy_se, atol=1e-9)
        np.testing.assert_allclose(states.difference, runs[0][1].difference, atol=1e-9)
        np.testing.assert_allclose(states.difference_se, runs[0][1].difference_se, atol=1e-9)
    equal = state_free_energies(jax.random.key(2), values, None, KT, STATES, periodic=["a", "b"])
    zeros = state_free_energies(jax.random.key(2), values, np.zeros(3000), KT, STATES, periodic=["a", "b"])
    np.testing.assert_allclose(equal.difference, zeros.difference, atol=1e-12)


def test_a_distance_surface_spans_the_samples_and_empty_bins_are_infinite():
    rng = np.random.default_rng(3)
    values = {"d": rng.gamma(4.0, 0.1, 5000), "a": rng.uniform(-180, 0, 5000)}  # a never > 0: empty bins
    surf = free_energy_surface(jax.random.key(0), values, None, KT, periodic=["a"], bins=10, n_bootstrap=20)
    assert surf.edges[0][0] == values["d"].min() and surf.edges[0][-1] == values["d"].max()
    assert np.all(np.isinf(surf.free_energy[:, 5:])) and np.all(np.isnan(surf.free_energy_se[:, 5:]))
    assert np.all(np.isfinite(surf.free_energy[:, :5][surf.probability[:, :5] > 0.01]))


def test_user_mistakes_are_one_line_errors():
    values, log_w = _samples(2, 100)
    with pytest.raises(BoltzflowError, match="2 collective variables"):
        free_energy_surface(jax.random.key(0), {"a": values["a"]}, log_w, KT)
    with pytest.raises(BoltzflowError, match="no values of the collective variable"):
        state_free_energies(jax.random.key(0), values, log_w, KT, {"X": {"c": (0, 1)}})
    with pytest.raises(BoltzflowError, match="is empty"):
        state_free_energies(jax.random.key(0), values, log_w, KT, {"X": {"a": (10, 0)}})  # a not periodic here
    with pytest.raises(BoltzflowError, match="positive weight"):
        state_free_energies(jax.random.key(0), values, np.full(100, -np.inf), KT, STATES, periodic=["a", "b"])
    with pytest.raises(BoltzflowError, match="kT"):
        state_free_energies(jax.random.key(0), values, log_w, 0.0, STATES, periodic=["a", "b"])


def test_collective_variables_of_a_molecule_and_md_reweighted_back_to_itself():
    """The shipped alanine dipeptide MD reference, thinned by a known acceptance (a quarter of alpha_R kept) and
    reweighted by its inverse, gives the state free energies of the whole reference with equal weights."""
    pytest.importorskip("openmm", reason="OpenMM is not installed (pip install 'boltzflow[molecules]')")
    from boltzflow.molecules.reference import builtin_reference, load_reference
    from boltzflow.molecules.system import load_system

    molecule = load_system("aldp_implicit")
    cvs = collective_variables(molecule, ["phi", "psi", "1,14", (4, 6, 8, 14)])
    assert cvs == {"phi": (4, 6, 8, 14), "psi": (6, 8, 14, 16), "distance(1,14)": (1, 14),
                   "torsion(4,6,8,14)": (4, 6, 8, 14)}
    assert periodic_cvs(cvs) == ["phi", "psi", "torsion(4,6,8,14)"]
    for bad in ("chi", "1,2,3", (0, 99)):
        with pytest.raises(BoltzflowError, match="collective variable"):
            collective_variables(molecule, [bad])
    x = load_reference(builtin_reference("aldp_implicit", 300.0))["x"]
    values = cv_values(x, cvs)
    np.testing.assert_allclose(values["phi"], np.degrees(dihedral(x, 4, 6, 8, 14)))
    np.testing.assert_allclose(values["distance(1,14)"],
                               np.linalg.norm(x[:, 42:45] - x[:, 3:6], axis=1), rtol=1e-6)

    phi_psi = {k: values[k] for k in ("phi", "psi")}
    full = state_free_energies(jax.random.key(0), phi_psi, None, KT, ALANINE_DIPEPTIDE_STATES, periodic=["phi", "psi"])
    accept = np.where((phi_psi["psi"] > -120) & (phi_psi["psi"] <= 50), 0.25, 1.0)
    keep = np.random.default_rng(0).uniform(size=len(x)) < accept
    sub = state_free_energies(jax.random.key(1), {k: v[keep] for k, v in phi_psi.items()}, -np.log(accept[keep]),
                              KT, ALANINE_DIPEPTIDE_STATES, periodic=["phi", "psi"])
    assert sub.names == full.names == ("C7eq", "alpha_R", "C7ax_alpha_L")
    assert np.isclose(full.probability.sum(), 1.0)  # the three states tile the plane
    for i, j in ((0, 1), (2, 0), (2, 1)):
        se = np.hypot(sub.difference_se[i, j], full.difference_se[i, j])
        assert abs(sub.difference[i, j] - full.difference[i, j]) < 4 * se
    unweighted = state_free_energies(jax.random.key(1), {k: v[keep] for k, v in phi_psi.items()}, None, KT,
                                     ALANINE_DIPEPTIDE_STATES, periodic=["phi", "psi"])
    assert unweighted.difference[1, 0] - full.difference[1, 0] > 2.0  # thinning alone moves alpha_R up ~ kT log 4


def test_backbone_states_of_any_residue_are_alanine_dipeptides_boxes():
    assert backbone_states(["phi", "psi"]) == ALANINE_DIPEPTIDE_STATES
    states = backbone_states(["phi_2", "psi_2"])
    assert list(states) == list(ALANINE_DIPEPTIDE_STATES)
    assert states["C7eq"] == {"phi_2": (-180.0, 0.0), "psi_2": (50.0, -120.0)}
    assert backbone_states(["phi_1", "psi_2"]) == {} and backbone_states(["phi", "1,14"]) == {}
