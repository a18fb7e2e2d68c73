"""Summarise training runs from their metrics.jsonl and eval.json: time per step (steps 2.., the first includes
compilation), the first step and wall-clock at which the flow ESS reached 0.5 and 0.9, the cost counters and the
final evaluation. With ``--pair NAME``, runs ``NAME_gpu`` and ``NAME_cpu`` also get their ratio of time per step
(the CPU baseline measured beside the GPU run, in the same call). Used by benchmarks/gpu_check.sh::

    python benchmarks/run_summary.py RUNS_DIR [--pair gmm40] [--out summary.json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from boltzflow.plot import read_metrics


def summarise(run_dir: Path) -> dict:
    """What one run's files say (an ``error`` entry when it left no metrics)."""
    try:
        rows = [r for r in read_metrics(run_dir) if "step" in r and "time_s" in r]
    except (OSError, ValueError) as err:
        return {"error": str(err)}
    if not rows:
        return {"error": f"no training steps in {run_dir}/metrics.jsonl"}
    steps, t = np.array([r["step"] for r in rows]), np.array([r["time_s"] for r in rows])
    late = steps >= 2
    per_step = float(np.diff(t[late]).sum() / np.diff(steps[late]).sum()) if late.sum() > 1 else None

    def first(level):
        return next(({"step": r["step"], "time_s": r["time_s"]} for r in rows if r.get("flow_ess", 0) >= level), None)

    ev = run_dir / "eval.json"
    return {"steps": int(steps.max()), "first_step_s": float(t[0]), "s_per_step": per_step,
            "flow_ess_0.5": first(0.5), "flow_ess_0.9": first(0.9), "flow_evals": rows[-1].get("flow_evals"),
            "target_evals": rows[-1].get("target_evals"),
            "eval": json.loads(ev.read_text()) if ev.exists() else None}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", type=Path, help="a folder of run directories")
    p.add_argument("--pair", action="append", default=[], help="NAME: compare runs NAME_gpu and NAME_cpu")
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    summary = {d.name: summarise(d) for d in sorted(args.runs.iterdir()) if d.is_dir()}
    for name in args.pair:
        g, c = summary.get(f"{name}_gpu", {}), summary.get(f"{name}_cpu", {})
        if g.get("s_per_step") and c.get("s_per_step"):
            summary[f"{name}_cpu_over_gpu"] = c["s_per_step"] / g["s_per_step"]
    if args.out:
        args.out.write_text(json.dumps(summary, indent=1, default=float))
    brief = {k: {kk: vv for kk, vv in v.items() if kk != "eval"} if isinstance(v, dict) else v
             for k, v in summary.items()}
    print(json.dumps(brief, indent=1, default=float))
    return summary


if __name__ == "__main__":
    main()
