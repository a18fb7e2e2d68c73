"""Experiment configuration: one YAML file (or a preset name) -> a validated, frozen :class:`Config`.

A config has five sections; only ``target`` is required, everything else has defaults::

    target: gmm40                      # preset name, {name: many_well, dim: 32}, or {function: "pkg.mod:fn"}
    flow:   {type: realnvp, n_layers: 15, hidden: 80, depth: 2}
    method: {name: fab, alpha: 2.0, buffer: true, ...}   # see boltzflow.train.methods.METHODS
    ais:    {kernel: hmc, n_intermediate: 8, ...}       # used by FAB and by `evaluate --ais`
    train:  {steps: 2000, batch_size: 128, lr: 3e-4, ...} # see TrainSettings

Presets are the YAML files shipped in ``boltzflow/configs``. Unknown keys are errors, not silently ignored.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from boltzflow.errors import BoltzflowError

SECTIONS = ("name", "target", "flow", "method", "ais", "train")


@dataclass(frozen=True)
class TrainSettings:
    """The training loop's settings (see boltzflow.train.loop)."""

    steps: int = 2000  # outer iterations (for FAB with buffer: AIS passes, each followed by n_updates steps)
    batch_size: int = 128
    lr: float = 3e-4
    warmup_steps: int = 100  # linear warm-up, then cosine decay to lr * final_lr_fraction
    final_lr_fraction: float = 0.1
    ema_decay: float | None = None  # if set, evaluate/sample with an exponential moving average of the parameters
    clip_norm: float = 100.0  # global gradient-norm clipping
    time_limit_s: float | None = None  # stop (and checkpoint) after this much wall-clock
    eval_every: int = 200  # flow-IS ESS on eval_samples every this many steps
    eval_samples: int = 4096
    checkpoint_every: int = 500
    seed: int = 0
    dtype: str = "float32"  # or float64 (enables jax_enable_x64)

    def __post_init__(self):
        positive = ("steps", "batch_size", "lr", "eval_every", "eval_samples", "checkpoint_every", "clip_norm")
        for name in positive:
            if not getattr(self, name) > 0:
                raise BoltzflowError(f"train.{name} must be positive, got {getattr(self, name)!r}")
        if self.ema_decay is not None and not 0.0 < self.ema_decay < 1.0:
            raise BoltzflowError(f"train.ema_decay must be in (0, 1), got {self.ema_decay!r}")
        if self.dtype not in ("float32", "float64"):
            raise BoltzflowError(f"train.dtype must be float32 or float64, got {self.dtype!r}")


@dataclass(frozen=True)
class Config:
    target: Any
    name: str = "run"
    flow: dict = field(default_factory=lambda: {"type": "realnvp"})
    method: dict = field(default_factory=lambda: {"name": "fab"})
    ais: dict = field(default_factory=dict)
    train: TrainSettings = field(default_factory=TrainSettings)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        return {k: d[k] for k in SECTIONS}

    def replace(self, **kw) -> "Config":
        return dataclasses.replace(self, **kw)

    def with_train(self, **kw) -> "Config":
        return dataclasses.replace(self, train=dataclasses.replace(self.train, **kw))


def presets() -> list[str]:
    return sorted(p.name[:-5] for p in resources.files("boltzflow.configs").iterdir() if p.name.endswith(".yaml"))


def config_from_dict(d: Any, source: str = "config") -> Config:
    if not isinstance(d, dict):
        raise BoltzflowError(f"{source}: expected a mapping of sections {SECTIONS}, got {type(d).__name__}")
    unknown = set(d) - set(SECTIONS)
    if unknown:
        raise BoltzflowError(f"{source}: unknown section(s) {sorted(unknown)}; known: {list(SECTIONS)}")
    if "target" not in d:
        raise BoltzflowError(f"{source}: missing required section 'target'")
    for section in ("flow", "method", "ais", "train"):
        if section in d and not isinstance(d[section], dict):
            raise BoltzflowError(f"{source}: section '{section}' must be a mapping, got {d[section]!r}")
    try:
        train = TrainSettings(**d.get("train", {}))
    except TypeError as e:
        known = [f.name for f in dataclasses.fields(TrainSettings)]
        raise BoltzflowError(f"{source}: bad train settings ({e}); known keys: {known}") from None
    kw = {k: d[k] for k in ("name", "flow", "method", "ais") if k in d}
    return Config(target=d["target"], train=train, **kw)


def load_config(spec: str | Path) -> Config:
    """A YAML file path or a preset name -> Config."""
    path = Path(spec)
    if path.suffix in (".yaml", ".yml") or path.exists():
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
    cfg = config_from_dict(d, source)
    return cfg if "name" in d else cfg.replace(name=Path(str(spec)).stem)
