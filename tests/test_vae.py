"""The VAE of SNF paper sec. 5: its posteriors reuse the SNF layers and blocks, its log-likelihood estimate is
right on a model whose likelihood is known exactly, its bound lies below, and `boltzflow train` runs it."""

import json
import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from boltzflow.cli import main
from boltzflow.config import config_from_dict
from boltzflow.data import Dataset, DataSettings, load_dataset
from boltzflow.errors import BoltzflowError
from boltzflow.experiment import build_experiment, build_method
from boltzflow.flows.base import Flow
from boltzflow.settings import Tagged, parse, parse_tagged
from boltzflow.snf.block import StochasticBlock
from boltzflow.snf.builder import BlockSettings, SNFSettings, make_snf
from boltzflow.train.state import initial_state, make_optimizer
from boltzflow.vae import VAE, VAESettings, log_likelihood, make_vae, path_bound, posterior_paths, vae_evaluation
from boltzflow.vae.model import Joint, Prior, ShiftScale

D, LATENT, NOISE = 3, 2, 0.5
RNG = np.random.default_rng(3)
W = RNG.standard_normal((D, LATENT)).astype(np.float32)
B = RNG.standard_normal(D).astype(np.float32)


def _linear(n_in, n_out, weight, bias):
    mlp = eqx.nn.MLP(n_in, n_out, 4, 0, key=jax.random.key(0))
    return eqx.tree_at(lambda m: (m.layers[0].weight, m.layers[0].bias), mlp,
                       (jnp.asarray(weight, jnp.float32), jnp.asarray(bias, jnp.float32)))


def linear_gaussian_vae(layers=()) -> VAE:
    """p(z) = N(0, I), p(x | z) = N(W z + b, s^2 I), so p(x) = N(b, W W^T + s^2 I); the encoder is the exact
    posterior's mean shifted by 0.3 with the marginal standard deviations widened by 1.4 (q != p(z | x))."""
    cov = np.linalg.inv(np.eye(LATENT) + W.T @ W / NOISE**2)
    a = cov @ W.T / NOISE**2
    log_sigma = 0.5 * np.log(np.diag(cov)) + math.log(1.4)
    encoder = _linear(D, 2 * LATENT, np.concatenate([a, np.zeros((LATENT, D))]),
                      np.concatenate([-a @ B + 0.3, log_sigma]))
    return VAE(encoder, _linear(LATENT, D, W, B), tuple(layers), LATENT, "gaussian", NOISE)


def exact_log_px(x):
    cov = W @ W.T + NOISE**2 * np.eye(D)
    r = np.asarray(x, np.float64) - B
    return -0.5 * (np.einsum("ni,ij,nj->n", r, np.linalg.inv(cov), r) + np.linalg.slogdet(cov)[1]
                   + D * math.log(2 * math.pi))


def _ula_layers():
    s = SNFSettings(None, BlockSettings(kernel="ula", n_steps=4, step_size=0.1, n_blocks=2))
    return make_snf(s, jax.random.key(1), Prior(LATENT)).layers


def _data(n, seed=0):
    rng = np.random.default_rng(seed)
    return jnp.asarray(rng.standard_normal((n, LATENT)) @ W.T + B + NOISE * rng.standard_normal((n, D)),
                       jnp.float32)


@pytest.mark.parametrize("posterior", ["gaussian", "ula"])
def test_nll_estimator_recovers_the_exact_likelihood(posterior):
    """log p^(x) within 3 standard errors of the exact log p(x) on each of 4 points, for the encoder's Gaussian
    alone and for an SNF of two Langevin blocks (its path weights as importance weights)."""
    model = linear_gaussian_vae(_ula_layers() if posterior == "ula" else ())
    x = _data(4)
    est, se = jax.jit(lambda k: log_likelihood(model, x, k, 3000))(jax.random.key(2))
    est, se, exact = np.asarray(est), np.asarray(se), exact_log_px(x)
    assert np.all(se > 0) and np.all(se < 0.05), se
    assert np.all(np.abs(est - exact) < 3 * se), (est - exact) / se
    # the encoder is off, so the bound is strictly below: J_KL - (-log p) = KL(q || p(z | x)) > 0 by far more than
    # its own standard error
    bound = np.asarray(jax.jit(lambda k: path_bound(model, x, k, 1000))(jax.random.key(3)))
    assert np.all(exact - bound > 0.05)


def test_bound_is_below_the_estimated_log_likelihood_on_every_test_batch():
    full = load_dataset(DataSettings("digits"))
    data = Dataset("digits", full.train[:60], full.test[:60], full.shape)  # 3 batches of 24, the last filled up
    cfg = config_from_dict({"target": "digits", "flow": {"type": "realnvp", "n_layers": 2, "hidden": 16},
                            "method": {"name": "vae", "latent": 4, "hidden": 32, "depth": 1, "nll_samples": 64}})
    model = build_experiment(cfg).model
    m = vae_evaluation(model, data, jax.random.key(0), k=64, k_bound=8)
    assert m["bound_below_nll_batches"] == 1.0
    assert m["test_jkl"] > m["test_nll"] > 0 and m["n_test"] == 60 and m["test_nll_stderr"] > 0


def test_posterior_is_the_shared_snf_behind_the_encoders_gaussian():
    """The posterior of x: N(0, I) noise, the per-image affine map from the encoder, then the shared layers with
    every block's target replaced by log p(x, .) and its parameters kept."""
    layers = _ula_layers()
    model = linear_gaussian_vae(layers)
    x = _data(5)
    q, target = model.posterior(x)
    assert isinstance(q, Flow) and isinstance(q.layers[0], ShiftScale) and isinstance(target, Joint)
    mu, log_sigma = model.encode(x)
    np.testing.assert_allclose(q.layers[0].loc, mu)
    for old, new in zip(layers, q.layers[1:]):
        assert isinstance(new, StochasticBlock) and new.target is target and old.target is not target
        assert float(new.lam) == float(old.lam) and float(new.step_size) == float(old.step_size)
    np.testing.assert_allclose(target.log_prob(jnp.zeros((5, LATENT))), model.log_joint(x, jnp.zeros((5, LATENT))))
    # the path weight is eq. 11 with the posterior as target: for the Gaussian alone, log p(x, z) - log q(z | x)
    gauss = linear_gaussian_vae()
    z, log_w, _ = posterior_paths(gauss, x, jax.random.key(0), 3)
    mu, log_sigma = gauss.encode(x)
    log_q = jnp.sum(-0.5 * ((z - mu[:, None]) / jnp.exp(log_sigma[:, None]))**2 - log_sigma[:, None]
                    - 0.5 * math.log(2 * math.pi), -1)
    log_joint = gauss.log_joint(jnp.repeat(x, 3, 0), z.reshape(-1, LATENT)).reshape(5, 3)
    np.testing.assert_allclose(log_w, log_joint - log_q, rtol=1e-5, atol=1e-4)


def test_shift_scale_inverts():
    layer = ShiftScale(jnp.asarray([[1.0, -2.0]]), jnp.asarray([[0.5, -1.0]]))
    y, ds = layer.forward(jnp.asarray([[0.3, 0.7]]))
    x, ds_inv = layer.inverse(y)
    np.testing.assert_allclose(x, [[0.3, 0.7]], rtol=1e-6)
    np.testing.assert_allclose(ds, [-0.5]) and np.testing.assert_allclose(ds_inv, [0.5])


SNF_FLOW = {"type": "snf", "flow": {"type": "realnvp", "n_layers": 2, "hidden": 16, "lu": False},
            "blocks": {"kernel": "ula", "n_steps": 2, "step_size": 0.05, "learn_step_size": True}}


def test_training_steps_lower_j_kl_and_reach_every_part():
    """A few steps of method vae with an SNF posterior: gradients reach the encoder, the decoder, the couplings and
    the blocks' step size, and J_KL goes down."""
    cfg = config_from_dict({"target": {"dataset": "digits", "n_train": 256}, "flow": SNF_FLOW,
                            "method": {"name": "vae", "latent": 4, "hidden": 32, "depth": 1},
                            "train": {"batch_size": 64, "lr": 3e-3, "warmup_steps": 0}})
    exp = build_experiment(cfg)
    optimizer = make_optimizer(cfg.train)
    method = build_method(exp, optimizer)
    state = initial_state(exp.model, optimizer, method, jax.random.key(0), None)
    step = eqx.filter_jit(method.step)
    model, opt_state, ms, losses = state.model, state.opt_state, state.method_state, []
    for i in range(25):
        new, opt_state, ms, metrics = step(model, opt_state, ms, jax.random.key(i))
        losses.append(float(metrics["loss"]))
        if i == 0:
            moved = lambda f: not np.allclose(f(model), f(new))  # noqa: E731
            assert moved(lambda m: m.encoder.layers[0].weight) and moved(lambda m: m.decoder.layers[-1].bias)
            assert moved(lambda m: m.layers[0].conditioner.layers[-1].weight)
            assert moved(lambda m: m.layers[-1].log_step)
        model = new
    assert np.isfinite(losses).all() and np.mean(losses[-5:]) < np.mean(losses[:5]) - 1.0, losses
    assert method.cost(model).step["target_evals"] == 64 * (1 + 2 * 2)  # log p(x, z_T), and 2 blocks of 2 steps


def test_presets_for_the_four_posteriors_at_both_sizes():
    from boltzflow.config import load_config

    for kind in ("gaussian", "rnvp", "mcmc", "snf"):
        paper, cpu = load_config(f"vae_{kind}"), load_config(f"vae_{kind}_cpu")
        assert paper.method.settings.latent == 50 and cpu.method.settings.latent < 50
        assert paper.flow == cpu.flow and paper.target == cpu.target == DataSettings("digits")


@pytest.mark.parametrize("raw, match", [
    ({"target": "gmm40", "method": "vae"}, "unknown dataset 'gmm40'"),
    ({"target": {"name": "gmm40"}, "method": "vae"}, "unknown option"),
    ({"target": {"dataset": "digits"}, "method": "reverse_kl"}, "is a data set, for method vae"),
    ({"target": "digits", "method": {"name": "vae", "latent": 0}}, "latent must be a positive integer"),
    ({"target": "digits", "method": {"name": "vae", "nll_samples": 1}}, "nll_samples must be >= 2"),
])
def test_config_mistakes_are_one_line_errors(raw, match):
    with pytest.raises(BoltzflowError, match=match) as e:
        config_from_dict(raw)
    assert "\n" not in str(e.value)


def test_gaussian_posterior_has_no_shared_layers_and_an_snf_flow_needs_some():
    with pytest.raises(BoltzflowError, match="SNF's flow needs layers"):
        make_vae(VAESettings(latent=4), parse_tagged({"type": "snf", "flow": {"type": "gaussian"}},
                                                      {"snf": SNFSettings}, "type", "flow"), jax.random.key(0), 8)
    assert make_vae(VAESettings(latent=4), Tagged("gaussian", parse(
        __import__("boltzflow.flows.builders", fromlist=["FLOW_SETTINGS"]).FLOW_SETTINGS["gaussian"], {}, "f")),
        jax.random.key(0), 8).layers == ()


def test_train_command_writes_metrics_and_pictures(tmp_path, capsys):
    cfg = tmp_path / "vae.yaml"
    cfg.write_text("target: {dataset: digits, n_train: 200}\nflow: {type: gaussian}\n"
                   "method: {name: vae, latent: 2, hidden: 16, depth: 1, nll_samples: 32}\n"
                   "train: {steps: 40, batch_size: 32, eval_every: 20, checkpoint_every: 20}\n")
    out = tmp_path / "run"
    assert main(["train", str(cfg), "--out", str(out), "--no-progress"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["eval"]["test_jkl"] > report["eval"]["test_nll"] > 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "flow_ess" in r] == [20, 40] and all(0 < r.get("flow_ess", 1) <= 1
                                                                             for r in rows)
    for picture in ("reconstructions.png", "samples.png", "training.png"):
        assert (out / picture).stat().st_size > 1000
    capsys.readouterr()
    assert main(["sample", str(out), "--out", str(tmp_path / "s.npz")]) == 2
    assert "is a VAE, not a sampler" in capsys.readouterr().err
    assert main(["evaluate", str(out), "--ais"]) == 2
    assert "evaluate --ais: " in capsys.readouterr().err


def test_gaussian_flow_is_a_learnable_diagonal_normal():
    from boltzflow.flows.builders import make_flow

    flow = make_flow({"type": "gaussian"}, jax.random.key(0), 3)
    assert flow.layers == () and not flow.stochastic
    flow = eqx.tree_at(lambda f: (f.base.loc, f.base.log_scale), flow, (jnp.asarray([1.0, 0.0, -1.0]),
                                                                        jnp.asarray([0.0, 0.5, -0.5])))
    x, log_q = flow.sample_and_log_prob(jax.random.key(1), 2000)
    np.testing.assert_allclose(np.mean(x, 0), [1.0, 0.0, -1.0], atol=4 * np.exp(0.5) / np.sqrt(2000))
    expected = jax.scipy.stats.norm.logpdf(x, flow.base.loc, jnp.exp(flow.base.log_scale)).sum(-1)
    np.testing.assert_allclose(log_q, expected, rtol=1e-5, atol=1e-5)
