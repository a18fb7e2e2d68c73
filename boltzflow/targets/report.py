"""What a target's report and pictures get from the evaluation of a model (boltzflow.evaluate, boltzflow.plot fill
them in; the targets layer computes with them, below the flows): :class:`Evaluation`, :class:`ModelSamples`,
:class:`Pictures`, :func:`apply_in_chunks`, and FAB's quadratic test function

    f(x) = a^T (x - 2b) + 2 (x - 2b)^T C (x - 2b),

a, b, C standard normal from ``numpy.random.default_rng(0)``, drawn in that order.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from boltzflow.estimators import WeightSums


@dataclass(frozen=True)
class Evaluation:
    """An evaluation of a model, as a target's ``report`` gets it.

    Attributes:
        model: the model evaluated.
        key: the evaluation's key.
        sampled: ``sampled(target) -> dict``, the report on the model's importance-weighted samples of ``target``
            (boltzflow.evaluate), with ``target.metrics`` among its entries.
    """

    model: Any
    key: jax.Array
    sampled: Callable[[Any], dict]


@dataclass(frozen=True)
class ModelSamples:
    """A model's samples of a target, as the target's ``metrics`` gets them.

    Attributes:
        n: samples drawn.
        chunk: samples per chunk of a stream (boltzflow.estimators.stream_sums).
        weights: the sums of their importance weights, with the target's ``test_values``.
        kept: what the target's ``keep_rows`` kept of them, concatenated.
        log_q: log q of points ``(m, dim) -> (m,)``, chunk at a time, traceable; for an SNF the backward-path
            estimate, a lower bound in expectation; None for samples of a sampler without a density (the
            equal-cost baseline, boltzflow.evaluate), whose report leaves out what needs one.
        key: for the target's exact samples (log_q's backward paths use it too).
        reference_key: for the target's reference values.
    """

    n: int
    chunk: int
    weights: WeightSums
    kept: dict[str, np.ndarray]
    log_q: Callable[[jax.Array], jax.Array] | None
    key: jax.Array
    reference_key: jax.Array


@dataclass(frozen=True)
class Pictures:
    """What a target's ``draw`` draws a model's pictures with (boltzflow.plot.draw_pictures).

    Attributes:
        name: the run's name, for titles.
        out_dir: where the pictures go.
        key: for the samples drawn.
        model: the model.
        weighted_samples: ``(key, n) -> (x, log w)`` of the model, host arrays.
        plot_samples, plot_molecule_samples, plot_image_grid, plot_histograms: the functions of boltzflow.plot.
        baseline: the equal-cost baseline's weighted samples (x, log w) where the run keeps them, else None.
    """

    name: str
    out_dir: Path
    key: jax.Array
    model: Any
    weighted_samples: Callable[[jax.Array, int], tuple[np.ndarray, np.ndarray]]
    plot_samples: Callable[..., Path]
    plot_molecule_samples: Callable[..., list[Path]]
    plot_image_grid: Callable[..., Path]
    plot_histograms: Callable[..., Path]
    baseline: tuple[np.ndarray, np.ndarray] | None = None


def quadratic_test_function(dim: int) -> Callable[[jax.Array], jax.Array]:
    """FAB's quadratic test function on R^dim (module docstring), ``(n, dim) -> (n,)``."""
    rng = np.random.default_rng(0)
    a, b, c = rng.standard_normal(dim), rng.standard_normal(dim), rng.standard_normal((dim, dim))
    a, b, c = (jnp.asarray(v, jnp.float32) for v in (a, b, c))

    def f(x):
        d = x - 2.0 * b
        return d @ a + 2.0 * jnp.einsum("ni,ij,nj->n", d, c.astype(x.dtype), d)

    return f


def apply_in_chunks(fn: Callable[[jax.Array], jax.Array], x: jax.Array, chunk: int) -> jax.Array:
    """``fn`` (a batched function, e.g. a jitted log density) over ``x`` ``chunk`` rows at a time, concatenated: bounds
    memory for large point sets (a reference set, a model's samples)."""
    return jnp.concatenate([fn(x[i:i + chunk]) for i in range(0, x.shape[0], chunk)])
