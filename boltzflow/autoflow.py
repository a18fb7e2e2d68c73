"""The ``auto`` flow type: a flow sized and placed for a target nobody has tuned a preset for.

::

    flow: {type: auto}                      # everything chosen from the target
    flow: {type: auto, bounds: [-50, 50]}   # the box holding the mass, one [lo, hi] or one per dimension

:func:`resolve` turns these settings into concrete flow settings (an ``nsf`` or ``realnvp`` of
boltzflow.flows.builders) before anything is built, and the run's config.yaml records what was chosen:

- size from the dimension d: ``n_layers`` 8 (4 coupling pairs, each followed by a learned LU map of all
  dimensions, so nothing depends on the target's axes) for d <= 64, else 12; ``hidden`` = 4 d rounded up to a
  multiple of 32, within [64, 256] (the tuned presets: 2-D GMM 64-80, 32-D Many Well 128);
- placement, a fixed last layer x = loc + R (scale * y) (boltzflow.flows.standardize; R the frame below): from
  ``bounds``, loc = the box's centre and scale = its width / 6 (the box becomes [-3, 3]); without bounds, from a short
  exploration of the target that does not use a flow (boltzflow.explore: tempered SMC from a Gaussian grown until it
  is ten times wider than the mass it finds and the mass stops moving), loc = the mean and scale = the standard
  deviation per dimension of the SMC end points, importance weighted when the weights are worth at least 50 samples
  (the weights correct for kernels that have not mixed: in a 2-D Gaussian with scales 3 and 0.5, 11 reference units
  from the origin, the end points' plain mean was 3.7 where the weighted one is 10), unweighted otherwise (each end
  point has just made HMC moves under p, so it lies where p's mass is, while the weights of one AIS run in 32
  dimensions can be worth three samples, and a weighted mean of three points is no scale);
- frame (``frame: hessian``, the default): the flow's coordinates are rotated into the target's own axes, the
  eigenvectors that the Hessians of log p share (boltzflow.frame), read at 256 of the exploration's end points (or
  of the box), so that the coupling layers split coordinates along which the target factorises; the rotation is
  kept only when it makes the Hessians markedly more diagonal (an axis-aligned target keeps its axes), and the
  scales above are then measured along the new axes. ``frame: axes`` keeps the target's axes;
- spline bound B (nsf): the standardized extent of the explored mass, the 99.9 % quantile of max_i |y_i| over
  the end points times 1.25, within [5, 20] (5 with bounds: the box is [-3, 3]); the splines' identity tails
  carry anything beyond.

The flow then starts as N(loc, R diag(scale^2) R^T), already covering the mass the exploration found, and FAB's AIS runs
in the standardized coordinates (below the fixed layer), where one scalar HMC step size suits every dimension.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np

from boltzflow.errors import BoltzflowError
from boltzflow.explore import explore, parse_bounds, weighted_moments
from boltzflow.flows.builders import FLOW_SETTINGS
from boltzflow.frame import hessian_frame
from boltzflow.settings import Tagged, parse_tagged

MIN_WEIGHTED_ESS = 50  # effective samples below which the exploration's moments are taken unweighted
MAX_SCALE_RATIO = 1e4  # scales below max(scale) / this are raised to it (a collapsed direction is not a scale)


@dataclass(frozen=True)
class AutoSettings:
    """``flow: {type: auto, ...}`` (module docstring). ``flow``: the flow type chosen; ``n_layers`` / ``hidden``:
    override the sizing rule; ``bounds``: [lo, hi] for every dimension, or a list of d such pairs;
    ``explore_samples``: SMC particles of the exploration's final round (at most; boltzflow.explore, its budget);
    ``frame``: ``hessian`` rotates the flow's coordinates into the target's own axes (boltzflow.frame, from the
    Hessians of log p at ``frame_points`` points of the explored mass, or of the box), ``axes`` keeps the target's."""

    flow: Literal["nsf", "realnvp"] = "nsf"
    n_layers: int | None = None
    hidden: int | None = None
    bounds: list[Any] | None = None
    explore_samples: int = 4096
    frame: Literal["hessian", "axes"] = "hessian"
    frame_points: int = 256

    def __post_init__(self):
        if self.explore_samples < 256:
            raise BoltzflowError(f"flow (auto).explore_samples must be >= 256, got {self.explore_samples}")
        if self.frame_points < 2:
            raise BoltzflowError(f"flow (auto).frame_points must be >= 2, got {self.frame_points}")


def _size(dim: int, s: AutoSettings) -> tuple[int, int]:
    n_layers = s.n_layers or (8 if dim <= 64 else 12)
    hidden = s.hidden or int(min(256, max(64, 32 * math.ceil(4 * dim / 32))))
    return n_layers, hidden


def resolve(s: AutoSettings, target, key: jax.Array, dtype=jnp.float32) -> tuple[Tagged, dict]:
    """Concrete flow settings for ``target`` (module docstring) and a report of how they were chosen (the
    exploration's rounds and estimates, the frame, and the wall-clock the choice took, for the run's auto.json)."""
    start = time.perf_counter()
    dim = target.dim
    n_layers, hidden = _size(dim, s)
    k_explore, k_points, k_frame = jax.random.split(key, 3)
    if s.bounds is not None:
        lo, hi = parse_bounds(s.bounds, dim)
        loc, std = (lo + hi) / 2, (hi - lo) / 6
        points = np.asarray(jax.random.uniform(k_points, (s.frame_points, dim), minval=lo, maxval=hi))
        report = {"source": "bounds", "bounds": np.stack([lo, hi], 1).tolist()}
    else:
        e = explore(k_explore, target.log_prob, dim, n=s.explore_samples, dtype=dtype)
        finite = np.all(np.isfinite(e.x), axis=1) & np.isfinite(e.log_w)
        x = e.x[finite]
        weighted = e.ess * len(e.x) >= MIN_WEIGHTED_ESS
        loc = e.mean if weighted else x.mean(axis=0)
        if len(x) < 2 or not np.all(np.isfinite(loc)):
            raise BoltzflowError(f"flow (auto): exploring the target found no finite mass (log Z {e.log_z}); give "
                                 f"the flow bounds: flow: {{type: auto, bounds: [lo, hi]}}")
        points = x[np.asarray(jax.random.permutation(k_points, len(x)))[: s.frame_points]]
        report = {"source": "exploration", "weighted": bool(weighted), **e.summary()}
    rotation, rotated = np.eye(dim), False
    if s.frame == "hessian":
        frame = hessian_frame(target.log_prob, points.astype(np.dtype(dtype)), k_frame)
        rotation, rotated = frame.rotation, frame.rotated
        report["frame"] = frame.summary()
    if s.bounds is not None:  # the box's per-dimension std (width / 6), seen along the frame's axes
        scale = np.sqrt((rotation**2).T @ std**2)
        extent = None
    else:
        z = (x - loc) @ rotation
        scale = weighted_moments(z, e.log_w[finite])[1] if weighted else z.std(axis=0)
        scale = np.maximum(scale, scale.max() / MAX_SCALE_RATIO)
        if not (np.all(np.isfinite(scale)) and scale.max() > 0):
            raise BoltzflowError(f"flow (auto): the explored mass has no finite spread (log Z {e.log_z}); give "
                                 f"the flow bounds: flow: {{type: auto, bounds: [lo, hi]}}")
        extent = np.quantile(np.max(np.abs(z / scale), axis=1), 0.999)
    bound = 5.0 if extent is None else float(np.clip(math.ceil(1.25 * extent), 5.0, 20.0))
    options = {"n_layers": n_layers, "hidden": hidden, "lu": True,
               "loc": [round(float(v), 6) for v in loc], "scale": [round(float(v), 6) for v in scale]}
    if rotated:
        options["rotation"] = [[float(v) for v in row] for row in rotation]
    if s.flow == "nsf":
        options["bound"] = bound
    chosen = parse_tagged({"type": s.flow, **options}, FLOW_SETTINGS, "type", "flow")
    report["chosen"] = {"type": s.flow, **options}
    report["time_s"] = round(time.perf_counter() - start, 2)
    return chosen, report
