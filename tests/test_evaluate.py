"""Evaluation: metrics of a known flow, and no silent NaN in a report."""

import jax
import numpy as np

from boltzflow.config import config_from_dict
from boltzflow.evaluate import _flag_nonfinite, evaluate
from boltzflow.experiment import build_experiment


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
