"""The training state and everything that makes it: settings, optimiser, parameter average, step 0.

- :class:`TrainSettings`: a config's ``train`` section.
- :func:`make_optimizer`: global-norm clipping -> Adam with linear warm-up and cosine decay; ``optax.apply_if_finite``
  skips any update whose gradient is not finite (counted in the metrics as ``skipped_steps``).
- :func:`update_average`: the optional exponential moving average of the parameters (``train.ema_decay``) with the
  usual warm-up ``decay_t = min(decay, (1 + t) / (10 + t))``, kept beside the trained model; it is the model that
  evaluation, sampling and ``load_run`` use (the method itself, e.g. FAB's AIS, keeps using the online model).
- :class:`TrainState`, :func:`initial_state` (step 0; FAB fills its buffer there) and :func:`state_like` (shapes
  only, to restore a checkpoint).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import optax

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
    return optax.apply_if_finite(opt, max_consecutive_errors=50)


def initial_state(model, optimizer, method: Method, key, ema_decay: float | None) -> TrainState:
    """The TrainState of step 0 (for FAB with buffer this runs AIS to fill the buffer)."""
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
