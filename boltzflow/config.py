"""Experiment configuration: one YAML file (or a preset name) -> a validated, frozen :class:`Config`.

A config has these sections; only ``target`` is required, everything else has defaults::

    name:   gmm40
    target: gmm40                      # preset name, {name: many_well, dim: 32}, or {function: "pkg.mod:fn"};
                                       # method vae: a data set, digits or {dataset: mnist, path: DIR}
    flow:   {type: realnvp, n_layers: 15, hidden: 80}   # realnvp | nsf | gaussian | snf | auto
                                                        # (boltzflow.flows.builders, boltzflow.snf.builder,
                                                        # boltzflow.autoflow)
    method: {name: fab, alpha: 2.0, buffer: true}       # boltzflow.train.registry.METHODS
    ais:    {kernel: hmc, n_intermediate: 8, n_leapfrog: 4}   # boltzflow.ais.AISSettings (FAB, evaluate --ais)
    train:  {steps: 2000, batch_size: 128, lr: 3e-4}    # boltzflow.train.state.TrainSettings
    explore: {check: true, budget: 2000000}             # boltzflow.explore.ExploreSettings (default: check up to
                                                        # 16-D within the training's target evaluations, no seeding)

Every section is read here, once, into the typed settings its part of boltzflow declares (boltzflow.settings): an
unknown key is an error naming the valid ones, a value of the wrong type is an error, and the defaults are the
settings classes' own. The target spec is checked when the target is built (boltzflow.targets.make_target);
for method ``vae`` the target section is a data set, checked here (boltzflow.data.DataSettings).
Presets are the YAML files shipped in ``boltzflow/configs``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from boltzflow.ais import AISSettings
from boltzflow.autoflow import AutoSettings
from boltzflow.data import DataSettings
from boltzflow.errors import BoltzflowError
from boltzflow.explore import ExploreSettings
from boltzflow.flows.builders import FLOW_SETTINGS
from boltzflow.settings import Tagged, parse, parse_tagged, to_dict
from boltzflow.snf.builder import SNFSettings
from boltzflow.targets import Target
from boltzflow.train.registry import DEFAULT_METHOD, METHOD_SETTINGS
from boltzflow.train.state import TrainSettings

SECTIONS = ("name", "target", "flow", "method", "ais", "train", "explore")

#: flow types of a config's ``flow`` section: the deterministic flows, the SNF, and ``auto`` (a flow chosen from
#: the target when the run starts, boltzflow.autoflow; the run's config.yaml holds the flow it chose)
MODEL_SETTINGS = {**FLOW_SETTINGS, "snf": SNFSettings, "auto": AutoSettings}
DEFAULT_FLOW = "realnvp"


@dataclass(frozen=True)
class Config:
    """A validated experiment configuration, one typed settings object per section (module docstring); build one
    with :func:`load_config`. ``to_dict()`` gives the plain data a run's config.yaml holds."""

    target: Any
    name: str = "run"
    flow: Tagged = field(default_factory=lambda: parse_tagged(None, MODEL_SETTINGS, "type", "flow", DEFAULT_FLOW))
    method: Tagged = field(default_factory=lambda: parse_tagged(None, METHOD_SETTINGS, "name", "method",
                                                                  DEFAULT_METHOD))
    ais: AISSettings = field(default_factory=AISSettings)
    train: TrainSettings = field(default_factory=TrainSettings)
    explore: ExploreSettings = field(default_factory=ExploreSettings)

    def to_dict(self) -> dict:
        """Plain data with every value (defaults included), as written to a run's config.yaml; a target given as a
        Python object is written as ``{python: its repr}``, which a later run must be given again."""
        target = {"python": repr(self.target)} if isinstance(self.target, Target) else to_dict(self.target)
        return {"name": self.name, "target": target, "flow": to_dict(self.flow, "type"),
                "method": to_dict(self.method, "name"), "ais": to_dict(self.ais), "train": to_dict(self.train),
                "explore": to_dict(self.explore)}

    def with_train(self, **kw) -> "Config":
        """This config with the ``train`` keys ``kw`` replaced (checked as the section is)."""
        try:
            return dataclasses.replace(self, train=dataclasses.replace(self.train, **kw))
        except TypeError as e:
            raise BoltzflowError(f"bad train settings: {e}") from None


def presets() -> list[str]:
    """The names of the preset configs shipped with boltzflow (``boltzflow presets``), for :func:`load_config`.

    Returns:
        The sorted preset names, e.g. ``["aldp_fab", ..., "gmm40", ..., "quick_gmm", ...]``.
    """
    return sorted(p.name[:-5] for p in resources.files("boltzflow.configs").iterdir() if p.name.endswith(".yaml"))


def config_from_dict(d: Any, source: str = "config") -> Config:
    """The one place a config is checked: every section parsed into its settings class."""
    if not isinstance(d, dict):
        raise BoltzflowError(f"{source}: expected a mapping of sections {SECTIONS}, got {type(d).__name__}")
    unknown = set(d) - set(SECTIONS)
    if unknown:
        raise BoltzflowError(f"{source}: unknown section(s) {sorted(unknown)}; known: {list(SECTIONS)}")
    if "target" not in d or d["target"] is None:
        raise BoltzflowError(f"{source}: missing required section 'target'")
    if not isinstance(d.get("name", ""), str):
        raise BoltzflowError(f"{source}: name must be a string, got {d['name']!r}")
    try:
        method = parse_tagged(d.get("method"), METHOD_SETTINGS, "name", "method", DEFAULT_METHOD)
        return Config(
            target=_target(d["target"], method.name),
            name=d.get("name", "run"),
            flow=parse_tagged(d.get("flow"), MODEL_SETTINGS, "type", "flow", DEFAULT_FLOW),
            method=method,
            ais=parse(AISSettings, d.get("ais"), "ais"),
            train=parse(TrainSettings, d.get("train"), "train"),
            explore=parse(ExploreSettings, d.get("explore"), "explore"),
        )
    except BoltzflowError as e:
        raise BoltzflowError(f"{source}: {e}") from None


def _target(spec, method: str):
    """The target section: as written (checked when the target is built), or for method vae its data set."""
    is_data = isinstance(spec, dict) and "dataset" in spec
    if method == "vae":
        return parse(DataSettings, {"dataset": spec} if isinstance(spec, str) else spec, "target")
    if is_data:
        raise BoltzflowError(f"target {spec!r} is a data set, for method vae; method {method} needs a target")
    return spec


def is_config_file(spec: str | Path) -> bool:
    """Whether ``spec`` names a config file rather than a preset: a ``.yaml`` / ``.yml`` name or any existing path."""
    path = Path(spec)
    return path.suffix in (".yaml", ".yml") or path.exists()


def read_config(spec: str | Path) -> tuple[dict, str]:
    """The raw mapping of a YAML file or a preset, and where it came from (``name`` defaults to the file's stem)."""
    path = Path(spec)
    if is_config_file(path):
        if not path.is_file():
            raise BoltzflowError(f"config file not found: {path}")
        text, source = path.read_text(), str(path)
    elif str(spec) in presets():
        text = resources.files("boltzflow.configs").joinpath(f"{spec}.yaml").read_text()
        source = f"preset {spec}"
    else:
        raise BoltzflowError(f"unknown preset or config file {str(spec)!r}; presets: {', '.join(presets())}")
    try:
        d = yaml.safe_load(text)
    except yaml.YAMLError as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise BoltzflowError(f"{source}: malformed YAML ({first})") from None
    if isinstance(d, dict) and "name" not in d:
        d["name"] = Path(str(spec)).stem
    return d, source


def load_config(spec: "str | Path | dict | Config", **overrides: Any) -> Config:
    """A config from a preset name, a YAML file, a mapping of sections or a :class:`Config`, with overrides.

    Args:
        spec: a preset name (``boltzflow presets``), a path to a YAML file, a mapping of config sections, or a
            Config.
        **overrides: sections to change, by name (``target``, ``name``, ``flow``, ``method``, ``ais``, ``train``,
            ``explore``): a mapping is merged into the section key by key (nested mappings too), anything else
            replaces it.

    Returns:
        The validated, frozen Config (an unknown key or a value of the wrong type is a BoltzflowError).

    Example:
        >>> cfg = load_config("quick_gmm", train={"steps": 100, "seed": 1}, method={"alpha": 1.0})
        >>> cfg.train.steps, cfg.method.settings.alpha
        (100, 1.0)
    """
    if isinstance(spec, Config):
        if not overrides:
            return spec
        raw, source = spec.to_dict(), "config"
        if isinstance(spec.target, Target):  # as the object, not its written form
            raw["target"] = spec.target
    elif isinstance(spec, dict):
        raw, source = dict(spec), "config"
    else:
        raw, source = read_config(spec)
        if not isinstance(raw, dict):
            raise BoltzflowError(f"{source}: expected a mapping of config sections, got {type(raw).__name__}")
    unknown = set(overrides) - set(SECTIONS)
    if unknown:
        raise BoltzflowError(f"unknown section(s) {sorted(unknown)} to override; known: {list(SECTIONS)}")
    for section, value in overrides.items():
        raw[section] = _merge(raw.get(section), value, _TAGS.get(section))
    return config_from_dict(raw, source)


#: the key that names a section's choice where the section may be written as just that name
_TAGS = {"target": "name", "flow": "type", "method": "name"}


def _merge(old, new, tag: str | None = None):
    """``new`` merged into ``old`` key by key where both are mappings (a section written as a name, ``fab``, is the
    mapping ``{tag: name}``; a mapping naming another choice, ``{type: nsf}`` over a realnvp, replaces it); else
    ``new``."""
    if isinstance(new, dict) and isinstance(old, str) and tag is not None:
        old = {tag: old}
    if not (isinstance(new, dict) and isinstance(old, dict)) or (tag in new and new[tag] != old.get(tag)):
        return new
    return {**old, **{k: _merge(old.get(k), v) for k, v in new.items()}}
