"""FAB's prioritised replay buffer (Midgley et al., ICLR 2023, Sec. 4.2 and Algorithm 1).

The buffer is a fixed-size ring of AIS samples ``(x, log w, log q_old)``: ``log w`` is the AIS importance weight
with respect to the AIS target p^alpha q^(1-alpha), ``log q_old`` the flow's log density when the sample was last
touched. Minibatches are drawn **without replacement** with probability proportional to w via the Gumbel top-k
trick: the indices of the k largest ``log w_i + G_i`` (G_i iid Gumbel) are a sample of k items without replacement
from the categorical distribution softmax(log w) (Vieira 2014; Kool et al. 2019).

Because q changes after the samples were drawn, FAB corrects each sampled weight (Algorithm 1, line 9):

    w_i  <-  w_i * (q_theta(x_i) / q_old(x_i))^(1 - alpha),       log q_old(x_i) <- log q_theta(x_i),

which keeps w_i proportional to p^alpha q_theta^(1-alpha) / q_AIS for the current flow. A sample whose correction
is not finite is dropped (its log w set to -inf, so it is never drawn again) instead of poisoning the run.

All functions are pure and jittable; the state is a NamedTuple of fixed-shape arrays.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from boltzflow.errors import BoltzflowError
from boltzflow.sharding import shard_batch


class BufferState(NamedTuple):
    x: jax.Array  # (N, dim)
    log_w: jax.Array  # (N,), -inf in empty or dropped slots
    log_q_old: jax.Array  # (N,)
    index: jax.Array  # () next slot to write (ring)
    length: jax.Array  # () number of filled slots, <= N


class BufferSample(NamedTuple):
    x: jax.Array  # (n, dim)
    log_w: jax.Array  # (n,)
    log_q_old: jax.Array  # (n,)
    idx: jax.Array  # (n,) slots, for adjust
    valid: jax.Array  # (n,) False for padding drawn from empty or dropped slots


class Buffer(NamedTuple):
    init: callable
    add: callable
    sample: callable
    adjust: callable
    max_length: int
    min_length: int


def build_prioritised_buffer(dim: int, max_length: int, min_length: int) -> Buffer:
    """Builds the pure functions of a prioritised buffer holding up to ``max_length`` samples.

    ``min_length`` is the number of samples the training loop puts in (by AIS) before the first minibatch.
    """
    if not 0 < min_length <= max_length:
        raise BoltzflowError(f"buffer needs 0 < min_length <= max_length, got {min_length}, {max_length}")

    def init(dtype=jnp.float32) -> BufferState:
        return BufferState(
            x=jnp.zeros((max_length, dim), dtype),
            log_w=jnp.full((max_length,), -jnp.inf, dtype),
            log_q_old=jnp.zeros((max_length,), dtype),
            index=jnp.zeros((), jnp.int32),
            length=jnp.zeros((), jnp.int32),
        )

    def add(state: BufferState, x: jax.Array, log_w: jax.Array, log_q: jax.Array) -> BufferState:
        """Writes a batch at the ring position, overwriting the oldest entries; non-finite weights get -inf."""
        n = x.shape[0]
        if n > max_length:
            raise BoltzflowError(f"cannot add {n} samples to a buffer of size {max_length}")
        idx = (state.index + jnp.arange(n)) % max_length
        ok = jnp.isfinite(log_w) & jnp.isfinite(log_q) & jnp.all(jnp.isfinite(x), axis=-1)
        return BufferState(
            x=state.x.at[idx].set(jnp.where(ok[:, None], x, 0.0)),
            log_w=state.log_w.at[idx].set(jnp.where(ok, log_w, -jnp.inf)),
            log_q_old=state.log_q_old.at[idx].set(jnp.where(ok, log_q, 0.0)),
            index=(state.index + n) % max_length,
            length=jnp.minimum(state.length + n, max_length),
        )

    def sample(key: jax.Array, state: BufferState, n: int) -> BufferSample:
        """n entries without replacement, P(i) proportional to w_i (Gumbel top-k).

        If fewer than n entries have finite weight, the rest of the draw is padding with ``valid`` False.
        """
        gumbel = jax.random.gumbel(key, state.log_w.shape, state.log_w.dtype)
        _, idx = jax.lax.top_k(state.log_w + gumbel, n)
        idx = shard_batch(idx)  # the replicated buffer is read by each device for its rows of the minibatch
        log_w = state.log_w[idx]
        return BufferSample(state.x[idx], log_w, state.log_q_old[idx], idx, jnp.isfinite(log_w))

    def adjust(state: BufferState, idx: jax.Array, log_w_correction: jax.Array, log_q_new: jax.Array) -> BufferState:
        """Multiplies w by exp(correction) and stores the new log q at ``idx``; non-finite entries are dropped."""
        new_log_w = state.log_w[idx] + log_w_correction
        ok = jnp.isfinite(new_log_w) & jnp.isfinite(log_q_new)
        return state._replace(
            log_w=state.log_w.at[idx].set(jnp.where(ok, new_log_w, -jnp.inf)),
            log_q_old=state.log_q_old.at[idx].set(jnp.where(ok, log_q_new, 0.0)),
        )

    return Buffer(init, add, sample, adjust, max_length, min_length)
