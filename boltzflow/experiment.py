"""From a config to the objects of one experiment, training it, and back from a run directory.

- :func:`build_experiment`: the target, the model (a flow, or an SNF) in the run's dtype, and the space AIS runs in
  (:meth:`Experiment.space`: x-space for a flow, path space for an SNF with Langevin blocks); a ``flow: {type:
  auto}`` is first resolved into the flow it chooses for the target (boltzflow.autoflow), which the run's
  config.yaml then records; for method ``vae`` the data set and a VAE whose posterior is the config's flow or SNF
  (boltzflow.vae);
- :func:`build_method`: the config's method for that experiment;
- :func:`precision`: the context a run's JAX work runs in (64-bit JAX for ``train.dtype: float64``, switched on
  for the run's calls only, never for the caller's process);
- :func:`prepare_run_dir`, :func:`write_run_files`: a run directory checked against the config (and that it can be
  written, and that a run there can be resumed: never trained over), and the config (with what an auto flow chose
  and a seed exploration found) written into it; :func:`clear_run_dir` deletes a run to start over;
- :func:`load_run`: the same objects with the trained state restored from a run's checkpoint.
"""

from __future__ import annotations

import contextlib
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
from boltzflow.checkpoint import check_writable, write_atomic, write_json
from boltzflow.config import Config, config_from_dict
from boltzflow.errors import BoltzflowError
from boltzflow.flows.builders import make_flow
from boltzflow.flows.paths import Space, model_space, path_weights, samples_below_last
from boltzflow.settings import to_dict
from boltzflow.sharding import device_chunk, hosts_meet, to_host, writes_files
from boltzflow.snf.builder import make_snf
from boltzflow.snf.paths import path_space
from boltzflow.targets import make_target
from boltzflow.train.api import Method, Problem
from boltzflow.train.loop import RESUME_HINT, check_checkpoint
from boltzflow.train.registry import METHODS
from boltzflow.train.state import TrainState, check_state_file, make_optimizer, read_state, seed_key, state_like
from boltzflow.vae.model import VAE, make_vae
from boltzflow.vae.report import VAEData


#: model samples drawn by one compiled call where a caller does not say (sampling, evaluation, pictures); memory
#: grows with it (an equivariant flow on LJ-55 holds ~55^2 pair features per sample)
CHUNK = 4096


@dataclass
class Experiment:
    config: Config
    target: Any
    model: Any
    auto: dict | None = None  # how a flow: {type: auto} was resolved (boltzflow.autoflow.resolve); None otherwise
    explore: dict | None = None  # the summary of the exploration that seeded the method (build_method), if any
    _draws: dict = dataclasses.field(default_factory=dict, repr=False, compare=False)  # see _draw

    def space(self, purpose: str) -> Space:
        """Where AIS runs for this model: x-space for a flow (or the internal coordinates below its last layer,
        boltzflow.flows.paths.model_space), path space for an SNF with Langevin blocks (boltzflow.snf.paths);
        otherwise a one-line error saying that ``purpose`` needs a tractable density."""
        self._require_sampler(purpose)
        if not self.model.stochastic or samples_below_last(self.model):
            return model_space(self.model, self.target)
        try:
            return path_space(self.model, self.target)
        except BoltzflowError as e:
            raise BoltzflowError(f"{purpose} needs a model with a tractable density (a flow, or an SNF with "
                                 f"unadjusted Langevin blocks through its path space): {e}") from None

    def weighted_samples(self, key: jax.Array, n: int, chunk: int = CHUNK,
                         paths: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """n model samples x with their path log weights log w (boltzflow.flows.paths.path_weights, ``paths`` per
        sample), as host (numpy) arrays: drawn ``chunk`` at a time (rounded up to a multiple of the devices in use)
        by one jitted program, chunk i from ``jax.random.fold_in(key, i)``, so memory is bounded by the chunk, not
        by n, and of two draws of at least one chunk with the same key the shorter is the start of the longer."""
        self._require_sampler("weighted samples")
        if n < 1 or chunk < 1:
            raise BoltzflowError(f"weighted samples: n and chunk must be positive, got n={n}, chunk={chunk}")
        chunk = device_chunk(chunk, n)
        draw = self._draw(chunk, paths)
        parts = [to_host(draw(self.model, jax.random.fold_in(key, i))) for i in range(-(-n // chunk))]
        return tuple(np.concatenate(c)[:n] for c in zip(*parts))

    def _draw(self, chunk: int, paths: int):
        """The compiled draw of ``chunk`` weighted samples, kept per (chunk, paths) with the model as its argument:
        the next call, and the model after more training, reuse the program (a function closing over the model
        compiled it again at every call)."""
        if (chunk, paths) not in self._draws:
            self._draws[chunk, paths] = eqx.filter_jit(lambda model, k: path_weights(model, self.target, k, chunk,
                                                                                     paths)[:2])
        return self._draws[chunk, paths]

    def _require_sampler(self, purpose: str) -> None:
        if isinstance(self.model, VAE):
            raise BoltzflowError(f"{purpose}: {self.config.name} is a VAE, not a sampler of a target (its pictures: "
                                 "boltzflow plot, its metrics: boltzflow evaluate without --ais)")


def precision(config: Config) -> contextlib.AbstractContextManager:
    """The context in which a run's JAX work is done: 64-bit JAX for ``train.dtype: float64`` (for this context
    only: the caller's ``jax_enable_x64`` is as it was afterwards), else the caller's setting."""
    return jax.enable_x64(True) if config.train.dtype == "float64" else contextlib.nullcontext()


def build_experiment(config: Config) -> Experiment:
    """The target and the model at step 0: freshly initialised from the seed, or, with ``train.init_from``, the
    trained model of that run directory (e.g. maximum likelihood first, then KL + ML or FAB). Call it inside
    :func:`precision` of the config."""
    dtype = jnp.float64 if config.train.dtype == "float64" else jnp.float32
    auto = None
    key = jax.random.fold_in(seed_key(config.train.seed), 1)
    if config.method.name == "vae":
        target = VAEData.load(config.target, config.method.settings)
        model = make_vae(config.method.settings, config.flow, key, target.dim, dtype)
    else:
        target = make_target(config.target)
        if config.flow.name == "auto":
            chosen, auto = resolve(config.flow.settings, target,
                                   jax.random.fold_in(seed_key(config.train.seed), 2), dtype)
            auto["settings"] = to_dict(config.flow, "type")
            config = dataclasses.replace(config, flow=chosen)
        model = (make_snf(config.flow.settings, key, target, dtype) if config.flow.name == "snf" else
                 make_flow(config.flow, key, target.dim, dtype, molecule=getattr(target, "molecule", None),
                           particles=getattr(target, "particles", None)))
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


def build_method(exp: Experiment, optimizer, fresh: bool = False) -> Method:
    """The training method of ``exp``; for a run that starts afresh (``fresh``), the seed samples its method can
    start from (an exploration, run here within the budget ``explore.budget`` or else the target evaluations the
    training will spend, its summary kept in ``exp.explore``)."""
    entry = METHODS[exp.config.method.name]
    problem = Problem(exp.target, exp.config.train.batch_size, optimizer)
    if entry.uses_ais:
        problem = problem._replace(space=exp.space(f"method {exp.config.method.name}"), ais=exp.config.ais)
        if fresh and problem.space.from_x is not None and exp.config.explore.wants("seed_buffer", exp.target):
            cost = entry.build(exp.config.method.settings, problem).cost(exp.model)
            budget = cost.init.get("target_evals", 0) + exp.config.train.steps * cost.step.get("target_evals", 0)
            e = exp.config.explore.run(jax.random.fold_in(seed_key(exp.config.train.seed), 7), exp.target,
                                       budget=budget or None)
            exp.explore = e.summary()
            problem = problem._replace(seed=(e.x, e.log_w))
    return entry.build(exp.config.method.settings, problem)


def _comparable(config: Config) -> dict:
    """What must agree between a run directory's config and a config that continues it (not its length)."""
    return config.with_train(steps=1, time_limit_s=None).to_dict()


def _differences(a: dict, b: dict, prefix: str = "") -> list[str]:
    """The dotted keys at which two nested mappings differ."""
    out = []
    for k in dict.fromkeys([*a, *b]):
        u, v = a.get(k), b.get(k)
        if isinstance(u, dict) and isinstance(v, dict):
            out += _differences(u, v, f"{prefix}{k}.")
        elif u != v:
            out.append(f"{prefix}{k}")
    return out


def _check_run_dir(out: Path, config: Config) -> None:
    """A directory holding a run of another config is an error naming the settings that differ; a run may be
    extended (more steps, a longer time limit)."""
    path = out / "config.yaml"
    if not path.exists():
        return
    old = config_from_dict(yaml.safe_load(path.read_text()), str(path))
    diff = _differences(_comparable(old), _comparable(config))
    if diff:
        raise BoltzflowError(f"{out} holds a run with a different config ({', '.join(diff)} "
                             f"{'differs' if len(diff) == 1 else 'differ'}); choose "
                             f"another --out, or start over there with --restart (fit(..., restart=True)), which "
                             f"deletes that run")


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


#: where a run keeps the missing-mass check's explorations, its first look and its second (boltzflow.evaluate)
CHECK_FILES = ("explore_check.npz", "explore_check_2.npz")
#: the files of a run that --restart deletes (the pictures are drawn again)
RUN_FILES = ("config.yaml", "auto.json", "explore.json", "checkpoint.eqx", "checkpoint.json", "metrics.jsonl",
             "report.json", "eval.json", *CHECK_FILES)


def prepare_run_dir(out: Path, config: Config, restart: bool = False) -> Config:
    """Make ``out`` ready for ``config``: created if missing, and writable (else one line, before any work); if it
    holds a run, the config must continue it (an auto flow keeps the flow it chose) and its checkpoint must be
    complete and readable (boltzflow.train.loop.check_checkpoint), unless ``restart``: then that run is deleted by
    :func:`clear_run_dir` once the new one is built. Returns the config to run."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        if writes_files():
            check_writable(out / "config.yaml")
    except OSError as e:
        raise BoltzflowError(f"cannot write the run directory {out}: {e}") from e
    if not restart:
        check_checkpoint(out, ("config.yaml", "checkpoint.eqx", "checkpoint.json"))
        config = _auto_choice(out, config)
        _check_run_dir(out, config)
    hosts_meet("run directory read")  # before process 0 writes into it
    return config


def check_resumable(out: Path, exp: Experiment, optimizer, method: Method) -> None:
    """Before anything is written into ``out``: its checkpoint holds a state of this experiment's shapes (one line
    naming it and what is wrong otherwise: cut short, corrupt, another model)."""
    check_state_file(out / "checkpoint.eqx", _state_like(exp, optimizer, method), RESUME_HINT)


def _state_like(exp: Experiment, optimizer, method: Method) -> TrainState:
    train = exp.config.train
    return state_like(exp.model, optimizer, method, seed_key(train.seed), train.ema_decay)


def clear_run_dir(out: Path) -> None:
    """Delete the run in ``out`` (:data:`RUN_FILES`) to start over in it; process 0 only, the others wait."""
    if writes_files():
        for name in RUN_FILES:
            (out / name).unlink(missing_ok=True)
    hosts_meet("run directory cleared")


def write_run_files(out: Path, exp: Experiment) -> None:
    """``config.yaml`` (headed by how an auto flow was chosen), ``auto.json`` and ``explore.json`` where the run has
    them, each written whole or not at (boltzflow.checkpoint.write_atomic); process 0 only. A failed write (a full
    disk) is one line."""
    if not writes_files():
        return
    header = ""
    try:
        if exp.auto is not None:
            write_json(out / "auto.json", exp.auto)
            header = _auto_header(exp.auto)
        if exp.explore is not None:
            write_json(out / "explore.json", exp.explore)
        text = header + yaml.safe_dump(exp.config.to_dict(), sort_keys=False)
        write_atomic(out / "config.yaml", lambda f: f.write(text.encode()))
    except OSError as e:
        raise BoltzflowError(f"could not write the run's files to {out}: {e}") from e


def load_run(run_dir: str | Path, target=None) -> tuple[Experiment, TrainState]:
    """(experiment with the trained model, full TrainState) of a run directory; ``target`` replaces the config's
    (needed for a run trained on a Python object). Call it inside :func:`precision` of the run's config."""
    run_dir = Path(run_dir)
    config = run_config(run_dir, target)
    exp = build_experiment(config)
    optimizer = make_optimizer(config.train)
    method = build_method(exp, optimizer)
    state = read_state(run_dir / "checkpoint.eqx", _state_like(exp, optimizer, method))
    exp.model = state.final_model
    return exp, state


def run_config(run_dir: Path, target=None) -> Config:
    """The config of a run directory (``target``, if given, in place of its target)."""
    cfg_path, ckpt = run_dir / "config.yaml", run_dir / "checkpoint.eqx"
    if not cfg_path.is_file() or not ckpt.is_file():
        raise BoltzflowError(f"{run_dir} is not a run directory (needs config.yaml and checkpoint.eqx)")
    raw = yaml.safe_load(cfg_path.read_text())
    if target is not None and isinstance(raw, dict):
        raw["target"] = target
    elif isinstance(raw, dict) and isinstance(raw.get("target"), dict) and "python" in raw["target"]:
        raise BoltzflowError(f"{run_dir} was trained on a Python object, {raw['target']['python']}; give it again "
                             f"(boltzflow.load(run_dir, target=...))")
    return config_from_dict(raw, str(cfg_path))
