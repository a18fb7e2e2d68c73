"""The cost of one exploration at a config's defaults (boltzflow.explore, ``ExploreSettings().run``): target
evaluations, wall-clock seconds (compilation included, as a user pays it), particles and log Z, on GMM40 and three
far-mode targets; ``--code DIR`` imports boltzflow from another checkout (e.g. a worktree of an earlier commit) to
measure its exploration side by side on the same machine.

    git worktree add /tmp/before 04477ec
    python benchmarks/explore_cost.py --code /tmp/before; python benchmarks/explore_cost.py [--budget 2.05e6]
"""

from __future__ import annotations

import argparse
import json
import sys
import time


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--code", help="a checkout of boltzflow to import instead of the installed one")
    ap.add_argument("--budget", type=float, help="target evaluations (default: none but the particle cap)")
    args = ap.parse_args(argv)
    if args.code:
        sys.path.insert(0, args.code)  # a benchmark script's own process
    import jax

    from boltzflow.explore import ExploreSettings
    from boltzflow.targets import make_target
    from boltzflow.targets.far_modes import far_modes

    targets = {"gmm40 (2-D)": make_target("gmm40"), "far_modes 0 (9-D)": far_modes(0),
               "far_modes 7 (10-D)": far_modes(7), "far_modes 11 (3-D)": far_modes(11)}
    for name, t in targets.items():
        kw = {} if args.budget is None else {"budget": args.budget}
        t0 = time.perf_counter()
        e = ExploreSettings().run(jax.random.key(0), t, **kw)
        print(json.dumps({"target": name, "target_evals": e.target_evals, "seconds": round(time.perf_counter() - t0, 1),
                          "particles": len(e.log_w), "converged": e.converged, "log_z": round(e.log_z, 4),
                          "log_z_stderr": round(e.log_z_stderr, 4)}), flush=True)


if __name__ == "__main__":
    main()
