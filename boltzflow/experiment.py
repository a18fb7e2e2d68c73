"""From a config to the objects of one experiment, training it, and back from a run directory.

- :func:`build_experiment`: the target, the model (a flow, or an SNF) in the run's dtype, and the space AIS runs in
  (:meth:`Experiment.space`: x-space for a flow, path space for an SNF with Langevin blocks); a ``flow: {type:
  auto}`` is first resolved into the flow it chooses for the target (boltzflow.autoflow), which the run's
  config.yaml then records; for method ``vae`` the data set and a VAE whose posterior is the config's flow or SNF
  (boltzflow.vae);
- :func:`build_method`: the config's method for that experiment;
- :func:`train`: what ``boltzflow train`` and the benchmark scripts run, the one trainer (boltzflow.train.loop);
- :func:`load_run`: the same objects with the trained state restored from a run's checkpoint, so ``evaluate``,
  ``sample`` and ``plot`` work on any run directory without retraining.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import yaml

from boltzflow.autoflow import resolve
from boltzflow.config import Config, config_from_dict
from boltzflow.data import load_dataset
from boltzflow.errors import BoltzflowError
from boltzflow.flows.builders import make_flow
from boltzflow.flows.paths import Space, model_space, path_weights
from boltzflow.settings import to_dict
from boltzflow.sharding import device_chunk, hosts_meet, to_host, writes_files
from boltzflow.snf.builder import make_snf
from boltzflow.snf.paths import path_space
from boltzflow.targets import make_target
from boltzflow.train.api import Method, Problem
from boltzflow.train.loop import train as train_loop
from boltzflow.train.registry import METHODS
from boltzflow.train.state import TrainState, make_optimizer, state_like
from boltzflow.vae.model import VAE, make_vae


@dataclass
class Experiment:
    config: Config
    target: Any
    model: Any
    auto: dict | None = None  # how a flow: {type: auto} was resolved (boltzflow.autoflow.resolve); None otherwise

    def space(self, purpose: str) -> Space:
        """Where AIS runs for this model: x-space for a flow (or the internal coordinates below its last layer,
        boltzflow.flows.paths.model_space), path space for an SNF with Langevin blocks (boltzflow.snf.paths);
        otherwise a one-line error saying that ``purpose`` needs a tractable density."""
        self._require_sampler(purpose)
        if not self.model.stochastic:
            return model_space(self.model, self.target)
        try:
            return path_space(self.model, self.target)
        except BoltzflowError as e:
            raise BoltzflowError(f"{purpose} needs a model with a tractable density (a flow, or an SNF with "
                                 f"unadjusted Langevin blocks through its path space): {e}") from None

    def weighted_samples(self, key: jax.Array, n: int, chunk: int = 65_536) -> tuple[np.ndarray, np.ndarray]:
        """n model samples x with their path log weights log w (boltzflow.flows.paths.path_weights), as host
        (numpy) arrays: drawn ``chunk`` at a time (rounded up to a multiple of the devices in use) by one jitted
        program, chunk i from ``jax.random.fold_in(key, i)``, so memory is bounded by the chunk, not by n, and of two
        draws of at least one chunk with the same key the shorter is the start of the longer."""
        self._require_sampler("weighted samples")
        if n < 1 or chunk < 1:
            raise BoltzflowError(f"weighted samples: n and chunk must be positive, got n={n}, chunk={chunk}")
        chunk = device_chunk(chunk, n)
        draw = jax.jit(lambda k: path_weights(self.model, self.target, k, chunk)[:2])
        parts = [to_host(draw(jax.random.fold_in(key, i))) for i in range(-(-n // chunk))]
        return tuple(np.concatenate(c)[:n] for c in zip(*parts))

    def _require_sampler(self, purpose: str) -> None:
        if isinstance(self.model, VAE):
            raise BoltzflowError(f"{purpose}: {self.config.name} is a VAE, not a sampler of a target (its pictures: "
                                 "boltzflow plot, its metrics: boltzflow evaluate without --ais)")


def model_dtype(config: Config):
    """The run's floating dtype; float64 switches JAX to 64 bits first."""
    if config.train.dtype == "float64":
        jax.config.update("jax_enable_x64", True)
        return jnp.float64
    return jnp.float32


def build_experiment(config: Config) -> Experiment:
    """The target and the model at step 0: freshly initialised from the seed, or, with ``train.init_from``, the
    trained model of that run directory (e.g. maximum likelihood first, then KL + ML or FAB)."""
    dtype = model_dtype(config)
    auto = None
    key = jax.random.fold_in(jax.random.key(config.train.seed), 1)
    if config.method.name == "vae":
        target = load_dataset(config.target)
        model = make_vae(config.method.settings, config.flow, key, target.dim, dtype)
    else:
        target = make_target(config.target)
        if config.flow.name == "auto":
            chosen, auto = resolve(config.flow.settings, target,
                                   jax.random.fold_in(jax.random.key(config.train.seed), 2), dtype)
            auto["settings"] = to_dict(config.flow, "type")
            config = dataclasses.replace(config, flow=chosen)
        model = (make_snf(config.flow.settings, key, target, dtype) if config.flow.name == "snf" else
                 make_flow(config.flow, key, target.dim, dtype, molecule=getattr(target, "molecule", None)))
    if config.train.init_from is not None:
        model = _trained_model_like(Path(config.train.init_from), model)
    return Experiment(config, target, model, auto)


def _trained_model_like(run_dir: Path, model):
    """The arrays of ``run_dir``'s final model in the structure of ``model`` (same flow settings required)."""
    trained, fresh = eqx.partition(load_run(run_dir)[0].model, eqx.is_array)[0], eqx.partition(model, eqx.is_array)

    def layout(tree):  # paths, shapes and dtypes of the arrays (static fields such as the target object differ)
        return [(jax.tree_util.keystr(k), a.shape, a.dtype) for k, a in jax.tree_util.tree_leaves_with_path(tree)]

    if layout(trained) != layout(fresh[0]):
        raise BoltzflowError(f"train.init_from: the model of {run_dir} has another structure than this config's "
                             f"flow; use the same flow settings")
    arrays = jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(fresh[0]), jax.tree_util.tree_leaves(trained))
    return eqx.combine(arrays, fresh[1])


def build_method(exp: Experiment, optimizer, out: Path | None = None) -> Method:
    """The training method of ``exp``; a new run in ``out`` gets the seed samples its method can start from (an
    exploration, run here and recorded in explore.json)."""
    entry = METHODS[exp.config.method.name]
    problem = Problem(exp.target, exp.config.train.batch_size, optimizer)
    if entry.uses_ais:
        problem = problem._replace(space=exp.space(f"method {exp.config.method.name}"), ais=exp.config.ais)
        if out is not None and problem.space.from_x is not None and exp.config.explore.wants("seed_buffer",
                                                                                             exp.target):
            problem = problem._replace(seed=_explore_seed(exp, out))
    return entry.build(exp.config.method.settings, problem)


def _explore_seed(exp: Experiment, out: Path) -> tuple:
    """An exploration of the target (boltzflow.explore) for a method's start: (x, log w), summary in explore.json."""
    e = exp.config.explore.run(jax.random.fold_in(jax.random.key(exp.config.train.seed), 7), exp.target)
    if writes_files():
        (out / "explore.json").write_text(json.dumps(e.summary(), indent=1))
    return e.x, e.log_w


def _check_run_dir(out: Path, config: Config) -> None:
    """A directory holding a run of another config is an error; a run may be extended (more steps, a longer time
    limit)."""
    path = out / "config.yaml"
    if not path.exists():
        return
    old = config_from_dict(yaml.safe_load(path.read_text()), str(path))
    if old.with_train(steps=1, time_limit_s=None) != config.with_train(steps=1, time_limit_s=None):
        raise BoltzflowError(f"{out} holds a run with a different config; choose another --out")


def _auto_choice(out: Path, config: Config) -> Config:
    """A ``flow: {type: auto}`` config resuming in ``out``: the flow this run chose when it started (auto.json holds
    the auto settings it was chosen by; other settings are left for _check_run_dir to refuse)."""
    record, path = out / "auto.json", out / "config.yaml"
    if config.flow.name != "auto" or not (record.exists() and path.exists()):
        return config
    if json.loads(record.read_text()).get("settings") != to_dict(config.flow, "type"):
        return config
    return dataclasses.replace(config, flow=config_from_dict(yaml.safe_load(path.read_text()), str(path)).flow)


def _auto_header(auto: dict) -> str:
    c = auto["chosen"]
    how = (f"bounds {auto['bounds'][0]}..." if auto["source"] == "bounds" else
           f"an exploration (SMC from N(c, s^2 I), s = {auto['reference_scale']:g}, log Z {auto['log_z']:.4g} "
           f"+- {auto['log_z_stderr']:.2g}, ESS {auto['ess']:.3g}, converged {auto['converged']})")
    return (f"# flow: {auto['settings']} chose the {c['type']} below (boltzflow.autoflow): {c['n_layers']} layers, "
            f"hidden {c['hidden']},\n# loc / scale from {how}; details in auto.json\n")


def train(config: Config, out: str | Path, *, progress: bool = True, log_every: int = 10) -> dict:
    """Train ``config`` into the run directory ``out`` (resuming if it holds a checkpoint); returns a summary."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    config = _auto_choice(out, config)
    _check_run_dir(out, config)
    hosts_meet("run directory read")  # before process 0 writes into it
    exp = build_experiment(config)
    config = exp.config
    optimizer = make_optimizer(config.train)
    method = build_method(exp, optimizer, None if (out / "checkpoint.eqx").exists() else out)
    if writes_files():
        header = ""
        if exp.auto is not None:
            (out / "auto.json").write_text(json.dumps(exp.auto, indent=1))
            header = _auto_header(exp.auto)
        (out / "config.yaml").write_text(header + yaml.safe_dump(config.to_dict(), sort_keys=False))
    return train_loop(out, config.train, exp.model, optimizer, method, exp.target, progress=progress,
                      log_every=log_every)


def load_run(run_dir: str | Path) -> tuple[Experiment, TrainState]:
    """(experiment with the trained model, full TrainState) of a run directory."""
    run_dir = Path(run_dir)
    cfg_path, ckpt = run_dir / "config.yaml", run_dir / "checkpoint.eqx"
    if not cfg_path.is_file() or not ckpt.is_file():
        raise BoltzflowError(f"{run_dir} is not a run directory (needs config.yaml and checkpoint.eqx)")
    config = config_from_dict(yaml.safe_load(cfg_path.read_text()), str(cfg_path))
    exp = build_experiment(config)
    optimizer = make_optimizer(config.train)
    method = build_method(exp, optimizer)
    like = state_like(exp.model, optimizer, method, jax.random.key(0), config.train.ema_decay)
    state = eqx.tree_deserialise_leaves(ckpt, like)
    exp.model = state.final_model
    return exp, state
