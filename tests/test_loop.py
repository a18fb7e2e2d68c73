"""The training loop: parameter average (train.ema_decay), and several steps per compiled call."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from boltzflow.errors import BoltzflowError
from boltzflow.train.state import TrainSettings, update_average


def test_update_average_is_the_warmed_up_exponential_moving_average():
    avg = {"w": jnp.zeros(3), "n": 4}  # non-array leaves pass through untouched
    model = {"w": jnp.ones(3), "n": 4}
    expected = np.zeros(3)
    for t in range(200):
        avg = update_average(avg, model, jnp.asarray(t, jnp.int32), 0.99)
        d = min(0.99, (1 + t) / (10 + t))
        expected = d * expected + (1 - d) * 1.0
        assert avg["n"] == 4
    np.testing.assert_allclose(np.asarray(avg["w"]), expected, rtol=1e-5)
    assert 0.0 < expected[0] < 1.0  # the decay is still visible after 200 steps: the test can tell it apart


@pytest.mark.parametrize("bad", [0.0, 1.0, -0.5, 2.0])
def test_ema_decay_outside_the_unit_interval_is_refused(bad):
    with pytest.raises(BoltzflowError, match="ema_decay"):
        TrainSettings(ema_decay=bad)


def test_steps_between_logged_ones_run_as_one_call_with_the_same_result(tmp_path):
    """Logged steps are step 1, multiples of log_every / eval_every / checkpoint_every and the last; running the
    steps in between as one compiled call gives the same parameters as logging (calling) every step."""
    import json

    import equinox as eqx
    import jax

    import boltzflow as bf
    from boltzflow.config import config_from_dict

    cfg = config_from_dict({
        "target": "double_well", "flow": {"type": "realnvp", "n_layers": 2, "hidden": 8, "depth": 1},
        "method": {"name": "reverse_kl"},
        "train": {"steps": 25, "batch_size": 32, "lr": 1e-2, "warmup_steps": 2, "eval_every": 7,
                  "eval_samples": 64, "checkpoint_every": 500, "ema_decay": 0.9}})
    bf.fit(None, cfg, out=tmp_path / "chunked", progress=False, log_every=10)
    bf.fit(None, cfg, out=tmp_path / "stepwise", progress=False, log_every=1)
    rows = [json.loads(line) for line in (tmp_path / "chunked" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 7, 10, 14, 20, 21, 25]
    def params(run):
        state = bf.load(run).state
        return [np.asarray(a) for m in (state.model, state.averaged)
                for a in jax.tree_util.tree_leaves(eqx.filter(m, eqx.is_inexact_array))]

    chunked, stepwise = params(tmp_path / "chunked"), params(tmp_path / "stepwise")
    assert all(np.allclose(a, b, rtol=1e-5, atol=1e-6) for a, b in zip(chunked, stepwise))
    half = len(chunked) // 2  # model, then average: they differ, so the comparison above sees trained values
    assert not all(np.array_equal(a, b) for a, b in zip(chunked[:half], chunked[half:]))


# ---------------------------------------------------------------------------------------------------------------------
# Resume a user can trust: kill -9 at any moment, run again, end where the uninterrupted run ends
# ---------------------------------------------------------------------------------------------------------------------
FAB_SMALL = """\
target: gmm4
flow: {type: realnvp, n_layers: 2, hidden: 16, depth: 1}
method: {name: fab, buffer: true, min_buffer_length: 256, buffer_size: 1024, n_updates: 2}
ais: {kernel: hmc, n_intermediate: 2, step_size: 0.3, n_leapfrog: 2}
train: {steps: 80, batch_size: 64, lr: 1.0e-3, warmup_steps: 5, eval_every: 40, eval_samples: 256,
        checkpoint_every: 10, ema_decay: 0.9}
"""

TRAIN_SCRIPT = "import sys, boltzflow as bf; bf.fit(None, bf.load_config(sys.argv[1]), out=sys.argv[2], progress=False)"


def _train_subprocess(cfg, out):
    import subprocess
    import sys

    return subprocess.Popen([sys.executable, "-c", TRAIN_SCRIPT, str(cfg), str(out)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)


def _leaves(state):
    import equinox as eqx
    import jax

    return [np.asarray(a) for a in jax.tree_util.tree_leaves(eqx.filter(state, eqx.is_array))]


def _rows(out):
    import json

    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_kill_9_then_rerun_ends_with_the_uninterrupted_parameters(tmp_path):
    """FAB with its buffer, AIS step-size adaptation, Adam and a parameter average: a training killed (SIGKILL)
    at a random moment after its second checkpoint and run again must end with exactly the state (every array:
    model, optimiser, buffer, step sizes, average, key) of a run that was never interrupted, and its
    metrics.jsonl must hold each logged step once, as the uninterrupted run's does."""
    import json
    import os
    import random
    import signal
    import time

    import boltzflow as bf

    cfg = tmp_path / "fab.yaml"
    cfg.write_text(FAB_SMALL)
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    proc = _train_subprocess(cfg, whole)
    assert proc.wait(timeout=600) == 0, proc.stderr.read()

    proc = _train_subprocess(cfg, killed)
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None:
        info = killed / "checkpoint.json"
        if info.exists() and json.loads(info.read_text())["step"] >= 20:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be killed: make it longer"
    time.sleep(random.Random(0).uniform(0.0, 0.3))
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    interrupted_at = json.loads((killed / "checkpoint.json").read_text())["step"]
    assert interrupted_at < 80
    proc = _train_subprocess(cfg, killed)
    assert proc.wait(timeout=600) == 0, proc.stderr.read()

    a, b = _leaves(bf.load(whole).state), _leaves(bf.load(killed).state)
    assert len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b))
    steps = [r["step"] for r in _rows(killed)]
    assert steps == [r["step"] for r in _rows(whole)] and len(steps) == len(set(steps))
    times = [r["time_s"] for r in _rows(killed)]
    assert times == sorted(times)  # time_s continues from the checkpoint instead of restarting


def test_time_limit_stops_with_a_checkpoint_and_a_rerun_finishes(tmp_path):
    import boltzflow as bf
    from boltzflow.config import config_from_dict

    d = {"target": "double_well", "flow": {"type": "realnvp", "n_layers": 2, "hidden": 8, "depth": 1},
         "method": {"name": "reverse_kl"},
         "train": {"steps": 100_000, "batch_size": 32, "warmup_steps": 2, "eval_every": 1000, "eval_samples": 64,
                   "checkpoint_every": 50_000, "time_limit_s": 2.0}}
    out = tmp_path / "run"
    summary = bf.fit(None, config_from_dict(d), out=out, progress=False).summary
    assert summary["stopped_by_time_limit"] and 0 < summary["steps"] < 100_000
    assert int(bf.load(out).state.step) == summary["steps"]  # the checkpoint holds the last step done
    d["train"] |= {"steps": summary["steps"] + 20, "time_limit_s": None}
    again = bf.fit(None, config_from_dict(d), out=out, progress=False).summary
    assert again["steps"] == summary["steps"] + 20 and not again["stopped_by_time_limit"]
    steps = [r["step"] for r in _rows(out)]
    assert len(steps) == len(set(steps)) and steps[-1] == summary["steps"] + 20


@pytest.mark.slow  # 21 s in CI; the float64 round trip of the flows (test_flows) stays in CI
def test_float64_trains_a_float64_model(tmp_path):
    """train.dtype: float64 makes the model, its samples and its training float64."""
    import equinox as eqx
    import jax

    import boltzflow as bf
    from boltzflow.config import config_from_dict
    from boltzflow.flows.paths import path_weights

    cfg = config_from_dict({
        "target": "double_well",
        "flow": {"type": "snf", "flow": {"type": "realnvp", "n_layers": 2, "hidden": 8, "depth": 1},
                 "blocks": {"kernel": "mala", "n_steps": 1, "learn_step_size": True}},
        "method": {"name": "kl_ml"},
        "train": {"steps": 5, "batch_size": 16, "eval_every": 5, "eval_samples": 64, "dtype": "float64"}})
    try:
        bf.fit(None, cfg, out=tmp_path / "run", progress=False)
        run = bf.load(tmp_path / "run")
        exp, state = run.experiment, run.state
        for tree in (state.model, state.opt_state):
            dtypes = {a.dtype for a in jax.tree_util.tree_leaves(eqx.filter(tree, eqx.is_inexact_array))}
            assert dtypes == {np.dtype("float64")}, dtypes
        with jax.enable_x64(True):  # the run's precision: the library no longer switches it on for the process
            x, log_w, infos = path_weights(exp.model, exp.target, jax.random.key(0), 8)
        assert x.dtype == log_w.dtype == infos[0].accept.dtype == np.float64
    finally:
        jax.config.update("jax_enable_x64", False)


def test_init_from_starts_at_another_runs_trained_model(tmp_path):
    """train.init_from: step 0 of the new run is the first run's final model (e.g. ML, then KL + ML); a run with
    another flow cannot start from it."""
    import boltzflow as bf
    from boltzflow.config import config_from_dict
    from boltzflow.experiment import build_experiment

    d = {"target": "double_well",
         "flow": {"type": "snf", "flow": {"type": "realnvp", "n_layers": 2, "hidden": 8, "depth": 1},
                  "blocks": {"kernel": "metropolis", "n_steps": 2, "learn_step_size": True}},
         "method": {"name": "forward_kl"},
         "train": {"steps": 15, "batch_size": 32, "eval_every": 15, "eval_samples": 64}}
    bf.fit(None, config_from_dict(d), out=tmp_path / "ml", progress=False)
    d2 = {**d, "method": {"name": "kl_ml"}, "train": {**d["train"], "init_from": str(tmp_path / "ml")}}
    start, trained = build_experiment(config_from_dict(d2)).model, bf.load(tmp_path / "ml").model
    assert all(np.array_equal(a, b) for a, b in zip(_leaves(start), _leaves(trained)))
    fresh = build_experiment(config_from_dict(d)).model
    assert not all(np.array_equal(a, b) for a, b in zip(_leaves(start), _leaves(fresh)))
    bad = {**d2, "flow": {**d["flow"], "flow": {"type": "realnvp", "n_layers": 4, "hidden": 8, "depth": 1}}}
    with pytest.raises(BoltzflowError, match="another structure"):
        build_experiment(config_from_dict(bad))


def test_flow_and_target_evaluations_are_counted_per_method(tmp_path):
    """metrics.jsonl counts what each method spends: FAB with buffer (the fill, then per step one AIS pass of
    1 + K * n_leapfrog evaluations per sample and n_updates loss batches), reverse KL on an SNF (its Metropolis
    moves are target evaluations), maximum likelihood (data through the flow, no target)."""
    import boltzflow as bf
    from boltzflow.config import config_from_dict
    from boltzflow.experiment import build_experiment

    n, k, leap, updates = 16, 2, 3, 4
    base = {"target": "double_well", "train": {"steps": 3, "batch_size": n, "eval_every": 1000, "eval_samples": 32}}
    fab = {**base, "flow": {"type": "realnvp", "n_layers": 2, "hidden": 8},
           "method": {"name": "fab", "n_updates": updates, "min_buffer_length": 3 * n, "buffer_size": 8 * n},
           "ais": {"kernel": "hmc", "n_intermediate": k, "n_leapfrog": leap}}
    per_sample = 1 + k * leap
    s = bf.fit(None, config_from_dict(fab), out=tmp_path / "fab", progress=False).summary
    assert s["target_evals"] == 3 * n * per_sample + 3 * n * per_sample  # fill (3 passes) + 3 steps
    assert s["flow_evals"] == 3 * n * per_sample + 3 * (n * per_sample + updates * n)
    rows = _rows(tmp_path / "fab")
    assert rows[0]["step"] == 1 and rows[0]["target_evals"] == 4 * n * per_sample
    snf = {**base, "flow": {"type": "snf", "flow": {"type": "realnvp", "n_layers": 2, "hidden": 8},
                            "blocks": {"kernel": "metropolis", "n_steps": 5}},
           "method": {"name": "reverse_kl"}}
    s = bf.fit(None, config_from_dict(snf), out=tmp_path / "snf", progress=False).summary
    n_blocks = sum(layer.stochastic for layer in build_experiment(config_from_dict(snf)).model.layers)
    assert n_blocks >= 1
    assert s["flow_evals"] == 3 * n and s["target_evals"] == 3 * n * (1 + 5 * n_blocks)
    ml = {**base, "flow": {"type": "realnvp", "n_layers": 2, "hidden": 8}, "method": {"name": "forward_kl"}}
    s = bf.fit(None, config_from_dict(ml), out=tmp_path / "ml", progress=False).summary
    assert s["flow_evals"] == 3 * n and s["target_evals"] == 0


def test_non_finite_updates_are_never_applied_however_many_come_in_a_row():
    """optax applies a non-finite update after ``max_consecutive_errors`` in a row; ours skips every one (a run whose
    buffer held one pathological sample had all its parameters turned to NaN after 50)."""
    import optax

    from boltzflow.train.state import make_optimizer

    opt = make_optimizer(TrainSettings(steps=10, lr=1e-2, warmup_steps=0))
    update = jax.jit(opt.update)
    params = {"w": jnp.ones(3)}
    state = opt.init(params)
    for _ in range(60):
        updates, state = update({"w": jnp.array([jnp.nan, 1.0, jnp.inf])}, state, params)
        params = optax.apply_updates(params, updates)
    assert np.all(np.asarray(params["w"]) == 1.0) and int(state.total_notfinite) == 60
    updates, state = update({"w": jnp.ones(3)}, state, params)  # a finite gradient still trains
    assert np.all(np.isfinite(np.asarray(optax.apply_updates(params, updates)["w"])))
    assert not np.all(np.asarray(optax.apply_updates(params, updates)["w"]) == 1.0)
