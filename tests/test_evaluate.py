"""Evaluation: metrics of a known flow, and no silent NaN in a report."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from boltzflow.config import config_from_dict
from boltzflow.evaluate import _flag_nonfinite, draw_pictures, evaluate
from boltzflow.experiment import build_experiment
from boltzflow.targets import Target


def test_nonfinite_metrics_are_named_not_silent():
    out = _flag_nonfinite({"ess": 0.5, "forward_kl": float("nan"), "log_z": float("inf"), "n": 3})
    assert out["forward_kl"] is None and out["log_z"] is None and out["ess"] == 0.5
    assert sorted(out["nonfinite_metrics"]) == ["forward_kl", "log_z"]


def test_identity_flow_on_a_standard_normal_user_target_is_exact():
    """q = p = N(0, I): ESS 1, log Z = log (2 pi)^(d/2) with zero error, forward KL 0. Every log weight is exactly
    log 2 pi, so nothing here is random: the tolerances are float32 round-off of log p - log q."""
    cfg = config_from_dict({"target": {"function": "user_targets:standard_normal"},
                            "flow": {"type": "realnvp", "n_layers": 2, "hidden": 8, "depth": 1}})
    exp = build_experiment(cfg)
    m = evaluate(exp, jax.random.key(0), n_samples=2000)
    assert abs(m["ess"] - 1.0) < 1e-5
    np.testing.assert_allclose(m["log_z"], np.log(2 * np.pi), atol=1e-4)
    assert m["log_z_stderr"] < 1e-4
    assert abs(m["forward_kl"]) < 1e-4 and "nonfinite_metrics" not in m


def test_mode_set_metrics_of_the_identity_flow_on_many_well():
    """Identity flow = N(0, I): log q at every Many Well mode point is known in closed form."""
    cfg = config_from_dict({"target": {"name": "many_well", "dim": 4},
                            "flow": {"type": "realnvp", "n_layers": 2, "hidden": 8, "depth": 1}})
    exp = build_experiment(cfg)
    m = evaluate(exp, jax.random.key(0), n_samples=1000)
    pts = np.asarray(exp.target.mode_points(), np.float64)
    log_q = -0.5 * (pts**2).sum(1) - 0.5 * pts.shape[1] * np.log(2 * np.pi)
    assert m["n_modes"] == 4 == len(pts)
    np.testing.assert_allclose(m["mean_log_q_modes"], log_q.mean(), rtol=1e-5)
    np.testing.assert_allclose(m["min_log_q_modes"], log_q.min(), rtol=1e-5)


class Origin(Target):
    """A new kind of target: N(0, I) in 2-D that reports log q at the origin and draws a text file."""

    name, dim = "origin", 2

    def _log_prob(self, x):
        return -0.5 * jnp.sum(x**2, axis=1)

    def metrics(self, s):
        return super().metrics(s) | {"log_q_origin": float(s.log_q(jnp.zeros((1, 2)))[0])}

    def draw(self, pictures):
        path = pictures.out_dir / "origin.txt"
        path.write_text(pictures.name)
        return [path]


def test_a_new_kind_of_target_adds_its_entry_and_its_picture(tmp_path):
    """Identity flow = N(0, I): log q(0) = -log 2 pi, after the importance-sampling metrics."""
    cfg = config_from_dict({"name": "origin", "target": {"name": "many_well", "dim": 2},
                            "flow": {"type": "realnvp", "n_layers": 2, "hidden": 8, "depth": 1}})
    exp = dataclasses.replace(build_experiment(cfg), target=Origin())
    m = evaluate(exp, jax.random.key(0), n_samples=500)
    assert list(m) == ["n_samples", "ess", "log_z", "log_z_stderr", "n_nonfinite", "log_q_origin"]
    np.testing.assert_allclose(m["log_q_origin"], -np.log(2 * np.pi), rtol=1e-5)
    assert draw_pictures(exp, tmp_path, jax.random.key(0)) == [tmp_path / "origin.txt"]
    assert (tmp_path / "origin.txt").read_text() == "origin"


def test_equal_cost_baseline_reports_smc_beside_the_model(tmp_path):
    """evaluate(baseline=True) on Many Well 4-D: tempered SMC within the given target evaluations finds log Z within
    4 of its standard errors and every mode; the metrics that need q's density are left out of its entries; a
    second evaluation takes the exploration from the directory (same numbers)."""
    cfg = config_from_dict({"target": {"name": "many_well", "dim": 4},
                            "flow": {"type": "realnvp", "n_layers": 2, "hidden": 8, "depth": 1}})
    exp = build_experiment(cfg)
    m = evaluate(exp, jax.random.key(0), n_samples=1000, check_budget=400_000, check_dir=tmp_path, baseline=True)
    assert m["baseline_target_evals"] <= 400_000 * 1.05 and m["baseline_samples"] > 1000
    assert abs(m["baseline_log_z"] - m["log_z_true"]) < 4 * m["baseline_log_z_stderr"] + 1e-3
    assert m["baseline_modes_covered"] == 4 and 0 < m["baseline_ess"] <= 1
    assert "baseline_mean_log_q_modes" not in m and "mean_log_q_modes" in m
    again = evaluate(exp, jax.random.key(0), n_samples=1000, check_budget=400_000, check_dir=tmp_path,
                     baseline=True)
    assert again["baseline_log_z"] == m["baseline_log_z"]


def test_pooled_paths_reach_the_report_of_a_stochastic_model():
    """evaluate(paths=K) on an SNF (Gaussian target, exact samples): the report says K; the pooled weights give log Z
    within 3 s.e. of the truth; the forward KL (an upper bound through log q's lower bound) is no larger than with
    one path; a flow's report has no ``paths`` key; paths < 1 is a one-line error."""
    cfg = config_from_dict({"target": {"name": "many_well", "dim": 2},
                            "flow": {"type": "snf", "flow": {"type": "realnvp", "n_layers": 2, "hidden": 8},
                                     "blocks": {"kernel": "ula", "n_steps": 2, "step_size": 0.05}}})
    exp = build_experiment(cfg)
    one = evaluate(exp, jax.random.key(0), n_samples=20_000)
    eight = evaluate(exp, jax.random.key(0), n_samples=20_000, paths=8)
    assert one["paths"] == 1 and eight["paths"] == 8 and eight["log_q_is_lower_bound"]
    assert abs(eight["log_z"] - exp.target.log_z) < 3 * eight["log_z_stderr"] + 1e-4, eight
    assert eight["forward_kl"] <= one["forward_kl"] + 1e-3
    flow = build_experiment(config_from_dict({"target": {"name": "many_well", "dim": 2},
                                              "flow": {"type": "realnvp", "n_layers": 2, "hidden": 8}}))
    assert "paths" not in evaluate(flow, jax.random.key(0), n_samples=1000, paths=4)
    with np.testing.assert_raises_regex(Exception, "paths must be a positive integer"):
        evaluate(exp, jax.random.key(0), n_samples=100, paths=0)
