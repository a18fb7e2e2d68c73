"""A reference log Z of a particle target (issue 34), by importance sampling from a broad Gaussian.

    python benchmarks/particle_log_z.py [--target dw4] [--scale 2.5] [--batches 100]

log Z of p over the target's centre-of-mass-free coordinates (the ``dim`` its flows model, the log Z their reports
give): Z = E_g[p~(y) / g(y)] with g = N(0, scale^2 I), on ``batches`` x 10^6 samples, in float64 sums of
float32 log weights; its standard error by the delta method, s.e.(log Z) = sd(w) / (sqrt(n) mean(w)). Unbiased
in Z at any scale; the scale only sets the variance, so two scales agreeing within their errors check it. Fit
for a target of few dimensions (DW-4's 6): the printed ESS fraction says how few samples carry the estimate.
"""

from __future__ import annotations

import argparse
import math
import time

import jax
import jax.numpy as jnp
import numpy as np

import boltzflow as bf

BATCH = 1_000_000


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--target", default="dw4")
    p.add_argument("--scale", type=float, default=2.5)
    p.add_argument("--batches", type=int, default=100)
    args = p.parse_args()
    target = bf.make_target(args.target)
    d, s = target.dim, args.scale

    @jax.jit
    def batch(key):  # the batch's largest log weight and its sums of w and w^2 relative to it
        y = s * jax.random.normal(key, (BATCH, d))
        log_w = target.log_prob(y) + 0.5 * jnp.sum((y / s) ** 2, 1) + d * math.log(s) + 0.5 * d * math.log(2 * math.pi)
        top = jnp.max(log_w)
        return top, jnp.sum(jnp.exp(log_w - top)), jnp.sum(jnp.exp(2 * (log_w - top)))

    start = time.time()
    parts = np.array([[float(v) for v in batch(jax.random.key(i))] for i in range(args.batches)])
    top = parts[:, 0].max()
    s1 = np.sum(parts[:, 1] * np.exp(parts[:, 0] - top))
    s2 = np.sum(parts[:, 2] * np.exp(2 * (parts[:, 0] - top)))
    n = BATCH * args.batches
    mean = s1 / n
    se = math.sqrt(max(s2 / n - mean**2, 0.0) / n) / mean
    print(f"{args.target}: log Z = {top + math.log(mean):.4f} +- {se:.4f} (g = N(0, {s}^2 I), {n:.0e} samples, "
          f"ESS fraction {s1**2 / s2 / n:.1e}, {time.time() - start:.0f} s)")


if __name__ == "__main__":
    main()
