"""Missed modes (issue 17): FAB on generated far-mode targets with the exploration on and off.

For each target seed (boltzflow.targets.far_modes) and training seed, the preset ``far_modes`` is trained twice
through the same code path as ``boltzflow train`` (boltzflow.fit, then the report's evaluation):
``explore.seed_buffer`` true (the buffer starts with an exploration's samples) and false (the FAB of the papers). Both
evaluations run the missing-mass check. Per run: the far modes' recovered mass (the flow's importance-weighted mass of
each far mode's region on 100,000 samples, against the exact samples' mass), ESS, log Z error, the check's
``mass_missing`` verdict (boltzflow.explore.mass_missing, applied to the stored unseen mass and its error, so reports
written before a change of the rule are judged by the current one) and log Z difference in standard errors, and the
wall-clock time of training and evaluation.

    python benchmarks/far_modes.py --targets 0 20 --seeds 0 1 2 --out runs/far_modes_bench

Runs already in ``--out`` (a report.json) are read, not rerun, so an interrupted benchmark resumes. The summary:
recovered = every far mode's mass within 20 % (relative); flagged-of-missed and false alarms (flags where
nothing was missed) with exploration off.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import jax
import numpy as np

import boltzflow as bf
from boltzflow.explore import mass_missing
from boltzflow.targets.far_modes import far_modes


def one_run(out: Path, target_seed: int, seed: int, seed_buffer: bool, steps: int | None) -> dict:
    report = out / "report.json"
    if report.exists():
        return json.loads(report.read_text())
    cfg = bf.load_config("far_modes", target={"name": "far_modes", "seed": target_seed},
                         explore={"seed_buffer": seed_buffer, "check": True},
                         train={"seed": seed, **({"steps": steps} if steps else {})})
    t0 = time.time()
    run = bf.fit(None, cfg, out=out, progress=False)
    t_train = time.time() - t0
    # the report of `boltzflow train` (its evaluation and pictures), written below with the far modes' masses
    rep = {"config": run.config.to_dict(), "training": run.summary,
           "eval": run.evaluate(jax.random.key(run.config.train.seed + 1), n=100_000)}
    run.plot()
    x, log_w = run.sample(jax.random.key(seed + 99), 100_000)
    t = far_modes(target_seed)
    truth = t.region_mass(np.asarray(t.sample(jax.random.key(7), 400_000)))
    found = t.region_mass(np.asarray(x), np.asarray(log_w))
    rep["far"] = {"truth": truth.tolist(), "found": found.tolist(), "dim": t.dim, "distances": t.distances,
                  "recovered": bool(np.all(np.abs(found / truth - 1) <= 0.2)), "wall_s": time.time() - t0,
                  "train_s": t_train}
    report.write_text(json.dumps(rep, indent=1))
    return rep


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--targets", type=int, nargs=2, default=[0, 20], metavar=("FIRST", "END"))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--steps", type=int, help="training steps (default: the preset's)")
    ap.add_argument("--out", default="runs/far_modes_bench")
    ap.add_argument("--explore", choices=["both", "on", "off"], default="both",
                    help="train with the exploration-seeded buffer, without it, or both")
    args = ap.parse_args(argv)
    rows = []
    for ts in range(*args.targets):
        for seed in args.seeds:
            for on in {"both": (True, False), "on": (True,), "off": (False,)}[args.explore]:
                run = Path(args.out) / f"t{ts}-s{seed}-{'on' if on else 'off'}"
                r = one_run(run, ts, seed, on, args.steps)
                jax.clear_caches()  # every run compiles its own closures: 26 runs' caches filled 24 GB
                e, f = r["eval"], r["far"]
                rows.append({"target": ts, "seed": seed, "explore": on, "dim": f["dim"], "recovered": f["recovered"],
                             "found": f["found"], "truth": f["truth"], "ess": e["ess"],
                             "log_z_error": e["log_z_error"],
                             "flag": mass_missing(e["unseen_mass"], e["unseen_mass_stderr"],
                                                  every_group=e.get("unseen_in_groups") == 1.0),
                             "looks": e.get("explore_looks", 1), "log_z_sigma": e.get("log_z_difference_sigma"),
                             "wall_s": f["wall_s"]})
                print(json.dumps(rows[-1]), flush=True)
    (Path(args.out) / "summary.json").write_text(json.dumps(rows, indent=1))
    for on in (True, False):
        rs = [r for r in rows if r["explore"] == on]
        if not rs:
            continue
        missed = [r for r in rs if not r["recovered"]]
        fine = [r for r in rs if r["recovered"]]
        print(f"explore {'on ' if on else 'off'}: recovered {sum(r['recovered'] for r in rs)}/{len(rs)}; "
              f"flagged {sum(r['flag'] for r in missed)}/{len(missed)} of the misses, false alarms "
              f"{sum(r['flag'] for r in fine)}/{len(fine)}; mean wall {np.mean([r['wall_s'] for r in rs]):.0f} s")


if __name__ == "__main__":
    main()
