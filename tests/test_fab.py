"""FAB: the losses' definitions; the gradient, with and without the replay buffer, against the analytic gradient of
the alpha-divergence on Gaussians; training with and without the buffer on a small mixture.

Statistical tolerances. Each comparison of an estimate with its expected value is in units of the estimate's standard
error (s.e.), with the threshold stated at the test: |z| < 4 has two-sided probability 6e-5 of failing under a
normal approximation, 4e-4 for a Student t with 29 degrees of freedom (s.e. from 30 batch means). The seeds are
fixed, so the tests are deterministic; the thresholds bound how unlikely failure of a correct implementation is
over seeds (the tests were run with other seeds while written).
"""

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import boltzflow as bf
from boltzflow.ais import build_ais
from boltzflow.config import config_from_dict
from boltzflow.estimators import self_normalised_expectation
from boltzflow.experiment import build_experiment
from boltzflow.flows import make_realnvp
from boltzflow.flows.base import Flow
from boltzflow.flows.distributions import StandardBase
from boltzflow.mcmc import make_kernel
from boltzflow.train.buffer import build_prioritised_buffer
from boltzflow.train.fab import fab_buffer_loss, fab_no_buffer_loss


def _log_q(flow, x):
    return flow.log_prob(x)


def _random_flow(key, dim=2):
    flow = make_realnvp(key, dim, n_layers=2, hidden=8, depth=1)
    params, static = eqx.partition(flow, eqx.is_inexact_array)
    leaves, tree = jax.tree_util.tree_flatten(params)
    keys = jax.random.split(jax.random.key(7), len(leaves))
    leaves = [l + 0.1 * jax.random.normal(k, l.shape, l.dtype) for l, k in zip(leaves, keys)]
    return eqx.combine(jax.tree_util.tree_unflatten(tree, leaves), static)


@pytest.mark.parametrize("alpha", [2.0, 0.5])
def test_buffer_loss_weight_correction_matches_definition(alpha):
    flow = _random_flow(jax.random.key(0))
    x = jax.random.normal(jax.random.key(1), (16, 2))
    log_q_old = flow.log_prob(x) + jax.random.normal(jax.random.key(2), (16,))
    valid = jnp.ones(16, bool).at[3].set(False)
    clip = 1.5
    loss, (log_corr, log_q) = fab_buffer_loss(flow, x, log_q_old, valid, alpha, clip, _log_q)
    expected_corr = (1 - alpha) * (flow.log_prob(x) - log_q_old)
    np.testing.assert_allclose(log_corr, expected_corr, rtol=1e-5, atol=1e-5)
    w = np.minimum(np.exp(np.asarray(expected_corr)), clip)
    m = np.asarray(valid)
    np.testing.assert_allclose(loss, -np.mean((w * np.asarray(log_q))[m]), rtol=1e-5)
    # the gradient flows only through log q, not through the correction
    g = eqx.filter_grad(lambda f: fab_buffer_loss(f, x, log_q_old, valid, alpha, clip, _log_q)[0])(flow)
    g_ref = eqx.filter_grad(lambda f: -jnp.sum(jnp.where(valid, jnp.asarray(w) * f.log_prob(x), 0.0)) / m.sum())(flow)
    for a, b in zip(jax.tree_util.tree_leaves(g), jax.tree_util.tree_leaves(g_ref)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_no_buffer_loss_is_self_normalised_weighted_nll():
    flow = _random_flow(jax.random.key(3))
    x = jax.random.normal(jax.random.key(4), (8, 2))
    log_w = jnp.array([0.0, 1.0, -jnp.inf, 2.0, 0.5, jnp.nan, 0.0, 0.0])
    loss, aux = fab_no_buffer_loss(flow, x, log_w, _log_q)
    ok = np.isfinite(np.asarray(log_w))
    w = np.exp(np.asarray(log_w)[ok]) / np.exp(np.asarray(log_w)[ok]).sum()
    np.testing.assert_allclose(loss, -np.sum(w * np.asarray(flow.log_prob(x))[ok]), rtol=1e-5)
    assert int(aux["n_nonfinite"]) == 2


# FAB's gradient on Gaussians --------------------------------------------------------------------------------------
#
# p(x) = exp(GC - |x - GMU|^2 / (2 GS_P^2)) (unnormalised, d = 2), q_theta = N(loc, diag(exp(2 log_scale))): a Flow
# with no layers whose learnable StandardBase holds theta = (loc, log_scale). With p_n = p / Z_p and
#
#     I(theta) = int p_n^alpha q_theta^(1-alpha) dx,       D_alpha(theta) = -I(theta) / (alpha (1 - alpha)),
#
# grad D_alpha = -1/(alpha(1-alpha)) int p_n^alpha (1-alpha) q^(-alpha) grad q = -(1/alpha) int p_n^alpha q^(1-alpha)
# grad log q, and with g = p_n^alpha q^(1-alpha) / I the AIS target (normalised),
#
#     -E_g[grad_theta log q_theta] = alpha grad D_alpha(theta) / I(theta)   (= -grad log I / (1 - alpha)).      (G)
#
# The FAB surrogate's gradient, grad S' = -sum_i softmax(log w)_i grad log q(x_i), is the self-normalised estimate of
# the left side. I has a closed form per coordinate (_log_i); the right side of (G) is its jax.grad in float64.

GMU = np.array([1.0, -0.5])
GS_P, GC = 0.8, 0.7
THETA = (np.array([0.2, 0.1]), np.array([0.1, -0.2]))  # (loc, log_scale) of q_theta: scales 1.105, 0.819


def _gauss_log_p(x):
    return GC - 0.5 * jnp.sum((x - jnp.asarray(GMU, x.dtype)) ** 2, axis=1) / GS_P**2


def _gauss_flow(loc, log_scale):
    base = StandardBase(2, learnable=True)
    base = eqx.tree_at(lambda b: (b.loc, b.log_scale), base,
                       (jnp.asarray(loc, jnp.float32), jnp.asarray(log_scale, jnp.float32)))
    return Flow(base, ())


def _flat_grad(g):
    """(loc, log_scale) gradient of a no-layer Flow as one (4,) vector."""
    return jnp.concatenate([g.base.loc, g.base.log_scale])


def _log_i(loc, log_scale, alpha):
    """log I(theta) = sum_i log int N(x; mu_i, s_p^2)^alpha N(x; loc_i, s_i^2)^(1-alpha) dx (Gaussian integral with
    precision lam = alpha / s_p^2 + (1-alpha) / s_i^2 > 0)."""
    s2 = jnp.exp(2 * log_scale)
    a, b = alpha / GS_P**2, (1 - alpha) / s2
    lam = a + b
    return jnp.sum(-0.5 * alpha * jnp.log(2 * jnp.pi * GS_P**2) - 0.5 * (1 - alpha) * jnp.log(2 * jnp.pi * s2)
                   + 0.5 * jnp.log(2 * jnp.pi / lam) - 0.5 * a * b / lam * (GMU - loc) ** 2)


def _analytic_grad(alpha, theta, theta_norm=None):
    """alpha grad D_alpha(theta) / I(theta_norm) as a (4,) vector: the right side of (G) when theta_norm = theta."""
    theta_norm = theta if theta_norm is None else theta_norm
    with jax.enable_x64(True):
        th = tuple(jnp.asarray(v, jnp.float64) for v in theta)
        d_alpha = lambda loc, ls: -jnp.exp(_log_i(loc, ls, alpha)) / (alpha * (1 - alpha))
        g_loc, g_ls = jax.grad(d_alpha, argnums=(0, 1))(*th)
        i_norm = jnp.exp(_log_i(*(jnp.asarray(v, jnp.float64) for v in theta_norm), alpha))
        return np.concatenate([np.asarray(alpha * g_loc / i_norm), np.asarray(alpha * g_ls / i_norm)])


def _forward_kl_grad(theta):
    """grad KL(p||q_theta) = -E_p[grad log q], the alpha -> 1 limit of (G): what FAB's gradient would be if AIS
    targeted p instead of g."""
    loc, log_scale = theta
    s2 = np.exp(2 * log_scale)
    return -np.concatenate([(GMU - loc) / s2, ((GMU - loc) ** 2 + GS_P**2) / s2 - 1])


@pytest.mark.parametrize("alpha", [0.5, 2.0, 3.0])
def test_closed_form_alpha_integral_matches_quadrature(alpha):
    """The reference of the gradient tests: log I(theta) against the trapezoid rule (error << 1e-8), at theta and at
    the moved theta of the stale-buffer test."""
    t = np.linspace(-20.0, 20.0, 400_001)
    for loc, log_scale in (THETA, (THETA[0] + [0.1, -0.1], THETA[1] + [0.1, 0.05])):
        total = 0.0
        for mu, m, s in zip(GMU, loc, np.exp(log_scale)):
            log_pn = -0.5 * (t - mu) ** 2 / GS_P**2 - 0.5 * math.log(2 * math.pi * GS_P**2)
            log_q = -0.5 * (t - m) ** 2 / s**2 - 0.5 * math.log(2 * math.pi * s**2)
            total += math.log(np.trapezoid(np.exp(alpha * log_pn + (1 - alpha) * log_q), t))
        with jax.enable_x64(True):
            assert abs(float(_log_i(jnp.asarray(loc), jnp.asarray(log_scale), alpha)) - total) < 1e-8


def _gauss_ais(alpha):
    return build_ais(_gauss_log_p, make_kernel("hmc", n_leapfrog=3), n_intermediate=4, alpha=alpha, step_size=0.4)


@pytest.mark.parametrize("alpha", [0.5, 2.0, 3.0])
def test_fab_gradient_without_buffer_matches_the_alpha_divergence_gradient(alpha):
    """grad of fab_no_buffer_loss on an AIS batch (targeting g = p^alpha q^(1-alpha), eq. 8) estimates
    -E_g[grad log q] = alpha grad D_alpha / I, identity (G) above.

    R = 30 independent AIS batches of n = 2000 give 30 gradient estimates; their mean agrees with (G) within 4 s.e.
    (s.e. = sd / sqrt(R) per component; a t with 29 degrees of freedom exceeds 4 with probability 4e-4, so any of
    the 12 comparisons, 4 components x 3 alphas, fails with probability < 0.5 %). The self-normalised estimate is
    biased by O(1 / n): in 900 batches of n = 1000 (30 groups of 30) the mean z of a group was at most 0.4 in size
    (alpha = 3), and bias / s.e. scales as sqrt(R / n), so < 0.3 at n = 2000.
    The test can fail: (G) is > 20 s.e. away from the forward-KL gradient (AIS targeting p instead of g) in some
    component. Alpha = 3 needs 3 / s_p^2 - 2 / s_q^2 > 0 for g to be normalisable: 4.7 - 3.0 > 0 here."""
    n_batches, n = 30, 2000
    flow = _gauss_flow(*THETA)
    ais = _gauss_ais(alpha)

    def one(key):
        res, _ = ais.run(key, ais.init_state(), flow.sample_and_log_prob, flow.log_prob, n)
        g = eqx.filter_grad(lambda f: fab_no_buffer_loss(f, res.x, res.log_w, _log_q)[0])(flow)
        return _flat_grad(g), jnp.sum(~jnp.isfinite(res.log_w))

    grads, n_bad = jax.jit(jax.vmap(one))(jax.random.split(jax.random.key(20), n_batches))
    assert int(n_bad.sum()) == 0
    grads = np.asarray(grads, np.float64)
    mean, se = grads.mean(0), grads.std(0, ddof=1) / math.sqrt(n_batches)
    expected = _analytic_grad(alpha, THETA)
    assert np.all(np.abs(mean - expected) < 4 * se), ((mean - expected) / se, mean, expected)
    assert np.max(np.abs(_forward_kl_grad(THETA) - expected) / se) > 20


@pytest.mark.parametrize("stale", [False, True], ids=["current_theta", "stale_buffer"])
def test_fab_buffer_gradient_matches_the_alpha_divergence_gradient(stale):
    """The gradient of fab_buffer_loss on minibatches drawn from the prioritised buffer (Algorithm 1), alpha = 2.

    The buffer holds N = 8192 AIS samples (8 AIS passes of 1024 at theta_old = THETA) with weights w_i w.r.t.
    g_old = p^alpha q_old^(1-alpha). A minibatch of m drawn with P(i) = W_i = w_i / sum w and the loss's correction
    c_i = (q_theta / q_old)(x_i)^(1-alpha) has expected gradient

        B = -sum_i W_i c_i grad log q_theta(x_i)         (the buffer's exact weighted mean, from all its entries),

    and since g_old c = p^alpha q_theta^(1-alpha), B estimates alpha grad D_alpha(theta) / I(theta_old), which is
    (G) when theta = theta_old (current_theta: c = 1). stale_buffer evaluates at theta = theta_old + (0.1, -0.1,
    0.1, 0.05): both scales grow, so c = q_old / q_theta is bounded (1.27 at most in the buffer) and the clip c_max = 10
    never binds (asserted), so the identity is exact.

    Two comparisons, each within 4 s.e. per component:
    1. B against the analytic value, s.e. of the self-normalised estimate (delta method over the N entries,
       which are independent AIS samples);
    2. the mean gradient over 2000 minibatch draws (m = 16) against B, s.e. = sd / sqrt(2000) over the draws.
       Gumbel top-k draws without replacement, so the inclusion probabilities are only approximately m W_i; that is
       why m is much smaller than N (m / N = 1 / 512). Measured with 200000 draws, the resulting bias is < 1.5 s.e. of
       the 200000-draw mean, i.e. < 0.15 s.e. of the 2000-draw mean used here (at m = 32 it was 5 s.e. of the
       200000-draw mean, at m = 256, 25 s.e.)."""
    alpha, clip, n_buf, n_ais, m, n_draws = 2.0, 10.0, 8192, 1024, 16, 2000
    flow_old = _gauss_flow(*THETA)
    theta = (THETA[0] + [0.1, -0.1], THETA[1] + [0.1, 0.05]) if stale else THETA
    flow = _gauss_flow(*theta)
    ais = _gauss_ais(alpha)
    buffer = build_prioritised_buffer(2, n_buf, n_ais)

    @jax.jit
    def fill(key):
        def body(state, k):
            res, _ = ais.run(k, ais.init_state(), flow_old.sample_and_log_prob, flow_old.log_prob, n_ais)
            return buffer.add(state, res.x, res.log_w, res.log_q), None

        return jax.lax.scan(body, buffer.init(jnp.float32), jax.random.split(key, n_buf // n_ais))[0]

    state = fill(jax.random.key(30))
    assert int(state.length) == n_buf and bool(jnp.all(jnp.isfinite(state.log_w)))
    neg_grad_log_q = jax.vmap(lambda x: _flat_grad(eqx.filter_grad(lambda f: -f.log_prob(x[None])[0])(flow)))
    f = neg_grad_log_q(state.x)
    c = jnp.exp((1 - alpha) * (flow.log_prob(state.x) - state.log_q_old))
    assert float(c.max()) < clip
    if not stale:
        np.testing.assert_allclose(c, 1.0, atol=1e-4)
    exact, se_exact = (np.asarray(v, np.float64) for v in self_normalised_expectation(state.log_w, c[:, None] * f))
    expected = _analytic_grad(alpha, theta, THETA)
    assert np.all(np.abs(exact - expected) < 4 * se_exact), ((exact - expected) / se_exact, exact, expected)

    @jax.jit
    def minibatch_grads(key):
        def one(k):
            batch = buffer.sample(k, state, m)
            g = eqx.filter_grad(lambda fl: fab_buffer_loss(fl, batch.x, batch.log_q_old, batch.valid, alpha, clip,
                                                           _log_q)[0])(flow)
            return _flat_grad(g), jnp.all(batch.valid)

        return jax.vmap(one)(jax.random.split(key, n_draws))

    grads, valid = minibatch_grads(jax.random.key(31))
    assert bool(jnp.all(valid))
    grads = np.asarray(grads, np.float64)
    mean, se = grads.mean(0), grads.std(0, ddof=1) / math.sqrt(n_draws)
    assert np.all(np.abs(mean - exact) < 4 * se), ((mean - exact) / se, mean, exact)


# Any Gaussian has forward KL >= log(17 / 4) = 1.447 nats to gmm4 (4 equal unit Gaussians at (+-4, +-4)): the best
# one matches the mixture's moments, N(0, 17 I), with KL = E_p[log p] + log(2 pi e) + log 17 (d = 2), and E_p[log p] =
# -H(p) >= -(log 4 + log(2 pi e)) since a mixture's entropy is at most log K plus its components' entropy. The flows
# below start as N(0, I) (RealNVP starts at the identity): KL = 14.5 nats.
KL_BEST_GAUSSIAN_GMM4 = math.log(17 / 4)


def _gmm_config(method: dict, steps: int, lr: float = 1e-3):
    return config_from_dict({
        "name": method["name"],
        "target": {"name": "gmm4"},
        "flow": {"type": "realnvp", "n_layers": 6, "hidden": 32, "depth": 2},
        "method": method,
        "ais": {"kernel": "metropolis", "n_intermediate": 2, "step_size": 1.0},
        "train": {"steps": steps, "batch_size": 128, "lr": lr, "warmup_steps": 20, "eval_every": steps,
                  "eval_samples": 2000, "checkpoint_every": steps},
    })


def _train_and_evaluate(tmp_path, cfg, name):
    """The user's path: train into a run directory, load it back, evaluate."""
    out = tmp_path / name
    bf.fit(None, cfg, out=out, progress=False)
    run = bf.load(out)
    return run.evaluate(jax.random.key(11), n=4000, check=False), run.experiment


_log_prob = eqx.filter_jit(lambda model, x: model.log_prob(x))


def _forward_kl_terms(exp, n=4000):
    """log p(x) - log Z - log q(x) on n exact target samples (the same samples for every model: key 12); their mean
    estimates KL(p||q) with s.e. sd / sqrt(n), and differences between models are paired."""
    target = exp.target
    x = target.sample(jax.random.key(12), n)
    return np.asarray(target.log_prob(x) - target.log_z - _log_prob(exp.model, x), np.float64)


def _mean_se(v):
    return v.mean(), v.std(ddof=1) / math.sqrt(v.size)


def _mode_masses(exp, key, n=4000):
    """Fraction of n flow samples nearest each mixture component and within 3 of its std (the modes_covered rule);
    each is a binomial proportion with s.e. sqrt(f (1 - f) / n)."""
    x = np.asarray(exp.model.sample(key, n), np.float64)
    d = np.sqrt(((x[:, None, :] - np.asarray(exp.target.means)[None]) ** 2).sum(-1)) / np.asarray(exp.target.stds)
    nearest = d.argmin(1)
    close = d[np.arange(n), nearest] <= 3.0
    f = np.bincount(nearest[close], minlength=d.shape[1]) / n
    return f, np.sqrt(f * (1 - f) / n)


@pytest.mark.slow
def test_fab_with_buffer_finds_all_modes_of_a_small_mixture_and_beats_reverse_kl(tmp_path):
    """FAB with the buffer covers all 4 modes of gmm4 (equal weights 1/4); reverse KL, with a larger budget of flow
    evaluations, is mode-seeking: on the mode it weights least, FAB puts more mass than it by more than 4 s.e. of
    the difference (two independent binomial proportions; one-sided p = 3e-5). The mode is chosen on one set of
    flow samples and the masses estimated on another, so the choice biases nothing. Measured: reverse KL's masses
    0.04, 0.25, 0.23, 0.40; FAB's 0.20 .. 0.22 (the rest lies between modes).

    The forward KL is not the comparison: reverse KL's flow has log q < -1e4 at a few target samples, so its
    estimate (70 nats, s.e. 25) is dominated by a handful of terms and its s.e. is not trustworthy. FAB's forward
    KL (terms of sd 0.5) is below 0.5 nats by more than 4 s.e., a performance bound (measured 0.31, s.e. 0.008;
    the best Gaussian has 1.447), and FAB's importance-sampling log Z is within 4 s.e. (delta method) of the truth."""
    fab, fab_exp = _train_and_evaluate(tmp_path, _gmm_config(
        {"name": "fab", "buffer": True, "min_buffer_length": 512, "buffer_size": 4096}, steps=600), "fab")
    rkl, rkl_exp = _train_and_evaluate(tmp_path, _gmm_config({"name": "reverse_kl"}, steps=1500), "rkl")
    assert fab["modes_covered"] == fab["n_modes"] == 4
    k = int(np.argmin(_mode_masses(rkl_exp, jax.random.key(13))[0]))
    (f_fab, se_fab), (f_rkl, se_rkl) = (_mode_masses(e, jax.random.key(14)) for e in (fab_exp, rkl_exp))
    assert f_fab[k] - f_rkl[k] > 4 * math.hypot(se_fab[k], se_rkl[k]), (k, f_fab, f_rkl)
    kl_fab, se_kl = _mean_se(_forward_kl_terms(fab_exp))
    assert kl_fab + 4 * se_kl < 0.5, (kl_fab, se_kl)
    assert abs(fab["log_z_error"]) < 4 * fab["log_z_stderr"], (fab["log_z_error"], fab["log_z_stderr"])


def test_fab_without_buffer_trains_on_a_small_mixture(tmp_path):
    """FAB without the buffer (eq. 8 on each AIS batch, no replay) trains a flow through the user's path (config,
    bf.fit, bf.load, evaluate): from N(0, I) (forward KL 14.5 nats) to a flow that beats every Gaussian.

    - the trained forward KL plus 4 s.e. is below log(17 / 4) = 1.447 nats, the best any Gaussian can do (above;
      measured 0.60 .. 0.74 over 6 training seeds, s.e. 0.011);
    - the fall in forward KL exceeds 4 s.e. of the paired difference (one-sided p = 3e-5);
    - the trained flow covers all 4 modes, and its importance-sampling log Z is within 4 s.e. (delta method) of the
      truth."""
    cfg = _gmm_config({"name": "fab", "buffer": False}, steps=600, lr=3e-3)
    v_init = _forward_kl_terms(build_experiment(cfg))
    metrics, exp = _train_and_evaluate(tmp_path, cfg, "fab_no_buffer")
    v_final = _forward_kl_terms(exp)
    kl, se = _mean_se(v_final)
    fall, se_fall = _mean_se(v_init - v_final)
    assert kl + 4 * se < KL_BEST_GAUSSIAN_GMM4, (kl, se)
    assert fall > 4 * se_fall, (fall, se_fall)
    assert metrics["modes_covered"] == metrics["n_modes"] == 4
    assert abs(metrics["log_z_error"]) < 4 * metrics["log_z_stderr"], (metrics["log_z_error"], metrics["log_z_stderr"])


def test_no_buffer_loss_gradient_stays_finite_when_points_are_invalid():
    """Masked points must not reach the gradient: a NaN position with weight zero, and a batch where every
    weight is -inf (loss 0, gradient 0), both give finite gradients (``where`` alone would pass the NaN on)."""
    from boltzflow.flows.base import Flow
    from boltzflow.flows.distributions import StandardBase

    flow = Flow(StandardBase(2, learnable=True), ())
    x = jax.random.normal(jax.random.key(0), (4, 2))
    grad = lambda x, log_w: eqx.filter_grad(lambda f: fab_no_buffer_loss(f, x, log_w, _log_q)[0])(flow)
    for g in (grad(x.at[0].set(jnp.nan), jnp.zeros(4).at[0].set(-jnp.inf)), grad(x, jnp.full(4, -jnp.inf))):
        leaves = jax.tree_util.tree_leaves(g)
        assert leaves and all(bool(jnp.all(jnp.isfinite(a))) for a in leaves)
    zero = grad(x, jnp.full(4, -jnp.inf))
    assert all(float(jnp.max(jnp.abs(a))) == 0.0 for a in jax.tree_util.tree_leaves(zero))
    # and one invalid point does not change the gradient of the others
    ref = grad(x[1:], jnp.zeros(3))
    got = grad(x.at[0].set(jnp.nan), jnp.zeros(4).at[0].set(-jnp.inf))
    for a, b in zip(jax.tree_util.tree_leaves(ref), jax.tree_util.tree_leaves(got)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
