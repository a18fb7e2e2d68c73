"""Step sizes per intermediate distribution, adapted towards a target acceptance rate (as FAB does).

The step size of distribution k (k = 1..K) factorises into a fixed scale (a scalar, or a (d,) per-dimension
vector), a shared part and a per-distribution part, all multiplicative, kept in log space:

    eps_k = scale * exp(log_shared + log_local_k).

After an AIS pass with mean acceptance probabilities acc_k (over the batch and the inner steps at k), and only
when adaptation is on (training; frozen at evaluation):

    log_local_k <- log_local_k + rate (acc_k - target)
    log_shared  <- log_shared  + rate (mean_k acc_k - target)

so a step size grows while its acceptance is above the target and shrinks below it; the shared part moves all
distributions together (fab-torch weakly ties its per-distribution step sizes through a common part and updates
both by fixed factors 1.05 / 1.02 on the sign of acc - target; this update is the smooth version of that rule). Both
parts are clipped to [-LOG_CLIP, LOG_CLIP] so a pass with every proposal rejected (e.g. non-finite densities)
cannot drive the step size to 0 or overflow. The state is a small pytree of arrays of a fixed dtype.
See docs/concepts/ais.md, "Step sizes".
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from boltzflow.errors import BoltzflowError

LOG_CLIP = 10.0
DEFAULT_RATE = 0.05


class StepSizeState(NamedTuple):
    """log_shared (), log_local (K,), scale () or (d,); eps_k as in the module docstring."""

    log_shared: jax.Array
    log_local: jax.Array
    scale: jax.Array

    @property
    def step_sizes(self) -> jax.Array:
        """eps_k = scale * exp(log_shared + log_local_k): shape (K,) for a scalar scale, (K, d) for a per-dimension
        one."""
        m = jnp.exp(self.log_shared + self.log_local)
        return m[:, None] * self.scale if self.scale.ndim else m * self.scale


def init_step_sizes(step_size, n_distributions: int, dtype=None) -> StepSizeState:
    """All K step sizes equal to ``step_size`` (a positive scalar or a (d,) vector; validated with numpy, so this
    also works while being traced, e.g. under ``eqx.filter_eval_shape``)."""
    dtype = jnp.zeros(()).dtype if dtype is None else dtype
    try:
        value = np.asarray(step_size, dtype=np.float64)
    except (TypeError, ValueError):
        value = np.asarray(np.nan)
    if value.ndim > 1 or value.size == 0 or not np.all(np.isfinite(value)) or not np.all(value > 0):
        raise BoltzflowError(f"step_size must be a positive number or a vector of them, got {step_size!r}")
    scale = jnp.asarray(value, dtype)
    return StepSizeState(jnp.zeros((), dtype), jnp.zeros((n_distributions,), dtype), scale)


def adapt_step_sizes(state: StepSizeState, accept: jax.Array, target: float, rate: float = DEFAULT_RATE,
                     adapt=True) -> StepSizeState:
    """The update of the module docstring given the per-distribution mean acceptance ``accept`` (K,); ``adapt`` may
    be a traced bool."""
    if adapt is False or state.log_local.shape[0] == 0:
        return state
    dtype = state.log_shared.dtype
    acc = accept.astype(dtype)
    local = jnp.clip(state.log_local + rate * (acc - target), -LOG_CLIP, LOG_CLIP)
    shared = jnp.clip(state.log_shared + rate * (jnp.mean(acc) - target), -LOG_CLIP, LOG_CLIP)
    on = jnp.asarray(adapt)
    return StepSizeState(jnp.where(on, shared, state.log_shared), jnp.where(on, local, state.log_local),
                         state.scale)
