"""The training state and everything that makes it: settings, optimiser, parameter average, step 0.

- :class:`TrainSettings`: a config's ``train`` section.
- :func:`make_optimizer`: global-norm clipping -> Adam with linear warm-up and cosine decay; ``optax.apply_if_finite``
  skips any update whose gradient is not finite (counted in the metrics as ``skipped_steps``).
- :func:`update_average`: the optional exponential moving average of the parameters (``train.ema_decay``) with the
  usual warm-up ``decay_t = min(decay, (1 + t) / (10 + t))``, kept beside the trained model; it is the model that
  evaluation, sampling and ``load_run`` use (the method itself, e.g. FAB's AIS, keeps using the online model).
- :class:`TrainState`, :func:`initial_state` (step 0; FAB's buffer empty or seeded) and :func:`state_like` (shapes
  only, to restore a checkpoint); :func:`read_state` restores one, and :func:`check_state_file` checks a checkpoint
  file against those shapes before any work: a file cut short, corrupt or holding another model is one line naming
  it and what is wrong.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

from boltzflow.checkpoint import stored_arrays
from boltzflow.errors import BoltzflowError
from boltzflow.train.api import Method


@dataclass(frozen=True)
class TrainSettings:
    """The training loop's settings (boltzflow.train.loop)."""

    steps: int = 2000  # outer iterations (for FAB with buffer: AIS passes, each followed by n_updates steps)
    batch_size: int = 128
    lr: float = 3e-4
    warmup_steps: int = 100  # linear warm-up, then cosine decay to lr * final_lr_fraction
    final_lr_fraction: float = 0.1  # 1.0: constant learning rate after the warm-up
    ema_decay: float | None = None  # if set, evaluate/sample with an exponential moving average of the parameters
    clip_norm: float = 100.0  # global gradient-norm clipping
    time_limit_s: float | None = None  # stop (and checkpoint) after this much wall-clock of training
    eval_every: int = 200  # flow-IS ESS on eval_samples every this many steps
    eval_samples: int = 4096
    checkpoint_every: int = 500
    seed: int = 0
    dtype: Literal["float32", "float64"] = "float32"  # of the whole model, its samples and its training
    init_from: str | None = None  # a run directory whose trained model is this run's starting point

    def __post_init__(self):
        positive = ("steps", "batch_size", "lr", "eval_every", "eval_samples", "checkpoint_every", "clip_norm")
        for name in positive:
            if not getattr(self, name) > 0:
                raise BoltzflowError(f"train.{name} must be positive, got {getattr(self, name)!r}")
        if self.warmup_steps < 0 or not 0 < self.final_lr_fraction <= 1:
            raise BoltzflowError("train.warmup_steps must be >= 0 and train.final_lr_fraction in (0, 1]")
        if self.ema_decay is not None and not 0.0 < self.ema_decay < 1.0:
            raise BoltzflowError(f"train.ema_decay must be in (0, 1), got {self.ema_decay!r}")
        if self.time_limit_s is not None and not self.time_limit_s > 0:
            raise BoltzflowError(f"train.time_limit_s must be positive, got {self.time_limit_s!r}")


def seed_key(seed: int) -> jax.Array:
    """The key of a run's seed: ``jax.random.key(seed)`` for 0 <= seed < 2^32, and for larger seeds (up to 2^64) the
    key whose two words are the seed's high and low 32 bits, so every threefry key is some seed's
    (:func:`key_seed` is the inverse)."""
    if not 0 <= seed < 2**64:
        raise BoltzflowError(f"train.seed must be in [0, 2^64), got {seed}")
    return jax.random.wrap_key_data(jnp.asarray([seed >> 32, seed & 0xFFFFFFFF], jnp.uint32))


def key_seed(key: jax.Array) -> int:
    """The seed whose :func:`seed_key` is ``key`` (a typed threefry key, or a raw ``(2,)`` uint32 one)."""
    data = key if jnp.issubdtype(key.dtype, jnp.unsignedinteger) else jax.random.key_data(key)
    if data.shape != (2,) or (not jnp.issubdtype(key.dtype, jnp.unsignedinteger)
                              and str(jax.random.key_impl(key)) != "threefry2x32"):
        raise BoltzflowError(f"key: expected one threefry key (jax.random.key(seed)), got shape {key.shape}")
    hi, lo = (int(v) for v in jax.device_get(data))
    return (hi << 32) | lo


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


def make_optimizer(train: TrainSettings) -> optax.GradientTransformation:
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
    # never applied, however many come in a row: optax applies a non-finite update after max_consecutive_errors,
    # which turned every parameter to NaN in a far-mode training whose buffer held one sample of log q ~ -1e36
    return optax.apply_if_finite(opt, max_consecutive_errors=2**31 - 1)


def initial_state(model, optimizer, method: Method, key, ema_decay: float | None) -> TrainState:
    """The TrainState of step 0 (FAB's first step fills its buffer)."""
    k_method, k_run = jax.random.split(key)
    params = eqx.filter(model, eqx.is_inexact_array)
    # the average starts as a copy of the model (a separate buffer: training steps donate their input state)
    averaged = None if ema_decay is None else jax.tree_util.tree_map(
        lambda a: jnp.array(a, copy=True) if eqx.is_array(a) else a, model)
    return TrainState(model, optimizer.init(params), method.init(k_method, model), jax.random.key_data(k_run),
                      jnp.zeros((), jnp.int32), averaged)


def state_like(model, optimizer, method: Method, key, ema_decay: float | None) -> TrainState:
    """Shapes and dtypes of :func:`initial_state`, without computing it (for restoring a checkpoint)."""
    return eqx.filter_eval_shape(lambda k: initial_state(model, optimizer, method, k, ema_decay), key)


def _layout(like) -> list[tuple[str, tuple, Any]]:
    """(path, shape, dtype) of each leaf of ``like`` that a checkpoint stores, in the order equinox stores them
    (dtype None for a Python number, which NumPy stores in a dtype of its own choosing)."""
    out = []
    for path, x in jax.tree_util.tree_leaves_with_path(like):
        if isinstance(x, (jax.Array, jax.ShapeDtypeStruct, np.ndarray, np.generic)):
            out.append((jax.tree_util.keystr(path), tuple(x.shape), np.dtype(x.dtype)))
        elif eqx.is_array_like(x):
            out.append((jax.tree_util.keystr(path), (), None))
    return out


def state_file_problem(path, like) -> str | None:
    """What is wrong with the checkpoint file ``path`` as a state shaped like ``like`` (from its arrays' headers,
    boltzflow.checkpoint.stored_arrays): None, or how it is cut short, corrupt, or of another shape."""
    expected, (stored, damage) = _layout(like), stored_arrays(path)
    for (name, shape, dtype), (s_shape, s_dtype) in zip(expected, stored):
        if s_shape != shape or (dtype is not None and s_dtype != dtype):
            what = "shape" if s_shape != shape else "dtype (train.dtype)"
            return (f"holds a model of another {what} than config.yaml's flow: {name} is {s_shape} {s_dtype} there, "
                    f"{shape} {dtype or s_dtype} for the config")
    if damage == "corrupt":
        return f"is corrupt: what follows array {len(stored)} of {len(expected)} is not an array"
    if damage or len(stored) < len(expected):
        where = f"inside array {len(stored) + 1}" if damage else f"after array {len(stored)}"
        return f"is truncated: it ends {where} of {len(expected)} (it was not completely written or copied)"
    if len(stored) > len(expected):
        return (f"holds a model of another shape than config.yaml's flow: {len(stored)} arrays there, "
                f"{len(expected)} for the config")
    return None


def check_state_file(path, like, hint: str = "") -> None:
    """A one-line error naming ``path`` and what is wrong with it (:func:`state_file_problem`), then ``hint``; reads
    only the headers of its arrays."""
    problem = state_file_problem(path, like)
    if problem is not None:
        raise BoltzflowError(f"{path} {problem}{hint}")


def read_state(path, like, hint: str = "") -> TrainState:
    """The state stored in the checkpoint file ``path`` (boltzflow.train.loop.write_checkpoint) in the structure of
    ``like`` (:func:`state_like`); a file that is not such a state is a one-line error (:func:`check_state_file`)
    with the deserialisation's error chained."""
    try:
        state = eqx.tree_deserialise_leaves(path, like)
    except OSError as e:
        raise BoltzflowError(f"could not read {path}: {e}{hint}") from e
    except Exception as e:  # noqa: BLE001 -- numpy's and equinox's errors for a file that does not fit
        problem = state_file_problem(path, like) or f"is corrupt ({type(e).__name__}: {e})"
        raise BoltzflowError(f"{path} {problem}{hint}") from e
    check_state_file(path, like, hint)  # a file holding more arrays than ``like`` reads without an error
    return state
