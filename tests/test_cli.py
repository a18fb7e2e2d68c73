"""The command line: user mistakes give one clear line and a non-zero exit; train -> evaluate -> resume -> sample
works."""

import json
import subprocess
import sys

import equinox as eqx
import jax
import numpy as np
import pytest

from boltzflow.cli import main


def _run(args, capsys):
    rc = main(args)
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


@pytest.mark.parametrize(
    "args, message",
    [
        (["train", "no_such_preset"], "unknown preset"),
        (["train", "quick_gmm", "--target", "no_such_target"], "unknown target"),
        (["train", "quick_gmm", "--target", "user_targets:nan_density"], "no finite value"),
        (["train", "quick_gmm", "--target", "user_targets:wrong_shape"], "shape"),
        (["evaluate", "/nonexistent/run"], "not a run directory"),
    ],
)
def test_user_mistakes_are_one_line_errors(args, message, capsys, tmp_path):
    rc, out, err = _run(args + (["--out", str(tmp_path / "r")] if args[0] == "train" else []), capsys)
    assert rc == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("boltzflow: error:"), err
    assert message in lines[0].lower()


def test_malformed_config_file(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("target: gmm40\ntrain: {steps: [1, 2\n")
    rc, _, err = _run(["train", str(bad), "--out", str(tmp_path / "r")], capsys)
    assert rc == 2 and "malformed yaml" in err.lower()
    bad.write_text("target: gmm40\ntrain: {stepz: 3}\n")
    rc, _, err = _run(["train", str(bad), "--out", str(tmp_path / "r")], capsys)
    assert rc == 2 and "stepz" in err


def test_console_script_exit_code_without_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "boltzflow.cli", "train", "nope"], capture_output=True, text=True)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr


def test_train_evaluate_and_resume_on_a_user_target(tmp_path, capsys):
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(
        "target: {function: 'user_targets:gaussian'}\n"
        "flow: {type: realnvp, n_layers: 2, hidden: 16, depth: 1}\n"
        "method: {name: reverse_kl}\n"
        "train: {steps: 40, batch_size: 64, lr: 1.0e-2, warmup_steps: 5, eval_every: 20, eval_samples: 256,"
        " checkpoint_every: 20, ema_decay: 0.9}\n"
        "explore: {n: 1024}\n"  # the missing-mass check of every command-line evaluation, small
    )
    out = tmp_path / "run"
    rc, stdout, err = _run(["train", str(cfg), "--out", str(out), "--no-progress", "--eval-samples", "512"], capsys)
    assert rc == 0, err
    for name in ("config.yaml", "metrics.jsonl", "checkpoint.eqx", "report.json", "samples.png", "training.png"):
        assert (out / name).exists(), name
    report = json.loads((out / "report.json").read_text())
    assert report["eval"]["n_samples"] == 512 and report["training"]["steps"] == 40
    assert "log_z_true" not in report["eval"]  # the user's target does not know its log Z
    # the missing-mass check ran (a 2-D target): the exploration agrees with a flow that covers the Gaussian
    assert report["eval"]["mass_missing"] is False and abs(report["eval"]["log_z_difference_sigma"]) < 4
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["step"] == 40
    # resume: more steps continue from the checkpoint rather than starting again
    rc, _, err = _run(["train", str(cfg), "--out", str(out), "--no-progress", "--steps", "60",
                       "--eval-samples", "256"], capsys)
    assert rc == 0, err
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows].count(1) == 1 and rows[-1]["step"] == 60
    rc, stdout, _ = _run(["evaluate", str(out), "--samples", "512"], capsys)
    assert rc == 0 and "ess" in stdout
    assert json.loads((out / "eval.json").read_text())["n_samples"] == 512
    # with train.ema_decay the run's model is the parameter average, not the last iterate
    from boltzflow.experiment import load_run

    exp, state = load_run(out)
    params = lambda m: [np.asarray(a) for a in jax.tree_util.tree_leaves(eqx.filter(m, eqx.is_inexact_array))]
    assert all(np.array_equal(a, b) for a, b in zip(params(exp.model), params(state.averaged)))
    assert not all(np.array_equal(a, b) for a, b in zip(params(exp.model), params(state.model)))
    # `boltzflow sample`: x (n, dim) and log w = log p(x) - log q(x), recomputed here from the run's model
    # (float32 round-off: 1e-3 on log densities of order 10)
    rc, stdout, err = _run(["sample", str(out), "--n", "500", "--out", str(tmp_path / "s.npz")], capsys)
    assert rc == 0 and "500 samples" in stdout, err
    data = np.load(tmp_path / "s.npz")
    assert data["x"].shape == (500, exp.target.dim) and data["log_w"].shape == (500,)
    x = jax.numpy.asarray(data["x"])
    np.testing.assert_allclose(data["log_w"], exp.target.log_prob(x) - exp.model.log_prob(x), atol=1e-3)
    assert np.std(data["x"][:, 0]) > 0.1  # distinct samples, not one point repeated
    # drawn a chunk at a time: a longer draw starts with the shorter one, every chunk's samples distinct
    x1, lw1 = exp.weighted_samples(jax.random.key(3), 700, chunk=256)
    x2, lw2 = exp.weighted_samples(jax.random.key(3), 300, chunk=256)
    assert x1.shape == (700, exp.target.dim) and lw1.shape == (700,) and isinstance(x1, np.ndarray)
    np.testing.assert_array_equal(x1[:300], x2)
    assert len(np.unique(x1[:, 0])) == 700
    np.testing.assert_allclose(lw1, exp.target.log_prob(x1) - exp.model.log_prob(x1), atol=1e-3)


# presets whose training step is another preset's at a larger size: built, not traced again (tracing aldp_fab's
# AIS through the force field takes ~20 s and checks nothing aldp_fab_cpu's does not)
SAME_STEP_AS = {"aldp_fab": "aldp_fab_cpu", "aldp_fab_nobuffer": "aldp_fab_nobuffer_cpu",
                "aldp_reverse_kl": "aldp_reverse_kl_cpu", "aldp_ml": "aldp_ml_cpu", "aldp_snf": "aldp_snf_cpu"}


#: left to the slow run: the presets whose build takes longest here (20-60 s: an SNF on a molecule, FAB on a 156-atom
#: host and guest), and those whose flow and method a cheaper preset in CI builds the same way on a smaller target of
#: the same kind or size (ace_ala3_nme_fab_cpu and aldp_fab as aldp_fab_cpu, many_well_32 as quick_many_well, gmm40 as
#: quick_gmm, lj13_ml_cpu as dw4_ml; the E-ACF presets dw4_fab, lj13_fab_cpu and the GPU-sized lj13_fab and lj55_fab
#: (about 2 min each), whose flow in FAB's space tests/test_equivariant_flow.py builds and runs): 5-19 s each
SLOW_TO_BUILD = {"snf_aldp_vacuum", "aldp_snf_cpu", "hostguest_fab_cpu", "lj13_fab_cpu", "lj13_ml_cpu", "dw4_fab",
                 "lj13_fab", "lj55_fab", "ace_ala3_nme_fab_cpu", "aldp_fab", "many_well_32", "gmm40"}


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW_TO_BUILD else n
                                  for n in __import__("boltzflow.config", fromlist=["presets"]).presets()])
def test_every_preset_builds_its_experiment_and_method(name, tmp_path):
    from boltzflow.config import config_from_dict, load_config
    from boltzflow.experiment import build_experiment, build_method
    from boltzflow.train.state import initial_state, make_optimizer

    cfg = load_config(name)
    if cfg.flow.name == "auto":  # its exploration is tested in test_autoflow; here the flow it resolves to
        cfg = config_from_dict({**cfg.to_dict(), "flow": {"type": "auto", "bounds": [-3.0, 3.0]}})
    exp = build_experiment(cfg)
    if getattr(cfg.method.settings, "data", False) is None and not exp.target.can_sample:
        # an ML preset on MD samples the user gives with --data: a stand-in file (only shapes are traced)
        np.save(tmp_path / "x.npy", np.ones((4, exp.target.dim), np.float32))
        d = cfg.to_dict()
        cfg = config_from_dict({**d, "method": {**d["method"], "data": str(tmp_path / "x.npy")}})
        exp = build_experiment(cfg)
    optimizer = make_optimizer(cfg.train)
    method = build_method(exp, optimizer)
    if name in SAME_STEP_AS:
        other = load_config(SAME_STEP_AS[name])
        assert (other.target, other.method.name, other.flow.name) == (cfg.target, cfg.method.name, cfg.flow.name)
        return
    # one training step traces (shapes only, nothing runs) and keeps the model's shapes and dtypes
    state = eqx.filter_eval_shape(lambda: initial_state(exp.model, optimizer, method, jax.random.key(0),
                                                        cfg.train.ema_decay))
    model, _, _, metrics = eqx.filter_eval_shape(method.step, state.model, state.opt_state, state.method_state,
                                                 jax.random.key(1))
    layout = lambda m: [(a.shape, a.dtype) for a in jax.tree_util.tree_leaves(eqx.filter(m, eqx.is_array))]
    assert layout(model) == layout(state.model) and metrics["loss"].shape == ()


def test_the_report_gives_the_checks_verdict_and_cost_and_warns_when_mass_may_be_missing_or_it_cannot_conclude():
    from boltzflow.cli import _table

    ok = {"ess": 0.99, "log_z": 0.0, "mass_missing": False, "unseen_mass": 0.0, "unseen_mass_stderr": 0.001,
          "log_z_difference": -0.5, "log_z_difference_sigma": -6.0,  # exploration low: no evidence of missing mass
          "explore_converged": True, "explore_target_evals": 1_234_567, "explore_budget": 2_050_560,
          "explore_seconds": 3.21, "explore_reused": 0}
    table = _table(ok, "t")
    assert "WARNING" not in table
    assert "missing-mass check: no mass of p the model misses" in table and "1.23e+06 target evaluations (budget " \
        "2.05e+06), 3.2 s" in table and "earlier evaluation" not in table
    assert "kept from an earlier evaluation of this run" in _table({**ok, "explore_reused": 1}, "t")
    bad = {**ok, "mass_missing": True, "unseen_mass": 0.03}
    assert _table(bad, "t").count("WARNING: mass may be missing") == 1 and "1.23e+06 target" in _table(bad, "t")
    low = {**ok, "log_z_difference": 0.03, "log_z_difference_sigma": 4.0}
    assert "WARNING: the exploration's log Z exceeds the model's" in _table(low, "t")
    short = _table({**ok, "explore_converged": False}, "t")
    assert "WARNING: the missing-mass check could not conclude" in short and "no mass of p" not in short
    assert "did not converge within its budget" in _table({**bad, "explore_converged": False}, "t")
    assert "WARNING" not in _table({"ess": 0.99, "log_z": 0.0}, "t")  # no check, no verdict
