"""Where the maximum-likelihood terms get their x ~ p: a user's data set, or the target's exact sampler.

ML methods (``forward_kl``, ``kl_ml``) train on samples of p. A target with an exact sampler
provides fresh ones every step; otherwise, or to reproduce a finite-data protocol (the SNF paper trains on 10k
MD-like samples), the method option ``data`` names a file of samples, e.g. from molecular dynamics::

    method: {name: kl_ml, data: md_samples.npy}   # or: boltzflow train CONFIG --data md_samples.npy

The file is ``.npy`` (an ``(n, dim)`` array), ``.npz`` (array ``x``, or its only array) or a molecular reference in
the compact form the package ships and writes (``boltzflow/molecules/data/*.npz``, ``boltzflow reference``); every
step draws a minibatch with replacement from it. The samples should be (close to) equilibrium samples of p: ML
fits q to them, and any bias in them is learned; the importance weights w = p / q still correct estimates as long
as q covers p.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from boltzflow.errors import BoltzflowError
from boltzflow.molecules.reference import load_reference
from boltzflow.sharding import shard_batch

Sampler = Callable[[jax.Array, int], jax.Array]


def load_data(path, dim: int) -> np.ndarray:
    """Samples ``(n, dim)`` float32 from an ``.npy`` / ``.npz`` file, checked (shape, finite, n >= 1)."""
    p = Path(path)
    if not p.is_file():
        raise BoltzflowError(f"data file {str(path)!r} not found")
    try:
        loaded = np.load(p, allow_pickle=False)
    except Exception as e:
        raise BoltzflowError(f"data file {str(path)!r}: cannot read it as .npy / .npz ({e})") from None
    if isinstance(loaded, np.lib.npyio.NpzFile):
        with loaded:
            names = list(loaded.files)
            if "x_int16" in names:  # a molecular reference in its compact form
                loaded = load_reference(str(p))["x"]
            elif "x" not in names and len(names) != 1:
                raise BoltzflowError(f"data file {str(path)!r}: expected an array named 'x' or a single array, "
                                     f"found {names}")
            else:
                loaded = loaded["x" if "x" in names else names[0]]
    if not np.issubdtype(loaded.dtype, np.number):
        raise BoltzflowError(f"data file {str(path)!r}: samples must be numbers, got {loaded.dtype}")
    return _checked(loaded.astype(np.float32), dim, f"data file {str(path)!r}: samples")


def resampler(data) -> Sampler:
    """``sample(key, n)``: n rows of ``data`` drawn uniformly with replacement."""
    data = jnp.asarray(data)
    return lambda key, n: data[shard_batch(jax.random.randint(key, (n,), 0, data.shape[0]))]


def ml_sampler(target, data=None, what: str = "maximum likelihood") -> Sampler:
    """The sampler of x ~ p for ML terms: ``data`` (a path or an ``(n, dim)`` array) if given, else the target's
    exact sampler; a clear error if there is neither."""
    if data is not None:
        return resampler(load_data(data, target.dim) if isinstance(data, (str, Path)) else
                         _checked(np.asarray(data, np.float32), target.dim, "data"))
    if not target.can_sample:
        raise BoltzflowError(f"{what} needs samples of p: target {target.name!r} has no exact sampler, so give a "
                             f"data file (method option data: FILE.npy, or `boltzflow train ... --data FILE.npy`)")
    return lambda key, n: shard_batch(target.sample(key, n))


def _checked(x: np.ndarray, dim: int, what: str) -> np.ndarray:
    if x.ndim != 2 or x.shape[1] != dim or x.shape[0] < 1:
        raise BoltzflowError(f"{what} must have shape (n, {dim}), got {x.shape}")
    if not np.all(np.isfinite(x)):
        raise BoltzflowError(f"{what} must be finite ({int((~np.isfinite(x)).any(1).sum())} rows are not)")
    return x
