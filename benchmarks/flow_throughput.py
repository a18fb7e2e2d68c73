"""Flow throughput: log q(x) and its gradient w.r.t. the flow parameters, in samples per second.

For each configuration we jit ``value_and_grad(mean log q(x))`` w.r.t. the trainable leaves, time its compilation,
warm it up, then report the median of several timed repeats at a fixed batch (float32 unless --float64).
Configurations (parameters randomised away from the identity so no shortcut is measured):

- realnvp-32: ``make_realnvp(dim=32, n_layers=10, hidden=64, depth=2)``
- nsf-60: ``make_nsf(dim=60, n_layers=12, bins=8, hidden=64, depth=2)`` with the odd dims (30 of 60) circular

Usage:  python benchmarks/flow_throughput.py [--quick] [--scan] [--batch 1024] [--repeats 20] [--out results.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from boltzflow.flows import make_nsf, make_realnvp


def _configs(quick: bool, scan: bool):
    scale = 0.25 if quick else 1
    return {
        "realnvp-32": lambda key: make_realnvp(
            key, 32, n_layers=max(2, int(10 * scale)), hidden=64, depth=2, scan=scan
        ),
        "nsf-60 (30 circular)": lambda key: make_nsf(
            key,
            60,
            n_layers=max(2, int(12 * scale)),
            circular=np.arange(60) % 2 == 1,
            bins=8,
            hidden=64,
            depth=2,
            scan=scan,
        ),
    }


def _perturb(flow, key, scale=0.05):
    """Move every zero-initialised leaf (conditioner output layers) slightly off the identity."""
    arrays, static = eqx.partition(flow, eqx.is_inexact_array)
    leaves, tree = jax.tree.flatten(arrays)
    keys = jax.random.split(key, len(leaves))
    leaves = [a + scale * jax.random.normal(k, a.shape, a.dtype) * (not np.any(a)) for a, k in zip(leaves, keys)]
    return eqx.combine(jax.tree.unflatten(tree, leaves), static)


def bench(name, build, batch: int, repeats: int, warmup: int, seed: int = 0) -> dict:
    key_model, key_pert, key_x = jax.random.split(jax.random.key(seed), 3)
    flow = _perturb(build(key_model), key_pert)
    x = flow.sample(key_x, batch)
    params, static = eqx.partition(flow, eqx.is_inexact_array)
    n_params = sum(a.size for a in jax.tree.leaves(params))

    def loss(p, x):
        return jnp.mean(eqx.combine(p, static).log_prob(x))

    step = jax.jit(jax.value_and_grad(loss))
    t0 = time.perf_counter()
    compiled = step.lower(params, x).compile()
    compile_s = time.perf_counter() - t0

    for _ in range(warmup):
        jax.block_until_ready(compiled(params, x))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(compiled(params, x))
        times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    value, _ = compiled(params, x)
    assert np.isfinite(float(value)), f"{name}: non-finite log q"
    return {
        "flow": name,
        "dim": flow.dim,
        "params": int(n_params),
        "batch": batch,
        "compile_s": round(compile_s, 3),
        "median_ms": round(1e3 * med, 3),
        "samples_per_s": round(batch / med, 1),
    }


def _table(rows) -> str:
    head = "| flow | dim | params | batch | compile (s) | log q + grad (ms) | samples/s |"
    lines = [head, "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(
            f"| {r['flow']} | {r['dim']} | {r['params']} | {r['batch']} | {r['compile_s']:.2f} | "
            f"{r['median_ms']:.2f} | {r['samples_per_s']:,.0f} |"
        )
    return "\n".join(lines)


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smoke run: shallow flows, small batch, few repeats")
    ap.add_argument("--batch", type=int, default=None, help="batch size (default 1024; 128 with --quick)")
    ap.add_argument("--repeats", type=int, default=None, help="timed repeats (default 20; 3 with --quick)")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--scan", action="store_true", help="build the flows with scan=True (lax.scan over layer pairs)")
    ap.add_argument("--out", default=None, help="write the results as JSON to this file")
    args = ap.parse_args(argv)
    batch = args.batch or (128 if args.quick else 1024)
    repeats = args.repeats or (3 if args.quick else 20)

    rows = [bench(name, build, batch, repeats, args.warmup) for name, build in _configs(args.quick, args.scan).items()]
    table = _table(rows)
    print(table)
    if args.out:
        meta = {
            "jax": jax.__version__,
            "backend": jax.default_backend(),
            "device": str(jax.devices()[0].device_kind),
            "cpu_count": __import__("os").cpu_count(),
            "machine": platform.machine(),
            "dtype": "float32",
            "quick": args.quick,
            "scan": args.scan,
            "repeats": repeats,
        }
        with open(args.out, "w") as fh:
            json.dump({"meta": meta, "results": rows, "table": table}, fh, indent=2)
    return rows


if __name__ == "__main__":
    main()
