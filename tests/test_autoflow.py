"""The `auto` flow type (boltzflow.autoflow): a flow chosen from the target, recorded in the run's config.yaml."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import yaml

import boltzflow as bf
from boltzflow.autoflow import AutoSettings, resolve
from boltzflow.config import config_from_dict
from boltzflow.errors import BoltzflowError
from boltzflow.targets import FunctionTarget

LOC, STD = np.array([10.0, -5.0]), np.array([3.0, 0.5])


def _far_gaussian():
    """N(LOC, diag(STD^2)): far from the origin, at two different scales."""
    return FunctionTarget(lambda x: -0.5 * jnp.sum(((x - LOC) / STD) ** 2, axis=1), 2, name="far_gaussian")


def test_bounds_place_the_box_on_minus_three_three_and_size_comes_from_the_dimension():
    chosen, report = resolve(AutoSettings(bounds=[-10.0, 30.0]), _far_gaussian(), jax.random.key(0))
    s = chosen.settings
    assert chosen.name == "nsf" and s.lu and s.n_layers == 8 and s.hidden == 64 and s.bound == 5.0
    assert s.loc == [10.0, 10.0] and s.scale == pytest.approx([40 / 6] * 2) and report["source"] == "bounds"
    chosen, _ = resolve(AutoSettings(flow="realnvp", bounds=[[0, 1], [-2, 2]]), _far_gaussian(), jax.random.key(0))
    assert chosen.name == "realnvp" and chosen.settings.loc == [0.5, 0.0]
    for bad in ([1.0, -1.0], [[0, 1]], "wide"):
        with pytest.raises(BoltzflowError, match="bounds must be"):
            resolve(AutoSettings(bounds=bad), _far_gaussian(), jax.random.key(0))


def test_exploration_finds_where_the_mass_is_and_its_scale_per_dimension():
    """No bounds: the exploration (AIS from a growing N(0, s^2 I)) must find a Gaussian 11 standard units of the
    reference away, and its scale per dimension: loc within 0.2 std, scale within 20 % (AIS end points after HMC
    moves, 4,096 of them: the standard error of the mean is 0.016 std if independent; correlation and the
    annealing's bias are what the margin is for)."""
    chosen, report = resolve(AutoSettings(), _far_gaussian(), jax.random.key(1))
    s = chosen.settings
    assert report["source"] == "exploration" and report["reference_scale"] > 1.0, report["rounds"]
    np.testing.assert_allclose(s.loc, LOC, atol=0.2 * STD.max())
    assert np.all(np.abs(np.asarray(s.scale) / STD - 1) < 0.2), s.scale
    assert 5.0 <= s.bound <= 20.0


def test_an_auto_run_records_its_choice_and_resumes_with_it(tmp_path):
    raw = {"target": {"function": "user_targets:gaussian"},
           "flow": {"type": "auto", "flow": "realnvp", "n_layers": 2, "hidden": 16, "bounds": [-4.0, 6.0]},
           "method": {"name": "reverse_kl"},
           "train": {"steps": 4, "batch_size": 32, "eval_every": 4, "eval_samples": 64, "checkpoint_every": 4}}
    out = tmp_path / "run"
    bf.fit(None, config_from_dict(raw), out=out, progress=False)
    text = (out / "config.yaml").read_text()
    assert text.startswith("# flow: {'type': 'auto'")  # what was chosen, and how, at the top of config.yaml
    stored = yaml.safe_load(text)["flow"]
    assert stored["type"] == "realnvp" and stored["loc"] == [1.0, 1.0] and stored["lu"] is True
    assert json.loads((out / "auto.json").read_text())["settings"]["bounds"] == [-4.0, 6.0]
    resumed = config_from_dict({**raw, "train": {**raw["train"], "steps": 8}})
    bf.fit(None, resumed, out=out, progress=False)  # resumes
    run = bf.load(out)
    exp, state = run.experiment, run.state
    assert int(state.step) == 8 and exp.config.flow.name == "realnvp"
    with pytest.raises(BoltzflowError, match="different config"):  # other auto settings: another run
        bf.fit(None, config_from_dict({**raw, "flow": {**raw["flow"], "bounds": [-5.0, 5.0]}}), out=out,
               progress=False)


def test_exploration_settings_are_checked():
    from boltzflow.explore import explore

    with pytest.raises(BoltzflowError, match="growth > 1"):
        explore(jax.random.key(0), lambda x: -x[:, 0] ** 2, 2, growth=1.0)
    with pytest.raises(BoltzflowError, match="explore_samples must be >= 256"):
        AutoSettings(explore_samples=10)
