"""Plot flow ESS against training wall-clock or cost (flow / target evaluations) for several runs on one axes.

    python benchmarks/plot_ess_curves.py "NSF seed 0=runs/bench/mw32_nsf_s0/seed0" \\
        "RealNVP seed 0=runs/bench/mw32_fab_s0/seed0" --out docs/img/mw32_ess_vs_time.png
    python benchmarks/plot_ess_curves.py "FAB=runs/aldp_fab_cpu-seed0" \\
        "FAB without buffer=runs/aldp_fab_nobuffer_cpu-seed0" --x flow_evals --out docs/img/aldp_buffer_ess.png
"""

from __future__ import annotations

import argparse

from boltzflow.plot import ESS_CURVE_AXES, plot_ess_curves


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", help="LABEL=RUN_DIR (runs whose labels share the text before ' seed' share a colour)")
    p.add_argument("--title", default=None, help="default: flow ESS against the x axis")
    p.add_argument("--x", choices=sorted(ESS_CURVE_AXES), default="time", help="x axis (default: wall-clock)")
    p.add_argument("--out", required=True)
    args = p.parse_args()
    runs = dict(r.split("=", 1) for r in args.runs)
    print(plot_ess_curves(runs, args.out, args.title, x=args.x))


if __name__ == "__main__":
    main()
