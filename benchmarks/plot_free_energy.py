"""Plot free-energy profiles along x1 from snf_double_well.py results: mean ± std over trainings per model.

    python benchmarks/plot_free_energy.py "NSF=runs/bench/snf_dw10.json:NSF:reweighted" \\
        "NSF+MC=runs/bench/snf_dw10_adaptive.json:NSF+MC:reweighted" --out docs/img/snf_dw_free_energy.png

Each curve is LABEL=JSON:MODEL:KIND with KIND "reweighted" or "unweighted"; every JSON must use the same bins.
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from boltzflow.plot import plot_free_energy


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("curves", nargs="+", help="LABEL=JSON:MODEL:KIND")
    p.add_argument("--title", default="double well: free energy along $x_1$ (100k samples)")
    p.add_argument("--out", required=True)
    args = p.parse_args()
    profiles, grid = {}, None
    for spec in args.curves:
        label, rest = spec.split("=", 1)
        path, model, kind = rest.rsplit(":", 2)
        res = json.loads(open(path).read())
        if grid is not None and not np.allclose(grid[0], res["bin_centres"]):
            raise SystemExit(f"{path}: different bins from the first file")
        grid = grid or (res["bin_centres"], res["f_exact"])
        rows = [[np.nan if v is None else v for v in r[kind]["profile"]] for r in res["runs"] if r["model"] == model]
        if not rows:
            raise SystemExit(f"{path}: no runs of model {model!r}")
        profiles[label] = np.array(rows)
    print(plot_free_energy(*grid, profiles, args.out, title=args.title))


if __name__ == "__main__":
    main()
