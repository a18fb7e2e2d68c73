"""Exploration without a flow (boltzflow.explore), its SMC (boltzflow.mcmc.anneal: resampling, adaptive levels), the
far-mode targets (boltzflow.targets.far_modes) and the missing-mass check (docs/concepts/missing-mass-check.md)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from boltzflow.ais import build_ais
from boltzflow.errors import BoltzflowError
from boltzflow.explore import (Exploration, ExploreSettings, _gaussian, check_flow, explore, group_fraction, group_log_z,
                               mass_missing, unseen_mass)
from boltzflow.estimators import systematic_resample
from boltzflow.mcmc.anneal import SMC
from boltzflow.mcmc.registry import make_kernel
from boltzflow.targets import make_target
from boltzflow.targets.far_modes import far_modes
from boltzflow.targets.gmm import GaussianMixture


def test_systematic_resampling_gives_each_particle_floor_or_ceil_of_m_times_its_weight():
    m = 64
    log_w = jax.random.normal(jax.random.key(0), (m,)) * 2.0
    w = np.asarray(jax.nn.softmax(log_w))
    for k in jax.random.split(jax.random.key(1), 20):
        counts = np.bincount(np.asarray(systematic_resample(k, log_w)), minlength=m)
        assert counts.sum() == m
        assert np.all(counts >= np.floor(m * w) - 1e-9) and np.all(counts <= np.ceil(m * w) + 1e-9)
    # no finite weight: the particles stay
    assert np.array_equal(np.asarray(systematic_resample(jax.random.key(2), jnp.full(4, -jnp.inf))), np.arange(4))


@pytest.mark.parametrize("tuned", [pytest.param(False, marks=pytest.mark.slow), True])
def test_smc_log_z_is_unbiased_over_independent_runs(tuned):
    """SMC (adaptive levels, resampling) from N(0, 4^2 I) to an unnormalised N(m, 0.5^2 I) in 3-D with log Z = 1.3:
    the mean of Z^ / Z over 16 runs of 8 groups must be 1 within 4 standard errors of that mean (from the runs'
    own spread), and log Z^ of the runs close to the truth. Step sizes adapted over 15 passes first, or (``tuned``,
    as the exploration runs it) tuned within each run with the levels after beta = 1 skipped but 4."""
    d, log_z_true = 3, 1.3
    mu = jnp.array([1.0, -2.0, 0.5])

    def log_p(x):
        return log_z_true - 0.5 * jnp.sum(((x - mu) / 0.5) ** 2, 1) - d * math.log(0.5) - 0.5 * d * math.log(2 * math.pi)

    smc = SMC(0.5, 8, 0.9, levels_at_end=4, tune_rate=1.0) if tuned else SMC(0.5, 8, 0.9)
    ais = build_ais(log_p, make_kernel("hmc", n_leapfrog=3), 48, smc=smc, step_size=0.5, adapt_rate=0.3)
    ref = _gaussian(jnp.zeros(d), jnp.full(d, 4.0))
    run = jax.jit(lambda k, st, n, adapt: ais.run(k, st, *ref, n, adapt), static_argnums=(2, 3))
    state = ais.init_state()
    for k in jax.random.split(jax.random.key(0), 0 if tuned else 15):
        state = run(k, state, 256, True)[1]
    ratios, logs = [], []
    for k in jax.random.split(jax.random.key(1), 16):
        res = run(k, state, 1024, False)[0]
        lz, se = group_log_z(np.asarray(res.log_w, np.float64), 8)
        logs.append(lz)
        ratios.append(math.exp(lz - log_z_true))
        assert int(res.info.n_resampled) > 0 and float(res.info.betas[-1]) == 1.0
        levels = int(res.info.levels_run)
        if tuned:  # the levels the path needs, then 4 at p, then none: a skipped level moves nothing
            assert levels == int(np.sum(np.asarray(res.info.betas) < 1.0)) + 4 < 48
            assert np.all(np.asarray(res.info.accept)[levels:] == 0) and np.all(np.asarray(res.info.accept)[:levels] > 0.3)
        else:
            assert levels == 48
    ratios = np.array(ratios)
    assert abs(ratios.mean() - 1) < 4 * ratios.std(ddof=1) / math.sqrt(len(ratios)) + 1e-3, ratios
    assert abs(np.mean(logs) - log_z_true) < 0.1, logs


def test_an_exploration_counts_every_target_evaluation_and_keeps_to_its_budget():
    """The target evaluations an exploration reports are the rows of x its log density was called on (counted by a
    callback, so skipped levels are seen to cost nothing), and a budget too small for the growth stops it
    unconverged, out of budget (a budget that converges with fewer final particles: tests/test_explore_cache.py)."""
    t = GaussianMixture(np.array([[0.0, 0.0], [6.0, 0.0]]), 1.0, np.array([0.7, 0.3]))
    seen = []

    def log_p(x):
        jax.debug.callback(lambda rows: seen.append(int(rows)), x.shape[0])
        return t.log_prob(x)

    e = explore(jax.random.key(0), log_p, 2, n=16384)
    jax.effects_barrier()
    assert e.converged and e.target_evals == sum(seen) == sum(r["target_evals"] for r in e.rounds)
    assert e.rounds[-1]["kind"] == "final" and len(e.log_w) == 8192  # 4096 per dimension, at least two dimensions
    assert all(r["levels"] < 100 for r in e.rounds)  # of MAX_LEVELS = 256: the levels each path needed, and 4
    tiny = explore(jax.random.key(0), t.log_prob, 2, n=16384, budget=e.rounds[0]["target_evals"] * 1.5)
    assert not tiny.converged and tiny.out_of_budget and len(tiny.rounds) == 1 and tiny.summary()["budget"] > 0


def test_pooled_groups_of_different_sizes_count_once_each():
    """Two looks with groups of 100 and of 300 particles: the pooled estimates are the means over groups (each an
    independent estimate), not over particles."""
    rng = np.random.default_rng(0)
    log_w = np.concatenate([np.zeros(400), np.full(1200, math.log(2.0))])  # Z^_g: 1 (4 groups), 2 (4 groups)
    inside = rng.random(1600) < np.concatenate([np.full(400, 0.1), np.full(1200, 0.3)])
    sizes = [100] * 4 + [300] * 4
    log_z, _ = group_log_z(log_w, sizes)
    assert abs(log_z - math.log(1.5)) < 1e-12
    frac, se, per_group = group_fraction(log_w, inside, sizes)
    z_in = [inside[i:i + m].mean() * z for i, m, z in zip(np.cumsum([0] + sizes[:-1]), sizes, [1] * 4 + [2] * 4)]
    assert abs(frac - sum(z_in) / 12) < 1e-12 and se > 0 and len(per_group) == 8
    with pytest.raises(ValueError, match="do not split"):
        group_log_z(log_w, [100] * 8)


def test_smc_needs_a_metropolis_kernel_and_whole_groups():
    log_p = lambda x: -0.5 * jnp.sum(x**2, 1)  # noqa: E731
    ref = _gaussian(jnp.zeros(2), jnp.ones(2))
    with pytest.raises(BoltzflowError, match="accept step"):
        ais = build_ais(log_p, make_kernel("ula"), 4, smc=SMC(0.5, 2))
        ais.run(jax.random.key(0), ais.init_state(), *ref, 16)
    ais = build_ais(log_p, make_kernel("hmc"), 4, smc=SMC(0.5, 3))
    with pytest.raises(BoltzflowError, match="dividing the batch"):
        ais.run(jax.random.key(0), ais.init_state(), *ref, 16)


def test_far_mode_targets_follow_their_recipe():
    dims, weights, dists = set(), [], []
    for seed in range(30):
        t = far_modes(seed)
        assert t.n_far in (1, 2) and 2 <= t.dim <= 10 and t.log_z == 0.0
        weights += list(t.weights[-t.n_far:])
        dists += list(t.distances)
        dims.add(t.dim)
        far = t.means[-t.n_far:]
        bulk_mean = t.weights[:-t.n_far] @ t.means[:-t.n_far] / t.weights[:-t.n_far].sum()
        np.testing.assert_allclose(np.linalg.norm(far - bulk_mean, axis=1), np.array(t.distances) * t.bulk_scale)
    assert min(weights) >= 0.01 and max(weights) <= 0.05 and min(dists) >= 3 and max(dists) <= 8 and len(dims) >= 6
    assert np.array_equal(far_modes(4).means, make_target({"name": "far_modes", "seed": 4}).means)
    assert far_modes(4, dim=3).dim == 3
    # the region masses of exact samples are the weights up to the (small) overlap
    t = far_modes(1)
    x = np.asarray(t.sample(jax.random.key(0), 200_000))
    np.testing.assert_allclose(t.region_mass(x), t.weights[-t.n_far:], rtol=0.05)
    with pytest.raises(BoltzflowError, match="seed"):
        far_modes(-1)


@pytest.mark.parametrize("seed", [1, 5])
def test_exploration_finds_the_far_modes(seed):
    """Tempered SMC from a growing Gaussian, nothing told about the target: every far mode of two generated targets
    (6-D with one 1.9 % mode 6.8 bulk scales away; 8-D with two modes of 3 %) gets at least a third of its mass
    (the exploration finds modes; the flow trained from its samples gets the weights right) and the reference ends
    at least 10 times wider than the found scale (within the pilot's slack, 1.25), where the final round runs."""
    t = far_modes(seed)
    e = explore(jax.random.key(seed), t.log_prob, t.dim, n=4096)
    found = t.region_mass(e.x, e.log_w)
    assert np.all(found > t.weights[-t.n_far:] / 3), (found, t.weights[-t.n_far:], e.rounds)
    pilot, final = e.rounds[-2:]
    assert e.converged and pilot["kind"] == "pilot" and pilot["scale"] >= 10 / 1.25 * pilot["found_scale"]
    assert final["kind"] == "final" and final["scale"] == pilot["scale"] and final["particles"] == 4096
    # the samples' log p, carried from the SMC's last level (the missing-mass check evaluates no density twice)
    np.testing.assert_allclose(e.log_p, t.log_prob(jnp.asarray(e.x, jnp.float32)), rtol=1e-4, atol=1e-3)


def test_unseen_mass_flags_a_flow_without_the_far_mode_and_not_one_with_it():
    """The unseen mass of a 'flow' that is the bulk alone (misses a 3 % mode) and one that is p itself."""
    t = GaussianMixture(np.array([[0.0, 0.0], [7.0, 0.0]]), 1.0, np.array([0.97, 0.03]))
    bulk = GaussianMixture(np.array([[0.0, 0.0]]), 1.0)
    e = explore(jax.random.key(0), t.log_prob, 2, n=4096)
    for q, missing in ((bulk, True), (t, False)):
        xq = q.sample(jax.random.key(1), 20_000)
        flow_log_w = np.asarray(t.log_prob(xq) - q.log_prob(xq), np.float64)
        log_z = float(jax.scipy.special.logsumexp(flow_log_w) - math.log(len(flow_log_w)))
        log_ratio_e = e.log_p - np.asarray(q.log_prob(jnp.asarray(e.x, jnp.float32)))
        r = unseen_mass(e.log_w, e.n_groups, log_ratio_e, flow_log_w, log_z)
        assert r["mass_missing"] is missing, r
        if missing:
            assert abs(r["unseen_mass"] - 0.03) < 0.015 and r["thin_region_mass_flow"] == 0.0, r


def test_explore_settings_are_checked_and_auto_means_small_and_not_a_molecule():
    with pytest.raises(BoltzflowError, match="multiple of explore.n_groups"):
        ExploreSettings(n=1001)
    with pytest.raises(BoltzflowError, match="explore.n_pilot"):
        ExploreSettings(n_pilot=100)
    with pytest.raises(BoltzflowError, match="n_pilot must be at least 512"):
        ExploreSettings(n_pilot=256)
    with pytest.raises(BoltzflowError, match="budget"):
        ExploreSettings(budget=0)
    s = ExploreSettings()
    assert s.wants("check", far_modes(0)) and not s.wants("check", make_target({"name": "many_well", "dim": 64}))
    assert not ExploreSettings(check=False).wants("check", far_modes(0))
    with pytest.raises(BoltzflowError, match="growth > 1"):
        explore(jax.random.key(0), lambda x: -x[:, 0] ** 2, 2, growth=1.0)


def test_fab_buffer_starts_with_the_seed_samples_weighted_for_p_squared_over_q():
    """The seeding of FAB's buffer: the seed samples are its first entries, with
    log w = log v + (alpha - 1)(log p - log q) and log q_old = log q of the initial flow; the first step's AIS adds
    min_buffer_length samples on top of them, then its own pass."""
    import equinox as eqx

    from boltzflow.config import config_from_dict
    from boltzflow.experiment import build_experiment
    from boltzflow.train.api import Problem
    from boltzflow.train.registry import METHODS
    from boltzflow.train.state import make_optimizer

    cfg = config_from_dict({"target": "gmm4", "flow": {"type": "realnvp", "n_layers": 2, "hidden": 8},
                            "method": {"name": "fab", "buffer_size": 512, "min_buffer_length": 128},
                            "ais": {"kernel": "hmc", "n_intermediate": 1}, "train": {"batch_size": 64}})
    exp = build_experiment(cfg)
    x = np.asarray(exp.target.sample(jax.random.key(3), 100), np.float32)
    log_v = np.linspace(-1.0, 1.0, 100).astype(np.float32)
    opt = make_optimizer(cfg.train)
    problem = Problem(exp.target, 64, opt, exp.space("fab"), cfg.ais, seed=(x, log_v))
    method = METHODS["fab"].build(cfg.method.settings, problem)
    state = method.init(jax.random.key(0), exp.model)
    buf = state.buffer
    assert int(buf.length) == 100 and int(buf.index) == 100
    np.testing.assert_allclose(np.asarray(buf.x)[:100], x, atol=1e-6)
    log_q = np.asarray(exp.model.log_prob(jnp.asarray(x)))
    log_p = np.asarray(exp.target.log_prob(jnp.asarray(x)))
    np.testing.assert_allclose(np.asarray(buf.log_w)[:100], log_v + (2.0 - 1.0) * (log_p - log_q), rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(np.asarray(buf.log_q_old)[:100], log_q, rtol=1e-5, atol=1e-4)
    opt_state = opt.init(eqx.filter(exp.model, eqx.is_inexact_array))
    state = eqx.filter_jit(method.step)(exp.model, opt_state, state, jax.random.key(1))[2]
    assert int(state.buffer.length) == 100 + 128 + 64
    cost = method.cost(exp.model)  # the fill counted: two passes of 64, each a step's less its 4 loss batches
    assert cost.init["flow_evals"] == 2 * (cost.step["flow_evals"] - 4 * 64)


def test_every_group_seeing_unseen_mass_is_evidence_even_when_one_outlier_inflates_the_error():
    """The sign test (docs/concepts/missing-mass-check.md): the groups of far-mode target 0's check (one at 34 % of a
    3.5 % mode, the others at 1-8 %) put D at 2.8 standard errors, but all 8 groups see more than 0.1 % unseen:
    flagged, without a second look. Seven of eight, or eight of eight at less than 0.1 % each, are not."""
    flow_log_w = np.zeros(10_000)
    outlier = [0.34, 0.013, 0.013, 0.013, 0.076, 0.011, 0.018, 0.036]
    e, log_ratio = _look(outlier)
    r = unseen_mass(e.log_w, 8, log_ratio, flow_log_w, 0.0)
    assert r["unseen_mass"] < 3 * r["unseen_mass_stderr"] and r["unseen_in_groups"] == 1.0 and r["mass_missing"]
    checked = check_flow(lambda k: _look(outlier), jax.random.key(0), flow_log_w, 0.0)
    assert checked["mass_missing"] and checked["explore_looks"] == 1
    for groups in ([0.0] + outlier[1:], [0.0008] * 8):
        e, log_ratio = _look(groups, n_per_group=10_000)
        r = unseen_mass(e.log_w, 8, log_ratio, flow_log_w, 0.0)
        assert r["unseen_in_groups"] < 1.0 or r["unseen_mass"] < 1e-3
        assert r["mass_missing"] is (r["unseen_mass"] > 3 * r["unseen_mass_stderr"] and r["unseen_mass"] > 1e-3)


def test_missing_mass_must_be_significant_and_material():
    """The verdict on the unseen mass: 0.03 % of p at 4 standard errors (a flow's tails thinner than p's, seen on
    well-trained flows) is not a missing mode; 1 % at 5 standard errors is; 1 % at 2.5 is not yet evidence."""
    assert not mass_missing(3e-4, 7e-5)
    assert mass_missing(0.01, 0.002) and not mass_missing(0.01, 0.004)
    assert mass_missing(3e-4, 7e-5, min_mass=1e-4)
    assert mass_missing(0.01, 0.004, every_group=True) and not mass_missing(5e-4, 0.004, every_group=True)


def _look(fractions, n_per_group=1000):
    """An exploration of equal weights whose groups put ``fractions`` of their particles in the thin region (log p -
    log q = 10 there, 0 elsewhere): its unseen mass is exactly known."""
    inside = np.concatenate([np.arange(n_per_group) < round(f * n_per_group) for f in fractions])
    g = len(fractions)
    e = Exploration(x=np.zeros((g * n_per_group, 1)), log_w=np.zeros(g * n_per_group), log_p=np.zeros(g * n_per_group),
                    log_z=0.0, log_z_stderr=0.0, ess=1.0, mean=np.zeros(1), std=np.ones(1), center=np.zeros(1),
                    scale=np.ones(1), converged=True, rounds=(), target_evals=7, n_groups=g)
    return e, np.where(inside, 10.0, 0.0)


def test_an_inconclusive_check_looks_again_and_judges_the_pooled_groups():
    """The second look: a first look at 2-3 standard errors (mean 1 %, groups 0-2 %) calls a second, independent
    look (its own key); with the pooled 16 groups the mass is clear. A conclusive first look (either way) is the
    verdict."""
    flow_log_w, keys = np.zeros(10_000), []
    first, second = _look([0.0, 0.02, 0.0, 0.02, 0.0, 0.02, 0.0, 0.02]), _look([0.01] * 8)
    looks = {0: first, 1: second}
    r = check_flow(lambda k: (keys.append(k), looks[len(keys) - 1])[1], jax.random.key(0), flow_log_w, 0.0)
    one = unseen_mass(first[0].log_w, 8, first[1], flow_log_w, 0.0)
    d, se = one["unseen_mass"], one["unseen_mass_stderr"]
    assert 2 < d / se < 3 and not one["mass_missing"]
    assert r["explore_looks"] == 2 and r["mass_missing"] and r["explore_target_evals"] == 14
    assert abs(r["unseen_mass"] - 0.01) < 1e-9 and r["unseen_mass_stderr"] < se
    assert not np.array_equal(jax.random.key_data(keys[0]), jax.random.key_data(keys[1]))
    for groups, missing in (([0.01] * 8, True), ([0.0] * 8, False), ([0.0005] * 8, False)):
        r = check_flow(lambda k: _look(groups), jax.random.key(0), flow_log_w, 0.0)
        assert r["explore_looks"] == 1 and r["mass_missing"] is missing
