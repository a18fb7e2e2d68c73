"""The Python API (boltzflow.run): fit in memory and into a run directory, sample, evaluate, save, load, resume; the
same numbers as the command line; no change to the caller's process."""

import hashlib
import inspect
import json
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import boltzflow as bf
from boltzflow.cli import main

DIM = 6
SCALES = jnp.array([0.5, 1.0, 1.5, 2.0, 0.8, 1.2])
#: log Z of exp(-sum x_i^2 / (2 s_i^2)), a product of unnormalised Gaussians
LOG_Z = float(0.5 * DIM * np.log(2 * np.pi) + jnp.sum(jnp.log(SCALES)))


def log_prob(x):
    return -0.5 * jnp.sum((x / SCALES) ** 2, axis=-1)


#: a small in-memory run: a RealNVP trained by reverse KL (no exploration, no missing-mass check)
SMALL = {"flow": {"type": "realnvp", "n_layers": 4, "hidden": 32},
         "method": "reverse_kl",
         "train": {"steps": 300, "batch_size": 256, "lr": 3e-3, "eval_every": 100, "checkpoint_every": 100},
         "explore": {"check": False}}


def _fit(**kw):
    target = bf.target_from_log_prob(log_prob, dim=DIM, log_z=LOG_Z)
    return bf.fit(target, SMALL | kw.pop("config", {}), progress=False, **kw)


def _arrays(tree):
    return [np.asarray(a) for a in jax.tree_util.tree_leaves(eqx.filter(tree, eqx.is_array))]


def _same(a, b) -> bool:
    return all(np.array_equal(u, v) for u, v in zip(_arrays(a), _arrays(b), strict=True))


def test_fit_in_memory_writes_nothing_and_estimates_log_z(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    seen = []
    run = _fit(key=jax.random.key(0), callback=lambda step, m: seen.append(step))
    assert list(tmp_path.iterdir()) == []  # nothing written without out=
    assert run.out is None and run.config.train.seed == 0 and run.target.dim == DIM
    assert seen == [row["step"] for row in run.history] and seen[0] == 1 and seen[-1] == 300
    assert {"loss", "step", "time_s", "target_evals"} <= set(run.history[-1])
    x, log_w = run.sample(jax.random.key(1), 5000)
    assert isinstance(x, np.ndarray) and x.shape == (5000, DIM) and log_w.shape == (5000,)
    report = run.evaluate(jax.random.key(2), n=20_000)
    assert report["log_z_true"] == pytest.approx(LOG_Z)
    assert report["ess"] > 0.5
    # a trained flow on a Gaussian: log Z within 4 of its own standard errors (and the error bar is honest)
    assert abs(report["log_z"] - LOG_Z) < 4 * report["log_z_stderr"] + 1e-3
    # the importance weights of run.sample estimate Z the same way
    log_z_sample = float(jax.nn.logsumexp(log_w) - np.log(log_w.size))
    assert abs(log_z_sample - LOG_Z) < 0.05


def test_save_load_and_the_python_target(tmp_path):
    run = _fit(key=jax.random.key(0), config={"train": {**SMALL["train"], "steps": 20}})
    run.save(tmp_path / "run")
    assert {"config.yaml", "checkpoint.eqx", "checkpoint.json", "metrics.jsonl"} <= {p.name for p in
                                                                                      (tmp_path / "run").iterdir()}
    with pytest.raises(bf.BoltzflowError, match="Python object"):  # config.yaml cannot rebuild a Python function
        bf.load(tmp_path / "run")
    back = bf.load(tmp_path / "run", target=run.target)
    assert _same(back.model, run.model) and _same(back.state, run.state)
    assert back.history == run.history and back.summary["steps"] == 20
    x0, w0 = run.sample(jax.random.key(3), 100)
    x1, w1 = back.sample(jax.random.key(3), 100)
    np.testing.assert_array_equal(x0, x1)
    np.testing.assert_array_equal(w0, w1)


def test_sampling_again_compiles_nothing():
    """run.sample's program is compiled once per (chunk, paths) and reused by later calls, with other keys and by
    sizes beyond a chunk (a program closing over the model was compiled again at every call: 2 s each on a small
    flow)."""
    run = _fit(key=jax.random.key(0), config={"train": {**SMALL["train"], "steps": 2}})
    first = run.sample(jax.random.key(3), 100)
    run.sample(jax.random.key(3), 100, chunk=50)
    compiled = []
    listener = lambda event, seconds, **kw: compiled.append(event) if "backend_compile" in event else None  # noqa: E731
    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        x, log_w = run.sample(jax.random.key(3), 100)
        run.sample(jax.random.key(4), 100)
        run.sample(jax.random.key(5), 100, chunk=50)
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)
    assert compiled == []
    np.testing.assert_array_equal(x, first[0])
    np.testing.assert_array_equal(log_w, first[1])


def test_resume_after_interruption_equals_an_uninterrupted_run(tmp_path):
    whole = _fit(key=jax.random.key(4))

    def interrupt(step, metrics):
        if step == 150:  # after the checkpoint of step 100: steps 101-150 are lost and run again
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _fit(key=jax.random.key(4), out=tmp_path / "r", callback=interrupt)
    assert json.loads((tmp_path / "r" / "checkpoint.json").read_text())["step"] == 100
    resumed = _fit(key=jax.random.key(4), out=tmp_path / "r")
    assert _same(resumed.state, whole.state)
    steps = [row["step"] for row in resumed.history]
    assert steps == sorted(set(steps)) and steps[-1] == 300  # each logged step once
    assert [json.loads(line)["step"] for line in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()] == steps


def test_fit_equals_the_command_line(tmp_path, monkeypatch):
    """``boltzflow train CONFIG --seed 5`` and ``bf.fit(None, CONFIG, key=jax.random.key(5))`` train the same
    bits (FAB with its buffer on the 2-D mixture: quick_gmm with a smaller flow and fewer steps)."""
    monkeypatch.chdir(tmp_path)
    config = bf.load_config("quick_gmm", flow={"type": "realnvp", "n_layers": 2, "hidden": 16},
                            train={"steps": 12, "eval_every": 6, "checkpoint_every": 6},
                            explore={"check": False}).to_dict()
    (tmp_path / "c.yaml").write_text(json.dumps(config))  # JSON is YAML
    assert main(["train", "c.yaml", "--seed", "5", "--out", "cli", "--no-progress", "--eval-samples", "256"]) == 0
    bf.fit(None, tmp_path / "c.yaml", key=jax.random.key(5), progress=False).save(tmp_path / "api")
    digest = lambda d: hashlib.sha256((tmp_path / d / "checkpoint.eqx").read_bytes()).hexdigest()  # noqa: E731
    assert digest("cli") == digest("api")
    assert bf.load("cli").summary["steps"] == 12


def test_float64_fit_leaves_the_process_in_float32():
    assert not jax.config.jax_enable_x64
    run = _fit(key=jax.random.key(0), config={"train": {**SMALL["train"], "steps": 3, "dtype": "float64"}})
    assert jnp.ones(3).dtype == jnp.float32 and not jax.config.jax_enable_x64
    x, log_w = run.sample(jax.random.key(1), 10)
    assert x.dtype == np.float64 and log_w.dtype == np.float64
    assert np.isfinite(run.evaluate(jax.random.key(2), n=256)["log_z"])
    assert jnp.ones(3).dtype == jnp.float32


def test_a_users_exception_keeps_its_type_and_traceback():
    def fails_in_training(x):
        if x.shape[0] != 8:  # passes the 8-point check, fails on the training batch
            raise KeyError("my own bug")
        return log_prob(x)

    target = bf.target_from_log_prob(fails_in_training, dim=DIM)
    with pytest.raises(KeyError, match="my own bug") as info:
        bf.fit(target, SMALL, progress=False)
    frames = [f.name for f in info.traceback]
    assert "fails_in_training" in frames


def test_load_config_overrides_merge_into_sections():
    cfg = bf.load_config("quick_gmm", train={"steps": 7}, method={"alpha": 1.0}, target={"rotation": 3})
    base = bf.load_config("quick_gmm")
    assert cfg.train.steps == 7 and cfg.train.lr == base.train.lr  # merged, not replaced
    assert cfg.method.name == "fab" and cfg.method.settings.alpha == 1.0
    assert cfg.target == {"name": "gmm40", "rotation": 3}
    other = bf.load_config("quick_gmm", flow={"type": "realnvp", "n_layers": 2})  # another flow: not merged
    assert other.flow.name == "realnvp" and other.flow.settings.n_layers == 2
    again = bf.load_config(cfg, train={"seed": 2})
    assert again.train.seed == 2 and again.train.steps == 7 and again.method == cfg.method
    with pytest.raises(bf.BoltzflowError, match="unknown option"):
        bf.load_config("quick_gmm", train={"stpes": 7})
    with pytest.raises(bf.BoltzflowError, match="unknown section"):
        bf.load_config("quick_gmm", trian={"steps": 7})


def test_the_public_names_are_typed_and_documented():
    assert set(bf.__all__) <= set(dir(bf))
    for name in bf.__all__:
        obj = getattr(bf, name)
        if callable(obj) and not isinstance(obj, type):
            sig = inspect.signature(obj)
            assert all(p.annotation is not inspect.Parameter.empty for p in sig.parameters.values()), name
            assert sig.return_annotation is not inspect.Signature.empty, name
            assert "Returns:" in obj.__doc__, name
    assert "Example:" in bf.fit.__doc__ and "Args:" in bf.fit.__doc__
    assert "presets" in bf.__all__ and "quick_gmm" in bf.presets()
    for method in ("sample", "evaluate", "plot", "save"):
        assert "Returns:" in getattr(bf.Run, method).__doc__


@pytest.mark.parametrize("name", [pytest.param("quick_gmm", marks=pytest.mark.slow),
                                  pytest.param("snf_double_well", marks=pytest.mark.slow)])
def test_checkpoints_match_those_before_the_api(tmp_path, name):
    """The checkpoints of two presets (seed 3, a few steps), against fingerprints (per-array sums) recorded with
    the code before the library API (quick_gmm's again when FAB's first step took over the buffer's fill, which
    draws other random numbers): the sums agree to float rounding (on the machine that recorded them the files
    were bit-identical, sha256 recorded beside)."""
    recorded = json.loads((Path(__file__).parent / "data" / "checkpoint_fingerprints.json").read_text())[name]
    steps = {"quick_gmm": 40, "snf_double_well": 30}[name]
    run = bf.fit(None, bf.load_config(name, train={"steps": steps}), key=jax.random.key(3), progress=False)
    floats = [a.astype(np.float64) for a in _arrays(run.state) if np.issubdtype(a.dtype, np.floating)]
    got = [[float(a.sum()), float((a * a).sum())] for a in floats]
    assert len(got) == len(recorded["float_leaves"])
    np.testing.assert_allclose(got, recorded["float_leaves"], rtol=1e-5, atol=1e-5)
