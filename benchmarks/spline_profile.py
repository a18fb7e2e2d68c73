"""Where the rational-quadratic spline spends its time on XLA's CPU backend (issue 33), per compiled operation.

    python benchmarks/spline_profile.py [--n 1024] [--top 12]

The spline's inverse with its gradient (what log q and its gradient cost inside AIS) on n x 30 elements, 8 bins,
20 real and 10 circular dimensions, traced with ``jax.profiler`` over 10 calls; printed: the compiled operations
(fusions) taking the most time per call, and beside them the elementwise functions the spline's parameters use,
each alone on 614,400 floats (median of 50 calls).
"""

from __future__ import annotations

import argparse
import collections
import glob
import statistics
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

from boltzflow.flows.spline import rq_spline_inverse, rq_spline_params


def _median_ms(fn, *args, repeats: int = 50) -> float:
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t)
    return 1e3 * statistics.median(times)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1024)
    ap.add_argument("--top", type=int, default=12)
    args = ap.parse_args(argv)
    dims, bins = 30, 8
    circular = np.arange(dims) >= 20
    raw = 0.5 * jax.random.normal(jax.random.key(0), (args.n, dims, 3 * bins))
    y = 3.0 * jax.random.normal(jax.random.key(1), (args.n, dims))

    def loss(y, raw):
        w, h, d = rq_spline_params(raw, circular)
        x, log_det = rq_spline_inverse(y, w, h, d, 5.0, circular)
        return jnp.sum(x * x) + jnp.sum(log_det)

    step = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))
    print(f"spline inverse with gradient, {args.n} x {dims} elements: {_median_ms(step, y, raw):.2f} ms per call")
    with tempfile.TemporaryDirectory() as trace_dir:
        jax.profiler.start_trace(trace_dir)
        for _ in range(10):
            jax.block_until_ready(step(y, raw))
        jax.profiler.stop_trace()
        trace = max(glob.glob(f"{trace_dir}/**/*.xplane.pb", recursive=True))
        profile = jax.profiler.ProfileData.from_file(trace)
    total = collections.Counter()
    for plane in profile.planes:
        for line in plane.lines:
            for event in line.events:
                if "fusion" in event.name or event.name.startswith("wrapped"):
                    total[event.name] += event.duration_ns
    print(f"  compiled operations, ms per call (top {args.top} of {len(total)}):")
    for name, ns in total.most_common(args.top):
        print(f"    {ns / 1e7:7.3f}  {name}")
    x = jax.random.normal(jax.random.key(2), (614_400,))
    print("  elementwise alone, 614,400 floats, ms:")
    for name, fn in (("exp", jnp.exp), ("expm1", jnp.expm1), ("log", jnp.log), ("log1p", jnp.log1p)):
        print(f"    {name:6s} {_median_ms(jax.jit(fn), x):.3f}")


if __name__ == "__main__":
    main()
