"""AIS throughput: HMC-AIS on Many Well, target evaluations per second and scaling with batch and dimension.

Setting (FAB's Many Well 32 configuration): K = 8 intermediate distributions, one HMC move per distribution with
4 leapfrog steps, alpha = 1 (AIS to p; alpha only changes the weights w_q, w_p, not the cost), batch 1024. The
initial distribution q is N(0, 2^2 I), a stand-in for a flow: it isolates the cost of AIS and the target; with a
real flow every log q evaluation below also costs a flow inverse pass (and its gradient).

What is counted. Every new position costs one evaluation of log p *with its gradient* (a forward and a reverse
pass, ``value_and_grad``) and the same for log q; nothing is evaluated twice (densities are cached in the points).
Per AIS pass and per sample that is

    1 (the initial point) + K * n_inner_steps * n_leapfrog = 1 + 8 * 1 * 4 = 33

target value+gradient evaluations, reported as ``target_evals_per_s = n * 33 / seconds per pass`` (a gradient
evaluation counts once, not as two). ``samples_per_s`` is weighted AIS samples per second.

Usage::

    python benchmarks/ais_throughput.py [--quick] [--out results.json] [--repeats 5]

prints markdown tables (main setting, batch scaling 128..8192 at dim 32, dimension scaling 8..128 at batch 1024)
and writes everything to --out as JSON. ``--quick`` is a smoke run (small sizes, 2 repeats).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import time

import jax
import jax.numpy as jnp

from boltzflow.ais import build_ais
from boltzflow.mcmc import make_kernel
from boltzflow.targets import ManyWell

N_INTERMEDIATE, N_LEAPFROG, N_INNER, Q_SCALE = 8, 4, 1, 2.0


def gaussian_q(dim: int, scale: float = Q_SCALE):
    const = -dim * math.log(scale) - 0.5 * dim * math.log(2 * math.pi)

    def log_q(x):
        return -0.5 * jnp.sum(x * x, axis=1) / scale**2 + const

    def sample_and_log_q(key, n):
        x = scale * jax.random.normal(key, (n, dim))
        return x, log_q(x)

    return sample_and_log_q, log_q


def measure(dim: int, batch: int, repeats: int) -> dict:
    """Compile once, then time ``repeats`` AIS passes (median); returns one result row."""
    target = ManyWell(dim=dim)
    sampler, log_q = gaussian_q(dim)
    ais = build_ais(target.log_prob, make_kernel("hmc", n_leapfrog=N_LEAPFROG), N_INTERMEDIATE,
                    n_inner_steps=N_INNER, step_size=0.1)
    state = ais.init_state()
    run = jax.jit(lambda key, s: ais.run(key, s, sampler, log_q, batch, adapt=True))
    key = jax.random.key(0)
    t0 = time.perf_counter()
    res, state = run(key, state)
    jax.block_until_ready(res)
    compile_s = time.perf_counter() - t0
    times = []
    for i in range(repeats):
        k = jax.random.fold_in(key, i + 1)
        t0 = time.perf_counter()
        res, state = run(k, state)
        jax.block_until_ready((res, state))
        times.append(time.perf_counter() - t0)
    sec = statistics.median(times)
    evals_per_sample = 1 + N_INTERMEDIATE * N_INNER * N_LEAPFROG
    return {
        "dim": dim, "batch": batch, "seconds_per_pass": sec, "compile_plus_first_s": compile_s,
        "target_evals_per_pass": batch * evals_per_sample,
        "target_evals_per_s": batch * evals_per_sample / sec, "samples_per_s": batch / sec,
        "mean_accept": float(jnp.mean(res.info.accept)),
    }


def table(rows: list[dict], title: str) -> str:
    head = (f"### {title}\n\n| dim | batch | ms / pass | target evals / s | samples / s | accept |\n"
            "|---:|---:|---:|---:|---:|---:|\n")
    body = "".join(f"| {r['dim']} | {r['batch']} | {1e3 * r['seconds_per_pass']:.1f} | "
                   f"{r['target_evals_per_s']:.3g} | {r['samples_per_s']:.3g} | {r['mean_accept']:.2f} |\n"
                   for r in rows)
    return head + body


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="smoke run: small sizes, 2 repeats")
    ap.add_argument("--out", default=None, help="write results as JSON here")
    ap.add_argument("--repeats", type=int, default=None, help="timed passes per setting (median; default 5)")
    args = ap.parse_args(argv)
    repeats = args.repeats or (2 if args.quick else 5)
    batches = [128, 1024] if args.quick else [128, 512, 1024, 2048, 4096, 8192]
    dims = [8, 32] if args.quick else [8, 16, 32, 64, 128]

    main_row = measure(32, 1024, repeats)
    batch_rows = [main_row if b == 1024 else measure(32, b, repeats) for b in batches]
    dim_rows = [main_row if d == 32 else measure(d, 1024, repeats) for d in dims]
    setting = (f"HMC-AIS, K = {N_INTERMEDIATE} intermediate distributions x {N_INNER} HMC move x {N_LEAPFROG} "
               f"leapfrog steps, q = N(0, {Q_SCALE:g}^2 I); target evals = value+gradient of log p per sample "
               f"({1 + N_INTERMEDIATE * N_INNER * N_LEAPFROG} per sample per pass)")
    print(f"{setting}\ndevice: {jax.devices()[0].device_kind} ({jax.default_backend()}), jax {jax.__version__}\n")
    print(table([main_row], "Many Well 32, batch 1024"))
    print(table(batch_rows, "Batch scaling (Many Well 32)"))
    print(table(dim_rows, "Dimension scaling (Many Well, batch 1024)"))
    out = {"setting": setting, "device": jax.devices()[0].device_kind, "backend": jax.default_backend(),
           "jax": jax.__version__, "python": platform.python_version(), "quick": args.quick, "repeats": repeats,
           "main": main_row, "batch_scaling": batch_rows, "dim_scaling": dim_rows}
    if args.out:
        with open(args.out, "w") as f:
            json.dump(out, f, indent=2)
    return out


if __name__ == "__main__":
    main()
