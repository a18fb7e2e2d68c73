"""An exploration kept in a run directory, so that the report after training and a later ``boltzflow evaluate``
of the same run pay for the missing-mass check's exploration once (boltzflow.evaluate).

An exploration (boltzflow.explore) depends on the target, its settings, its budget, its key and its dtype, never on
the model. A stored one is reused only if all of these match: the settings, budget, key and dtype are written
beside the samples (``meta``) and compared whole; the target, which may be any Python function, is compared by its
values, re-evaluating log p at up to :data:`PROBES` stored samples and asking for the stored values to within
float32 rounding. Anything else (another target, other settings, a file cut short or unreadable) means the
exploration is run again and the file replaced, written whole or not at all (boltzflow.checkpoint.write_atomic).
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any, Callable

import jax.numpy as jnp
import numpy as np

from boltzflow.checkpoint import write_atomic
from boltzflow.explore import Exploration

#: stored samples at which log p is evaluated again to recognise the target
PROBES = 16
ARRAYS = ("x", "log_w", "log_p", "mean", "std", "center", "scale")


def save_exploration(path: str | Path, e: Exploration, meta: dict[str, Any]) -> None:
    """Write ``e`` and ``meta`` (JSON-able: what it was run with) to ``path`` (.npz), atomically."""
    scalars = {k: v for k, v in vars(e).items() if k not in ARRAYS}
    scalars["rounds"] = list(scalars["rounds"])
    doc = json.dumps({"meta": meta, "scalars": scalars})
    write_atomic(path, lambda f: np.savez(f, doc=np.array(doc), **{k: getattr(e, k) for k in ARRAYS}))


def load_exploration(path: str | Path, meta: dict[str, Any],
                     log_p: Callable[[jnp.ndarray], jnp.ndarray]) -> Exploration | None:
    """The exploration stored in ``path`` if it was run with ``meta`` on a target whose log density is ``log_p``
    (module docstring), else None."""
    try:
        with np.load(path) as f:
            doc = json.loads(str(f["doc"]))
            arrays = {k: np.asarray(f[k]) for k in ARRAYS}
    except (OSError, KeyError, ValueError, zipfile.BadZipFile, json.JSONDecodeError):
        return None
    if doc.get("meta") != json.loads(json.dumps(meta)):
        return None
    ok = np.flatnonzero(np.isfinite(arrays["log_p"]))[:PROBES]
    if ok.size:
        again = np.asarray(log_p(jnp.asarray(arrays["x"][ok], jnp.dtype(meta["dtype"]))), np.float64)
        if not np.allclose(again, arrays["log_p"][ok], rtol=1e-4, atol=1e-3):
            return None
    scalars = doc["scalars"]
    scalars["rounds"] = tuple(scalars["rounds"])
    return Exploration(**arrays, **scalars)
