"""SNF paper Table 3 on the 8x8 digits: the four VAE posteriors over seeds, through `boltzflow train`.

    python benchmarks/vae_table.py --out runs/bench/vae                     # CPU presets (vae_*_cpu), seeds 0 1 2
    python benchmarks/vae_table.py --suffix "" --out runs/bench/vae50       # the paper's latent size 50

Each run is `boltzflow train PRESET --seed S --out OUT/PRESET-seedS` in a subprocess (the command a user runs;
an existing run there is resumed, a finished one only re-evaluated), whose report.json holds the test metrics
(boltzflow.vae.report.vae_evaluation). Writes OUT/summary.json and prints a markdown table of J_KL and the test NLL
(nats per image), mean ± standard deviation over the seeds, with the training time.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

POSTERIORS = {"gaussian": "naive Gaussian", "rnvp": "RealNVP", "mcmc": "MCMC (Langevin)", "snf": "SNF"}
KEYS = ("test_jkl", "test_nll", "train_jkl")


def run(preset: str, seed: int, out: Path) -> dict:
    subprocess.run([sys.executable, "-m", "boltzflow.cli", "train", preset, "--seed", str(seed), "--out", str(out),
                    "--no-progress"], check=True, env=os.environ)
    report = json.loads((out / "report.json").read_text())
    return {**{k: report["eval"][k] for k in KEYS}, "time_s": report["training"]["time_s"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/bench/vae")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--suffix", default="_cpu", help="preset suffix: _cpu (latent 8) or '' (latent 50)")
    args = p.parse_args()
    out = Path(args.out)
    results = {}
    for kind in POSTERIORS:
        preset = f"vae_{kind}{args.suffix}"
        results[kind] = [run(preset, s, out / f"{preset}-seed{s}") for s in args.seeds]
    (out / "summary.json").write_text(json.dumps(results, indent=1))
    print("| posterior | J_KL (test) | NLL (test) | J_KL (train) | training time (s) |")
    print("|---|---|---|---|---|")
    for kind, runs in results.items():
        cells = []
        for k in KEYS + ("time_s",):
            v = np.array([r[k] for r in runs])
            cells.append(f"{v.mean():.2f} ± {v.std(ddof=1) if len(v) > 1 else float('nan'):.2f}" if k != "time_s"
                         else f"{v.mean():.0f}")
        print(f"| {POSTERIORS[kind]} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
