"""FAB in SNF path space: the noise-swap bijection, its density, unbiased path weights, and training."""

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import boltzflow as bf
from boltzflow.config import config_from_dict
from boltzflow.errors import BoltzflowError
from boltzflow.estimators import effective_sample_size, log_z_estimate
from boltzflow.experiment import build_experiment
from boltzflow.flows.paths import path_weights
from boltzflow.snf.paths import n_path_points, noise_to_path, path_log_p, path_log_q, sample_path
from boltzflow.targets.wells import DoubleWell
from test_snf import Gaussian, make_snf, within


def _perturbed_snf(target, n_steps=2, every=1, key=0):
    # no LU map: perturbed by 0.2 like the rest, it stretches the flow enough that ULA at step 0.3 diverges on 2 %
    spec = {"type": "snf", "flow": {"type": "realnvp", "n_layers": 2, "hidden": 8, "lu": False},
            "blocks": {"kernel": "ula", "n_steps": n_steps, "step_size": 0.3, "every": every}}
    snf = make_snf(spec, jax.random.key(key), target)
    params, static = eqx.partition(snf, eqx.is_inexact_array)
    leaves, tree = jax.tree_util.tree_flatten(params)
    keys = jax.random.split(jax.random.key(key + 1), len(leaves))
    leaves = [p + 0.2 * jax.random.normal(k, p.shape, p.dtype) if p.ndim else p for p, k in zip(leaves, keys)]
    return eqx.combine(jax.tree_util.tree_unflatten(tree, leaves), static)


def test_noise_to_path_density_is_the_change_of_variables():
    """log Q(u) = log q0(z) + sum log N(xi) - log|det du/d(z, xi)| (boltzflow.snf.paths), the determinant from
    autodiff."""
    target = DoubleWell()
    snf = _perturbed_snf(target)
    m, d = n_path_points(snf), target.dim
    assert m == 5  # two flow layers, each followed by a block of two moves
    noise = jax.random.normal(jax.random.key(3), (m * d,))

    def forward(flat):
        z, xis = flat[:d][None], flat[d:].reshape(m - 1, 1, d)
        u, log_q = noise_to_path(snf, z, xis)
        return u[0], log_q[0]

    @jax.jit  # one compilation (operation by operation, the Jacobian's batched trace compiled piece by piece)
    def densities(flat):
        u, log_q = forward(flat)
        _, logdet = jnp.linalg.slogdet(jax.jacfwd(lambda f: forward(f)[0])(flat))
        return log_q, logdet, path_log_q(snf, u[None])[0]

    log_q, logdet, log_q_back = densities(noise)
    expected = -0.5 * float(noise @ noise) - 0.5 * m * d * math.log(2 * math.pi) - float(logdet)
    np.testing.assert_allclose(float(log_q), expected, atol=2e-3)
    # and the inverse map recovers the same density
    np.testing.assert_allclose(float(log_q_back), expected, atol=2e-3)


def test_path_log_q_inverts_the_sampler():
    target = DoubleWell()
    snf = _perturbed_snf(target, n_steps=3, every=2)
    u, log_q = jax.jit(lambda k: sample_path(snf, k, 4096))(jax.random.key(0))
    assert u.shape == (4096, n_path_points(snf) * 2)
    back = eqx.filter_jit(path_log_q)(snf, u)
    ok = np.isfinite(back) & np.isfinite(log_q)  # a ULA path that runs off to infinity has no finite density
    assert ok.mean() > 0.99
    np.testing.assert_allclose(back[ok], log_q[ok], atol=1e-3, rtol=1e-5)
    with pytest.raises(BoltzflowError, match="shape"):
        path_log_q(snf, u[:, :4])


def test_path_weights_estimate_log_z():
    """E_Q[P / Q] = Z: logmeanexp(log P - log Q) on a Gaussian with known log Z, within 3 s.e."""
    target = Gaussian(mu=1.0, s=0.6, c=2.5)
    snf = _perturbed_snf(target)
    u, log_q = jax.jit(lambda k: sample_path(snf, k, 50_000))(jax.random.key(1))
    log_z, se = log_z_estimate(path_log_p(target, u) - log_q)
    assert float(se) < 0.05  # precise enough for the comparison to have power (and Jensen's se^2 / 2 negligible)
    within(log_z, se, target.log_z)


def _snf_fab_config(kernel="ula", steps=250):
    return config_from_dict({
        "target": "double_well",
        "flow": {"type": "snf", "flow": {"type": "realnvp", "n_layers": 2, "hidden": 32},
                 "blocks": {"kernel": kernel, "n_steps": 2, "step_size": 0.2, "every": 2}},
        "method": {"name": "fab", "buffer": True, "n_updates": 4, "min_buffer_length": 256, "buffer_size": 4096},
        "ais": {"kernel": "hmc", "n_intermediate": 2, "step_size": 0.05, "n_leapfrog": 3},
        "train": {"steps": steps, "batch_size": 128, "lr": 1e-3, "eval_every": steps, "eval_samples": 4096,
                  "checkpoint_every": steps},
    })


@pytest.mark.slow  # 23 s in CI; the path-space densities it trains on are tested exactly above
def test_fab_trains_an_snf_in_path_space(tmp_path):
    cfg = _snf_fab_config()
    untrained = build_experiment(cfg)
    _, log_w0, _ = jax.jit(lambda k: path_weights(untrained.model, untrained.target, k, 10_000))(jax.random.key(4))
    before = float(effective_sample_size(log_w0))
    bf.fit(None, cfg, out=tmp_path / "run", progress=False)
    ev = bf.load(tmp_path / "run").evaluate(jax.random.key(5), n=10_000, ais=True, check=False)  # adapted AIS
    # training must help: an effect-size requirement, not a comparison with a truth (0.09 -> 0.43 at these seeds)
    assert ev["ess"] > before + 0.1, (before, ev["ess"])
    # log Z^ within 3 of its standard errors (as `within`), plus its Jensen bias of about se^2 / 2 (estimators.py)
    se = ev["log_z_stderr"]
    assert abs(ev["log_z_error"]) < 3 * se + se**2 / 2, ev
    # AIS targeting p in path space (the evaluation FAB uses): its x-marginal is p, so log Z is unbiased too
    se = ev["ais_log_z_stderr"]
    assert abs(ev["ais_log_z_error"]) < 3 * se + se**2 / 2, ev


def test_fab_refuses_snfs_with_metropolised_blocks(tmp_path):
    with pytest.raises(BoltzflowError, match="method fab needs a model with a tractable density.*metropolis"):
        bf.fit(None, _snf_fab_config("metropolis", steps=2), out=tmp_path / "mh", progress=False)


def test_blocks_only_path_densities_are_proper():
    """Blocks-only ULA SNF with lambda = 1 on a target equal to its prior is not exact (ULA is biased), but
    Q_theta and P must still be proper densities: their ratio has finite ESS and the weights average to Z."""
    target = Gaussian(c=0.7)
    snf = make_snf({"type": "snf", "blocks": {"kernel": "ula", "n_blocks": 2, "n_steps": 2, "step_size": 0.2}},
                   jax.random.key(0), target)
    u, log_q = sample_path(snf, jax.random.key(2), 40_000)
    log_w = path_log_p(target, u) - log_q
    assert float(effective_sample_size(log_w)) > 0.9
    log_z, se = log_z_estimate(log_w)
    within(log_z, se, target.log_z)
