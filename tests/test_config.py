"""Config sections are typed settings read in one place: unknown keys and wrong types are errors, defaults once."""

import pytest
import yaml

from boltzflow.config import Config, config_from_dict, load_config, presets
from boltzflow.errors import BoltzflowError
from boltzflow.train.fab import FabSettings
from boltzflow.train.state import TrainSettings


@pytest.mark.parametrize("section, message", [
    ({"method": {"name": "reverse_kl", "bogus": 1}}, r"method \(reverse_kl\): bogus; valid: none"),
    ({"method": {"name": "fab", "buffer": "false"}}, r"method \(fab\).buffer must be true or false, got 'false'"),
    ({"method": {"name": "fab", "n_updates": 2.5}}, "n_updates must be an integer"),
    ({"method": {"name": "snf_kl"}}, "unknown name 'snf_kl'"),
    ({"train": {"steps": "100"}}, "train.steps must be an integer"),
    ({"train": {"lr": True}}, "train.lr must be a number"),
    ({"train": {"dtype": "float16"}}, "train.dtype must be one of 'float32', 'float64'"),
    ({"flow": {"type": "realnvp", "bins": 8}}, r"flow \(realnvp\): bins"),
    ({"flow": {"type": "snf", "blocks": {"kernel": "hmc", "n_leapfrogs": 3}}}, "n_leapfrogs"),
    ({"flow": {"type": "snf", "blocks": {"at_end": "no"}}}, "at_end must be true or false"),
    ({"ais": {"kernel": "gibbs"}}, "unknown MCMC kernel 'gibbs'"),
    ({"ais": {"schedule": "cosine"}}, "ais.schedule must be one of"),
    ({"ais": {"kernel": "ula", "target_accept": 0.5}}, "cannot adapt to target_accept"),
])
def test_bad_sections_are_one_line_errors_naming_the_problem(section, message):
    with pytest.raises(BoltzflowError, match=message):
        config_from_dict({"target": "double_well", **section})


def test_defaults_are_the_settings_classes_own():
    cfg = config_from_dict({"target": "double_well"})
    assert cfg.method.name == "fab" and cfg.method.settings == FabSettings()
    assert cfg.flow.name == "realnvp" and cfg.train == TrainSettings()
    assert config_from_dict({"target": "double_well", "method": "reverse_kl"}).method.name == "reverse_kl"


@pytest.mark.parametrize("name", presets())
def test_config_round_trips_through_its_yaml(name):
    """A run's config.yaml (to_dict, every default written out) reads back to the same config."""
    cfg = load_config(name)
    again = config_from_dict(yaml.safe_load(yaml.safe_dump(cfg.to_dict())))
    assert isinstance(again, Config) and again == cfg
