"""From a config to the objects of one experiment, and back from a run directory.

``build_experiment(config)`` makes the target, the model (a flow, or an SNF) and the method; ``load_run(dir)``
rebuilds the same objects and restores the trained state from the run's checkpoint, so ``evaluate``, ``sample``
and ``plot`` work on any run directory without retraining.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import yaml

from boltzflow.config import Config, config_from_dict
from boltzflow.errors import BoltzflowError
from boltzflow.flows import make_flow
from boltzflow.targets import make_target


@dataclass
class Experiment:
    config: Config
    target: Any
    model: Any

    def build_method(self, optimizer):
        from boltzflow.train.methods import build_method

        return build_method(self.config, self.target, optimizer)


def build_experiment(config: Config) -> Experiment:
    if config.train.dtype == "float64":
        jax.config.update("jax_enable_x64", True)
    target = make_target(config.target)
    key = jax.random.fold_in(jax.random.key(config.train.seed), 1)
    return Experiment(config, target, make_model(config.flow, key, target))


def make_model(spec: dict, key: jax.Array, target):
    """A flow from its spec; ``type: snf`` makes a stochastic normalizing flow, which needs the target."""
    if not isinstance(spec, dict) or "type" not in spec:
        raise BoltzflowError(f"flow must be a mapping with a 'type', got {spec!r}")
    if spec["type"] == "snf":
        from boltzflow.snf import make_snf

        return make_snf(spec, key, target)
    return make_flow(spec, key, target.dim)


def initial_state(exp: Experiment, optimizer, method, key):
    """The TrainState of step 0 (for FAB with buffer this runs AIS to fill the buffer)."""
    from boltzflow.train.loop import TrainState

    k_method, k_run = jax.random.split(key)
    params = eqx.filter(exp.model, eqx.is_inexact_array)
    # the average starts as a copy of the model (a separate buffer: training steps donate their input state)
    averaged = None if exp.config.train.ema_decay is None else jax.tree_util.tree_map(
        lambda a: jnp.array(a, copy=True) if eqx.is_array(a) else a, exp.model)
    return TrainState(exp.model, optimizer.init(params), method.init(k_method, exp.model),
                      jax.random.key_data(k_run), jnp.zeros((), jnp.int32), averaged)


def state_like(exp: Experiment, optimizer, method, key):
    """Shapes and dtypes of :func:`initial_state`, without computing it (for restoring a checkpoint)."""
    return eqx.filter_eval_shape(lambda k: initial_state(exp, optimizer, method, k), key)


def load_run(run_dir: str | Path):
    """(experiment with the trained model, full TrainState) of a run directory."""
    from boltzflow.train.loop import make_optimizer

    run_dir = Path(run_dir)
    cfg_path, ckpt = run_dir / "config.yaml", run_dir / "checkpoint.eqx"
    if not cfg_path.is_file() or not ckpt.is_file():
        raise BoltzflowError(f"{run_dir} is not a run directory (needs config.yaml and checkpoint.eqx)")
    config = config_from_dict(yaml.safe_load(cfg_path.read_text()), str(cfg_path))
    exp = build_experiment(config)
    optimizer = make_optimizer(config.train)
    method = exp.build_method(optimizer)
    like = state_like(exp, optimizer, method, jax.random.key(0))
    state = eqx.tree_deserialise_leaves(ckpt, like)
    exp.model = state.final_model
    return exp, state
