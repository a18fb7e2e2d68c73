"""The missing-mass check without training: how often it flags a model that misses the far modes, and how often
one that does not.

For each far-mode target (boltzflow.targets.far_modes), one exploration (boltzflow.explore, the settings of the
config's ``explore`` section: 32,768 particles by default) and two stand-in models with exact densities and samples:
the bulk alone (the mixture without its far components: what a flow that never found them is) and p itself (a
perfect flow). The check (X5, boltzflow.explore.unseen_mass) on 65,536 samples of each, as ``boltzflow evaluate``
runs it. Also the far modes' mass as the exploration alone finds it.

    python benchmarks/far_modes_power.py --targets 0 12 [--n 32768]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from boltzflow.explore import explore, unseen_mass  # noqa: E402
from boltzflow.targets.far_modes import far_modes  # noqa: E402
from boltzflow.targets.gmm import GaussianMixture  # noqa: E402


def check(t, e, q, n_flow: int = 65_536) -> dict:
    xq = q.sample(jax.random.key(1), n_flow)
    log_w = np.asarray(t.log_prob(xq) - q.log_prob(xq), np.float64)
    log_z = float(jax.scipy.special.logsumexp(log_w) - math.log(n_flow))
    xe = jnp.asarray(e.x, jnp.float32)
    return unseen_mass(e.log_w, e.n_groups, np.asarray(t.log_prob(xe) - q.log_prob(xe)), log_w, log_z)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--targets", type=int, nargs=2, default=[0, 12], metavar=("FIRST", "END"))
    ap.add_argument("--n", type=int, default=32768)
    args = ap.parse_args(argv)
    rows = []
    for seed in range(*args.targets):
        t = far_modes(seed)
        nb = t.n_components - t.n_far
        bulk = GaussianMixture(t.means[:nb], t.stds[:nb], t.weights[:nb])
        t0 = time.time()
        e = explore(jax.random.key(100 + seed), t.log_prob, t.dim, n=args.n)
        row = {"target": seed, "dim": t.dim, "distances": t.distances, "weights": t.weights[-t.n_far:].tolist(),
               "found": t.region_mass(e.x, e.log_w).tolist(), "explore_s": time.time() - t0,
               "bulk_only": check(t, e, bulk), "perfect": check(t, e, t)}
        rows.append(row)
        print(json.dumps(row), flush=True)
    flagged = sum(r["bulk_only"]["mass_missing"] for r in rows)
    false = sum(r["perfect"]["mass_missing"] for r in rows)
    print(f"bulk-only models flagged {flagged}/{len(rows)}; perfect models flagged {false}/{len(rows)}")


if __name__ == "__main__":
    main()
