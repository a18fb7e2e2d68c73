"""The training loop shared by every method: optimiser, jitted steps, progress, metrics, checkpoints, resume.

A *method* (boltzflow.train.methods) supplies ``init(key, model) -> method_state`` and a pure
``step(model, opt_state, method_state, key) -> (model, opt_state, method_state, metrics)``. This module owns
everything around it, once:

- optax: global-norm clipping -> Adam with linear warm-up and cosine decay; ``optax.apply_if_finite`` skips any
  update whose gradient is not finite (counted in the metrics as ``skipped_steps``);
- the whole step is compiled, and the steps between two logged ones run as one call (a ``fori_loop``);
- optional parameter averaging (``train.ema_decay``): an exponential moving average of the parameters, with the
  usual warm-up ``decay_t = min(decay, (1 + t) / (10 + t))``, is kept beside the trained model and is the model
  that evaluation, sampling and ``load_run`` use (the method itself, e.g. FAB's AIS, keeps using the online model);
- ``metrics.jsonl`` (one JSON object per logged step, with the wall-clock ``time_s`` of training excluding
  evaluation), a progress bar with loss, ESS and ETA, a flow-IS ESS every ``eval_every`` steps;
- ``checkpoint.eqx`` + ``checkpoint.json`` every ``checkpoint_every`` steps, at the time limit and at the end;
  running ``train`` again on the same directory resumes from the checkpoint with the same keys (a larger
  ``--steps`` also stretches the cosine schedule);
- a time limit.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import yaml

from boltzflow.config import Config, config_from_dict
from boltzflow.errors import BoltzflowError
from boltzflow.estimators import effective_sample_size
from boltzflow.snf import path_weights


class TrainState(NamedTuple):
    model: Any
    opt_state: Any
    method_state: Any
    key: jax.Array  # raw key data (uint32), so that checkpoints serialise it
    step: jax.Array  # () int32
    averaged: Any = None  # EMA of the model's parameters (train.ema_decay), else None

    @property
    def final_model(self):
        """The model to evaluate and sample from: the parameter average if one is kept, else the model."""
        return self.model if self.averaged is None else self.averaged


def update_average(averaged, model, step, decay: float):
    """One EMA update of the inexact-array leaves, ``decay_t = min(decay, (1 + t) / (10 + t))``."""
    t = step.astype(jnp.float32)
    d = jnp.minimum(decay, (1.0 + t) / (10.0 + t))
    avg_p, static = eqx.partition(averaged, eqx.is_inexact_array)
    new_p = eqx.filter(model, eqx.is_inexact_array)
    mixed = jax.tree_util.tree_map(lambda a, b: (d * a + (1.0 - d) * b).astype(a.dtype), avg_p, new_p)
    return eqx.combine(mixed, static)


def make_optimizer(train) -> optax.GradientTransformation:
    """Clip by global norm, then Adam on a warm-up + cosine schedule; non-finite updates are skipped."""
    warmup = min(train.warmup_steps, max(train.steps - 1, 0))
    schedule = optax.warmup_cosine_decay_schedule(
        init_value=0.0 if warmup else train.lr,
        peak_value=train.lr,
        warmup_steps=warmup,
        decay_steps=max(train.steps, warmup + 1),
        end_value=train.lr * train.final_lr_fraction,
    )
    opt = optax.chain(optax.clip_by_global_norm(train.clip_norm), optax.adam(schedule))
    return optax.apply_if_finite(opt, max_consecutive_errors=50)


def make_flow_ess_fn(target, n: int):
    """Jitted ``(model, key) -> ESS fraction`` of importance sampling p with the model's own samples
    (path weights, SNF eq. 11, which for a deterministic flow are p/q)."""

    @eqx.filter_jit
    def flow_ess(model, key):
        return effective_sample_size(path_weights(model, target, key, n)[1])

    return flow_ess


def _scalar_metrics(metrics: dict) -> dict:
    out = {}
    for k, v in jax.device_get(metrics).items():
        v = np.asarray(v)
        out[k] = float(v) if v.size == 1 else [float(a) for a in v.ravel()]
    return out


def _write_checkpoint(out: Path, state: TrainState, info: dict) -> None:
    tmp = out / "checkpoint.eqx.tmp"
    eqx.tree_serialise_leaves(tmp, state)
    tmp.replace(out / "checkpoint.eqx")
    (out / "checkpoint.json").write_text(json.dumps(info, indent=1))


def _resume(out: Path, config: Config, like: TrainState) -> tuple[TrainState, dict] | None:
    ckpt, info_path, cfg_path = out / "checkpoint.eqx", out / "checkpoint.json", out / "config.yaml"
    if not (ckpt.exists() and info_path.exists() and cfg_path.exists()):
        return None
    old = config_from_dict(yaml.safe_load(cfg_path.read_text()), str(cfg_path))
    # A run may be extended (more steps, a longer time limit); anything else is a different experiment.
    if old.with_train(steps=1, time_limit_s=None) != config.with_train(steps=1, time_limit_s=None):
        raise BoltzflowError(f"{out} holds a run with a different config; choose another --out")
    return eqx.tree_deserialise_leaves(ckpt, like), json.loads(info_path.read_text())


class Progress:
    """tqdm progress bar that can be switched off (tests, CI logs)."""

    def __init__(self, total: int, initial: int, enabled: bool):
        self.bar = None
        if enabled:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True)

    def update(self, n: int, **postfix) -> None:
        if self.bar is not None:
            self.bar.update(n)
            if postfix:
                self.bar.set_postfix({k: f"{v:.4g}" for k, v in postfix.items()}, refresh=False)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _steps_to_next_boundary(done: int, total: int, periods) -> int:
    """Steps from ``done`` to the next step that is logged: step 1 (its time includes compilation), a multiple of
    any period, or the last step."""
    if done == 0:
        return 1
    return min([total - done] + [p - done % p for p in periods])


def train(config: Config, out: str | Path, *, progress: bool = True, log_every: int = 10) -> dict:
    """Train ``config`` into the run directory ``out`` (resuming if it holds a checkpoint); returns a summary."""
    from boltzflow.experiment import build_experiment, initial_state, state_like

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    ts = config.train
    exp = build_experiment(config)
    optimizer = make_optimizer(ts)
    method = exp.build_method(optimizer)
    key = jax.random.key(ts.seed)
    info = {"time_s": 0.0, "evals": []}
    resumed = _resume(out, config, state_like(exp, optimizer, method, key))
    if resumed is None:
        t_init = time.perf_counter()
        state = initial_state(exp, optimizer, method, key)  # FAB fills its buffer here: counted as training time
        info["time_s"] = time.perf_counter() - t_init
    else:
        state, info = resumed
    (out / "config.yaml").write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))

    def one_step(state: TrainState):
        key, k_step, k_eval = jax.random.split(jax.random.wrap_key_data(state.key), 3)
        model, opt_state, method_state, metrics = method.step(state.model, state.opt_state, state.method_state,
                                                              k_step)
        averaged = None if ts.ema_decay is None else update_average(state.averaged, model, state.step, ts.ema_decay)
        new = TrainState(model, opt_state, method_state, jax.random.key_data(key), state.step + 1, averaged)
        return new, metrics, jax.random.key_data(k_eval)

    @eqx.filter_jit(donate="all-except-first")  # the old state's buffers are reused in place (the buffer is large)
    def advance(n: jax.Array, state: TrainState):
        """``n`` training steps (a traced count: one compilation) as a single compiled call; returns the new state
        and the metrics and evaluation key of the last step. Running several steps per call removes the per-call
        cost of passing the state's few hundred arrays in and out, which is several ms for a small flow."""
        dynamic, static = eqx.partition(state, eqx.is_array)

        def body(_, carry):
            st, _, _ = carry
            new, metrics, k_eval = one_step(eqx.combine(st, static))
            return eqx.filter(new, eqx.is_array), metrics, k_eval

        shapes = jax.eval_shape(lambda d: body(0, (d, None, None))[1:], dynamic)  # traced, not compiled
        zeros = jax.tree_util.tree_map(lambda a: jnp.zeros(a.shape, a.dtype), shapes)
        dynamic, metrics, k_eval = jax.lax.fori_loop(0, n, body, (dynamic, *zeros))
        return eqx.combine(dynamic, static), metrics, jax.random.wrap_key_data(k_eval)

    flow_ess = make_flow_ess_fn(exp.target, ts.eval_samples)
    start_step = int(state.step)
    bar = Progress(ts.steps, start_step, progress)
    t_train = info["time_s"]
    t0 = time.perf_counter()
    last_ess = info["evals"][-1]["ess"] if info["evals"] else float("nan")
    stopped_by_time = False
    bar_at = start_step
    with open(out / "metrics.jsonl", "a") as log:
        done = start_step
        while done < ts.steps:
            n = _steps_to_next_boundary(done, ts.steps, (log_every, ts.eval_every, ts.checkpoint_every))
            state, metrics, k_eval = advance(jnp.asarray(n, jnp.int32), state)
            done += n
            evaluate_now = done % ts.eval_every == 0 or done == ts.steps
            checkpoint_now = done % ts.checkpoint_every == 0 or done == ts.steps
            m = _scalar_metrics(metrics)  # waits for the step to finish
            t_train += time.perf_counter() - t0
            t0 = time.perf_counter()
            m.update(step=done, time_s=round(t_train, 3), skipped_steps=int(state.opt_state.total_notfinite))
            if evaluate_now:
                last_ess = float(flow_ess(state.final_model, k_eval))
                m["flow_ess"] = last_ess
                info["evals"].append({"step": done, "time_s": m["time_s"], "ess": last_ess})
                t0 = time.perf_counter()  # evaluation does not count as training time
            log.write(json.dumps(m) + "\n")
            log.flush()
            bar.update(done - bar_at, loss=m.get("loss", float("nan")), ess=last_ess)
            bar_at = done
            stopped_by_time = ts.time_limit_s is not None and t_train >= ts.time_limit_s and done < ts.steps
            if stopped_by_time or checkpoint_now:
                info["time_s"] = t_train
                _write_checkpoint(out, state, info | {"step": done})
            if stopped_by_time:
                break
    bar.close()
    summary = {"steps": int(state.step), "time_s": t_train, "stopped_by_time_limit": stopped_by_time,
               "flow_ess": last_ess, "evals": info["evals"]}
    return summary
