"""The missing-mass check without training: how often it flags a model that misses the far modes, and how often
one that does not.

For each far-mode target (boltzflow.targets.far_modes), one exploration (boltzflow.explore, the settings of the
config's ``explore`` section: a final round of up to 32,768 particles, within ``--budget`` target evaluations if
given) and two stand-in models with exact densities and samples:
the bulk alone (the mixture without its far components: what a flow that never found them is) and p itself (a
perfect flow). The check (docs/concepts/missing-mass-check.md, with a second look where the first is inconclusive:
boltzflow.explore.check_flow) on 65,536 samples of each, as ``boltzflow evaluate`` runs it. Also the far modes' mass as the exploration alone finds it.

    python benchmarks/far_modes_power.py --targets 0 12 [--n 32768] [--budget 2.5e6] [--repeats R]
"""

from __future__ import annotations

import argparse
import json
import math
import time

import jax
import jax.numpy as jnp
import numpy as np

from boltzflow.explore import check_flow, explore
from boltzflow.targets.far_modes import far_modes
from boltzflow.targets.gmm import GaussianMixture


def check(t, q, key, n: int, budget: float | None, explorations: dict, n_flow: int = 65_536) -> dict:
    """The check as ``boltzflow evaluate`` runs it (boltzflow.explore.check_flow: a second look where the first is
    inconclusive) for the stand-in model q; explorations are shared between the models through ``explorations``
    (by key), so both are judged against the same first look."""
    def look(k):
        kd = tuple(np.asarray(jax.random.key_data(k)).ravel().tolist())
        if kd not in explorations:
            explorations[kd] = explore(k, t.log_prob, t.dim, n=n, **({} if budget is None else {"budget": budget}))
        e = explorations[kd]
        return e, e.log_p - np.asarray(q.log_prob(jnp.asarray(e.x, jnp.float32)))

    xq = q.sample(jax.random.key(1), n_flow)
    log_w = np.asarray(t.log_prob(xq) - q.log_prob(xq), np.float64)
    log_z = float(jax.scipy.special.logsumexp(log_w) - math.log(n_flow))
    return check_flow(look, key, log_w, log_z)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--targets", type=int, nargs=2, default=[0, 12], metavar=("FIRST", "END"))
    ap.add_argument("--n", type=int, default=32768)
    ap.add_argument("--budget", type=float, help="target evaluations per exploration (default: no limit but --n)")
    ap.add_argument("--repeats", type=int, default=1, help="checks per target, exploration keys 100 + target + "
                                                               "1000 r for r = 0 .. repeats - 1")
    args = ap.parse_args(argv)
    rows = []
    for seed, r in ((s, r) for s in range(*args.targets) for r in range(args.repeats)):
        t = far_modes(seed)
        nb = t.n_components - t.n_far
        bulk = GaussianMixture(t.means[:nb], t.stds[:nb], t.weights[:nb])
        t0, key, explorations = time.time(), jax.random.key(100 + seed + 1000 * r), {}
        checks = {name: check(t, q, key, args.n, args.budget, explorations) for name, q in (("bulk_only", bulk), ("perfect", t))}
        e = next(iter(explorations.values()))  # the first look
        row = {"target": seed, "repeat": r, "dim": t.dim, "distances": t.distances, "weights": t.weights[-t.n_far:].tolist(),
               "found": t.region_mass(e.x, e.log_w).tolist(), "explore_s": (time.time() - t0) / len(explorations),
               "explore_evals": e.target_evals, "particles": len(e.log_w), "converged": e.converged,
               **checks}
        rows.append(row)
        print(json.dumps(row), flush=True)
    flagged = sum(r["bulk_only"]["mass_missing"] for r in rows)
    false = sum(r["perfect"]["mass_missing"] for r in rows)
    print(f"bulk-only models flagged {flagged}/{len(rows)}; perfect models flagged {false}/{len(rows)}")


if __name__ == "__main__":
    main()
