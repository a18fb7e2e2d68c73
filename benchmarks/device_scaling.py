"""Training throughput against the number of devices (issue 16): FAB steps, data-parallel by boltzflow.sharding.

Setting: FAB with its replay buffer on GMM40 with the RealNVP flow of the ``gmm40_realnvp`` preset, AIS with one
Metropolis intermediate distribution (as the ``quick_gmm`` preset), a batch of ``--batch`` AIS samples per step
(default 4096, a multiple of every device count), 4 buffer gradient steps per AIS pass (``--no-buffer``: FAB
without the buffer, one gradient step on the AIS batch: all its work is split over the devices, while with the
buffer each device also draws every minibatch's Gumbel top-k over the whole replicated buffer). For each device count
(default 1, 2, 4) a fresh subprocess forces that many host devices (``XLA_FLAGS=--xla_force_host_platform_device_count``)
or, with ``--real``, uses the first n real devices; it trains ``--steps`` steps through the one training loop
(boltzflow.train.loop) and reads the loop's own clock from its logged metrics (``run.history``, as in
``metrics.jsonl``): the time of steps 2..N (step 1 includes compilation). Reported:

    samples_per_s = batch * (N - 1) / t(steps 2..N),     efficiency(n) = samples_per_s(n) / (n * samples_per_s(1)).

Forced host devices share the machine's cores: efficiency beyond (cores / one device's threads) measures nothing
but the partitioning overhead. Usage::

    python benchmarks/device_scaling.py [--devices 1 2 4] [--batch 4096] [--steps 12] [--real] [--out results.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

CONFIG = {
    "target": "gmm40",
    "flow": {"type": "realnvp", "n_layers": 15, "hidden": 80, "depth": 2, "lu": False},
    "method": {"name": "fab", "buffer": True, "n_updates": 4},
    "ais": {"kernel": "metropolis", "n_intermediate": 1, "step_size": 1.0, "n_inner_steps": 1},
    "train": {"lr": 3e-4, "warmup_steps": 5, "eval_every": 100_000, "checkpoint_every": 100_000},
}

CHILD = """
import json, sys
import boltzflow as bf
from boltzflow.sharding import use_devices
cfg, n, out = bf.load_config(json.loads(sys.argv[1])), int(sys.argv[2]), sys.argv[3]
with use_devices(n):
    rows = bf.fit(None, cfg, out=out, progress=False, log_every=1).history
print(json.dumps({"t_first": rows[0]["time_s"], "t_rest": rows[-1]["time_s"] - rows[0]["time_s"],
                  "loss": rows[-1]["loss"]}))
"""


def measure(n: int, batch: int, steps: int, real: bool, buffer: bool = True) -> dict:
    cfg = {**CONFIG, "train": {**CONFIG["train"], "steps": steps, "batch_size": batch}}
    cfg["method"] = ({**cfg["method"], "buffer_size": 20 * batch, "min_buffer_length": 2 * batch} if buffer else
                     {"name": "fab", "buffer": False})
    env = dict(os.environ)
    if not real:
        env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={n}"
    with tempfile.TemporaryDirectory() as tmp:
        proc = subprocess.run([sys.executable, "-c", CHILD, json.dumps(cfg), str(n), str(Path(tmp) / "run")],
                              capture_output=True, text=True, env=env)
    if proc.returncode:
        raise RuntimeError(proc.stderr[-3000:])
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    return {"devices": n, "batch": batch, "steps_timed": steps - 1, **r,
            "samples_per_s": batch * (steps - 1) / r["t_rest"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--devices", type=int, nargs="+", default=[1, 2, 4])
    p.add_argument("--batch", type=int, default=4096)
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--real", action="store_true", help="real devices (GPUs) instead of forced host devices")
    p.add_argument("--no-buffer", action="store_true", help="FAB without its replay buffer (AIS + loss only)")
    p.add_argument("--out")
    args = p.parse_args()
    load = os.getloadavg()[0]
    rows = [measure(n, args.batch, args.steps, args.real, not args.no_buffer) for n in args.devices]
    base = rows[0]["samples_per_s"] / rows[0]["devices"]
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"load average {load:.1f} before, {os.getloadavg()[0]:.1f} after; buffer: {not args.no_buffer}")
    print("| devices | batch | samples/s | speed-up | efficiency | step 1 incl. compile (s) |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        r["efficiency"] = r["samples_per_s"] / (r["devices"] * base)
        print(f"| {r['devices']} | {r['batch']} | {r['samples_per_s']:.0f} | "
              f"{r['samples_per_s'] / rows[0]['samples_per_s']:.2f} | {100 * r['efficiency']:.0f} % | "
              f"{r['t_first']:.1f} |")
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
