"""Summarise training runs from their metrics.jsonl and eval.json: time per iteration, wall-clock to flow ESS 0.5
and 0.9 and the cost counters (fab_seeds.timing), the first step's time (compilation included) and the final
evaluation. With ``--pair NAME``, runs ``NAME_gpu`` and ``NAME_cpu`` also get their ratio of time per iteration (the
CPU baseline measured beside the GPU run, in the same call). Used by benchmarks/gpu_check.sh::

    python benchmarks/run_summary.py RUNS_DIR [--pair gmm40] [--out summary.json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from fab_seeds import timing

from boltzflow.train.loop import read_history


def summarise(run_dir: Path) -> dict:
    """What one run's files say (an ``error`` entry when it left no metrics)."""
    rows = read_history(Path(run_dir))
    if not rows:
        return {"error": f"no training steps in {run_dir}/metrics.jsonl"}
    ev = run_dir / "eval.json"
    return {"steps": rows[-1]["step"], "first_step_s": rows[0]["time_s"], **timing(run_dir, levels=(0.5, 0.9)),
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
        if g.get("ms_per_iter") and c.get("ms_per_iter"):
            summary[f"{name}_cpu_over_gpu"] = c["ms_per_iter"] / g["ms_per_iter"]
    if args.out:
        args.out.write_text(json.dumps(summary, indent=1, default=float))
    brief = {k: {kk: vv for kk, vv in v.items() if kk != "eval"} if isinstance(v, dict) else v
             for k, v in summary.items()}
    print(json.dumps(brief, indent=1, default=float))
    return summary


if __name__ == "__main__":
    main()
