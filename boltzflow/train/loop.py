"""The one training loop, for every method: jitted steps, progress, metrics, checkpoints, exact resume.

A method (boltzflow.train.api) supplies ``init`` and a pure ``step``; this module runs it, once for all:

- the whole step is compiled, and the steps between two logged ones run as one call (a ``fori_loop``);
- in memory (no run directory: nothing is written) or into a run directory;
- ``metrics.jsonl`` (and the returned history, and a caller's callback): one JSON object per logged step (step 1,
  multiples of ``log_every``, ``eval_every``, ``checkpoint_every``, and the last), with the wall-clock ``time_s``
  of training excluding evaluation and the flow and target evaluations spent so far (``flow_evals``,
  ``target_evals``: the method's Cost); a progress bar with loss, ESS and ETA; a flow-IS ESS every ``eval_every`` steps (or the method's own ESS, e.g. a VAE's
  posterior importance sampling: boltzflow.train.api.Method);
- ``checkpoint.eqx`` (the whole TrainState: model, optimiser, method state such as FAB's buffer and AIS step sizes,
  parameter average, key) and ``checkpoint.json`` (step, time, evaluations) every ``checkpoint_every`` steps, at
  the time limit and at the end, each written to a temporary file and renamed (boltzflow.checkpoint), so a kill at
  any moment leaves the last complete checkpoint;
- resume: run again on the same directory and training continues from the checkpoint; the steps logged after it
  (done before an interruption, lost with it) are dropped from ``metrics.jsonl`` and run again, so the file
  holds each step once and the run ends with the parameters of an uninterrupted one (tested by killing a
  subprocess);
- ``time_limit_s``: stop cleanly with a checkpoint once training has taken that long; running again continues.
- ``should_stop``: the caller's stop request (e.g. the command's SIGTERM handler; the library installs no signal
  handlers), asked after each compiled call: once it says True, training checkpoints at the step reached and stops,
  as at the time limit. A call runs at most ``log_every`` steps (up to the next logged step), which bounds the work
  done between a request and its checkpoint; nothing done is lost.

Several devices (boltzflow.sharding): run inside ``use_devices(n)`` and each step is data-parallel, the state
replicated on every device (constrained so after every step) and the batch split over them; the batch size must
be a multiple of the device count. The device count is not part of the run: a run resumes on any number of
devices. With several hosts (``jax.distributed``) every process runs the same steps and only process 0 writes the
run directory.

Which run a directory holds (its config) is checked by the caller (boltzflow.run.fit).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Callable, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from tqdm.auto import tqdm

from boltzflow.checkpoint import read_checkpoint, read_info, write_atomic, write_json
from boltzflow.estimators import effective_sample_size
from boltzflow.errors import BoltzflowError
from boltzflow.flows.paths import path_weights
from boltzflow.sharding import batch_devices, hosts_meet, replicated, writes_files
from boltzflow.train.api import Method
from boltzflow.train.state import (TrainSettings, TrainState, initial_state, read_state, seed_key, state_like,
                                   update_average)

#: the end of the one-line error for a run directory whose checkpoint cannot be resumed (never trained over)
RESUME_HINT = ("; the run there cannot be resumed and is left as it is: restore its files, choose another --out, or "
               "start over there with --restart (fit(..., restart=True)), which deletes the run")


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
        out[k] = float(v) if v.ndim == 0 else [float(a) for a in v.ravel()]
    return out


def _log(log, metrics: dict, out: Path | None) -> None:
    """One line of metrics.jsonl; a failed write (a full disk) is one line saying which checkpoint is intact."""
    try:
        log.write(json.dumps(metrics) + "\n")
        log.flush()
    except OSError as e:
        step = _checkpoint_step(out)
        kept = "no checkpoint was written yet" if step is None else f"the checkpoint at step {step} is intact"
        raise BoltzflowError(f"could not write {out / 'metrics.jsonl'}: {e} ({kept})") from e


def write_checkpoint(out: Path, state: TrainState, info: dict) -> None:
    """The state, then its info; a kill between the two leaves a newer state than info, which _resume handles. A
    failed write (a full disk) is a one-line error saying which checkpoint is intact (write_atomic keeps the previous
    file and leaves no temporary one)."""
    if not writes_files():
        return
    written = None  # the step of the state on disk once the new one is written
    try:
        write_atomic(out / "checkpoint.eqx", lambda f: eqx.tree_serialise_leaves(f, state))
        written = info.get("step")
        write_json(out / "checkpoint.json", info)
    except OSError as e:
        step = written if written is not None else _checkpoint_step(out)
        kept = ("no earlier checkpoint was written" if step is None else
                f"the {'previous ' if written is None else ''}checkpoint at step {step} is intact")
        raise BoltzflowError(f"could not write the checkpoint to {out}: {e} ({kept})") from e


def _checkpoint_step(out: Path) -> int | None:
    """The step of the checkpoint in ``out``; None without a readable one."""
    try:
        return read_checkpoint_info(out / "checkpoint.json").get("step")
    except (OSError, BoltzflowError):
        return None


def read_checkpoint_info(path: Path) -> dict:
    """checkpoint.json: the step, training time and evaluations of a checkpoint; a one-line error naming it if it is
    cut short or corrupt."""
    info = read_info(path)
    evals = info.get("evals")
    if not (isinstance(info.get("time_s"), (int, float)) and isinstance(evals, list)
            and all(isinstance(e, dict) and isinstance(e.get("step"), int) for e in evals)):
        raise BoltzflowError(f"{path} is corrupt: it lacks the time_s and evals of a checkpoint")
    return info


def check_checkpoint(out: Path, together: tuple[str, ...] = ("checkpoint.eqx", "checkpoint.json")) -> None:
    """Refuse (one line naming the files, then :data:`RESUME_HINT`) a directory whose checkpoint is incomplete or
    unreadable, which training would start again over: where any part of a checkpoint is there, all files of
    ``together`` (its state, its info, and for a caller that keeps one its config.yaml) must be, and its
    checkpoint.json readable."""
    here = [n for n in together if (out / n).is_file()]
    if not {"checkpoint.eqx", "checkpoint.json"} & set(here):
        return
    missing = [n for n in together if n not in here]
    if missing:
        raise BoltzflowError(f"{out} holds {' and '.join(here)} but no {' or '.join(missing)}{RESUME_HINT}")
    try:
        read_checkpoint_info(out / "checkpoint.json")
    except BoltzflowError as e:
        raise BoltzflowError(f"{e}{RESUME_HINT}") from e.__cause__


def _resume(out: Path, like: TrainState) -> tuple[TrainState, dict, list] | None:
    """The checkpointed state and info, and the logged metrics up to the checkpoint's step (``metrics.jsonl`` cut
    back to them); None if the directory has no checkpoint; an error if it has one that cannot be read
    (:func:`check_checkpoint`, boltzflow.train.state.read_state)."""
    check_checkpoint(out)
    resumed = read_checkpoint(out / "checkpoint.eqx", out / "checkpoint.json",
                              lambda p: read_state(p, like, RESUME_HINT))
    if resumed is None:
        return None
    state, info = resumed
    step = int(state.step)
    info["evals"] = [e for e in info["evals"] if e["step"] <= step]
    history = read_history(out, step)
    if (out / "metrics.jsonl").exists() and writes_files():
        text = "".join(json.dumps(r) + "\n" for r in history)
        write_atomic(out / "metrics.jsonl", lambda f: f.write(text.encode()))
    return state, info, history


def read_history(out: Path, last_step: int | None = None) -> list[dict]:
    """The metrics logged in ``out/metrics.jsonl`` (steps up to ``last_step``), skipping a line cut short by a
    kill; [] without the file."""
    path = out / "metrics.jsonl"
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:  # a line cut short by a kill
            continue
        if last_step is None or row.get("step", 0) <= last_step:
            rows.append(row)
    return rows


class Progress:
    """tqdm progress bar that can be switched off (tests, CI logs)."""

    def __init__(self, total: int, initial: int, enabled: bool):
        self.bar = None
        if enabled:
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


class Trained(NamedTuple):
    """What :func:`train` returns: the final state, a summary, and the logged metrics (one dict per logged step,
    as in ``metrics.jsonl``, those of earlier sessions of a resumed run included)."""

    state: TrainState
    summary: dict
    history: list


def train(out: str | Path | None, settings: TrainSettings, model, optimizer, method: Method, target, *,
          progress: bool = True, log_every: int = 10, callback: Callable[[int, dict], None] | None = None,
          should_stop: Callable[[], bool] | None = None) -> Trained:
    """Train ``model`` by ``method``, in memory (``out`` None: nothing is written) or into the run directory
    ``out`` (resuming from its checkpoint if it has one). ``callback(step, metrics)`` is called at every logged
    step. ``should_stop()`` is asked after each compiled call (at most ``log_every`` steps): True stops training
    there, with a checkpoint at the step reached (summary ``stopped_by_request``). The optimiser must be the one
    ``method`` was built with."""
    ts = settings
    if ts.batch_size % batch_devices():
        raise BoltzflowError(f"train.batch_size ({ts.batch_size}) must be a multiple of the {batch_devices()} "
                             f"devices it is split over (--devices)")
    files = out is not None and writes_files()
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
    key = seed_key(ts.seed)
    info = {"time_s": 0.0, "evals": []}
    resumed = None if out is None else _resume(out, state_like(model, optimizer, method, key, ts.ema_decay))
    history = []
    if resumed is None:
        t_init = time.perf_counter()
        state = initial_state(model, optimizer, method, key, ts.ema_decay)  # e.g. seeding FAB's buffer: training time
        info["time_s"] = time.perf_counter() - t_init
        if files:
            (out / "metrics.jsonl").write_text("")
    else:
        state, info, history = resumed
    state = replicated(state)

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

        @jax.jit  # traced once: eval_shape's trace below is reused by the loop's (jit caches traces by signature)
        def step(st):
            new, metrics, k_eval = one_step(eqx.combine(st, static))
            return replicated(eqx.filter(new, eqx.is_array)), metrics, k_eval

        def body(_, carry):
            return step(carry[0])

        shapes = jax.eval_shape(step, dynamic)[1:]  # traced, not compiled
        zeros = jax.tree_util.tree_map(lambda a: jnp.zeros(a.shape, a.dtype), shapes)
        dynamic, metrics, k_eval = jax.lax.fori_loop(0, n, body, (dynamic, *zeros))
        return eqx.combine(dynamic, static), metrics, jax.random.wrap_key_data(k_eval)

    flow_ess = (make_flow_ess_fn(target, ts.eval_samples) if method.ess is None else
                eqx.filter_jit(lambda m, k: method.ess(m, k, ts.eval_samples)))
    cost = method.cost(model)

    def evaluations(steps: int) -> dict:
        """Flow and target evaluations spent by training up to ``steps`` (boltzflow.train.api.Cost)."""
        return {k: int(cost.init.get(k, 0) + steps * cost.step.get(k, 0)) for k in ("flow_evals", "target_evals")}

    start_step = int(state.step)
    bar = Progress(ts.steps, start_step, progress)
    t_train = info["time_s"]
    t0 = time.perf_counter()
    last_ess = info["evals"][-1]["ess"] if info["evals"] else float("nan")
    stopped_by_time = stopped_by_request = False
    bar_at = start_step
    with open(out / "metrics.jsonl" if files else os.devnull, "a") as log:
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
            m.update(step=done, time_s=round(t_train, 3), skipped_steps=int(state.opt_state.total_notfinite),
                     **evaluations(done))
            if evaluate_now:
                last_ess = float(flow_ess(state.final_model, k_eval))
                m["flow_ess"] = last_ess
                info["evals"].append({"step": done, "time_s": m["time_s"], "ess": last_ess})
                t0 = time.perf_counter()  # evaluation does not count as training time
            _log(log, m, out)
            history.append(m)
            if callback is not None:
                callback(done, m)
            bar.update(done - bar_at, loss=m.get("loss", float("nan")), ess=last_ess)
            bar_at = done
            stopped_by_time = ts.time_limit_s is not None and t_train >= ts.time_limit_s and done < ts.steps
            stopped_by_request = should_stop is not None and done < ts.steps and bool(should_stop())
            if jax.process_count() > 1:  # every host stops at the same step: process 0's clock and request decide
                stopped_by_time, stopped_by_request = (bool(s) for s in multihost_utils.broadcast_one_to_all(
                    np.asarray([stopped_by_time, stopped_by_request])))
            if (stopped_by_time or stopped_by_request or checkpoint_now) and files:
                info["time_s"] = t_train
                write_checkpoint(out, state, info | {"step": done})
            if stopped_by_time or stopped_by_request:
                break
    bar.close()
    hosts_meet("checkpoint written")  # the others may read the run directory next (the report)
    summary = {"steps": int(state.step), "time_s": t_train, "stopped_by_time_limit": stopped_by_time,
               "stopped_by_request": stopped_by_request, "flow_ess": last_ess, "evals": info["evals"],
               **evaluations(int(state.step))}
    return Trained(state, summary, history)
