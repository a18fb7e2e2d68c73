"""The JAX force field's speed against its own code at another git revision, side by side in one process.

    python benchmarks/forcefield_speed_vs_revision.py --base d5e7c93 --batch 256 1024

The base revision's ``boltzflow/molecules/forcefield.py`` is loaded as a separate module (it must import nothing of
boltzflow's but ``boltzflow.errors``); both engines read the same System and are timed alternately: jitted energy +
forces (float32), ``--repeats`` timings of 20 calls each, median per batch.
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from boltzflow.molecules import forcefield as current
from boltzflow.molecules.system import load_system, minimize


def load_revision(rev: str):
    text = subprocess.run(["git", "show", f"{rev}:boltzflow/molecules/forcefield.py"], check=True,
                          capture_output=True, text=True).stdout
    path = Path(tempfile.mkdtemp()) / "forcefield_base.py"
    path.write_text(text)
    spec = importlib.util.spec_from_file_location("forcefield_base", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["forcefield_base"] = module
    spec.loader.exec_module(module)
    return module


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", required=True, help="git revision to compare with")
    ap.add_argument("--molecule", default="aldp_implicit")
    ap.add_argument("--batch", type=int, nargs="+", default=[256])
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args(argv)
    mol = load_system(args.molecule)
    system, x0 = mol.openmm_system(), minimize(mol)
    engines = {"base": load_revision(args.base), "current": current}
    for batch in args.batch:
        x = jnp.asarray((x0 + 0.01 * np.random.default_rng(0).standard_normal((batch,) + x0.shape)).reshape(batch, -1),
                        jnp.float32)
        fns = {}
        for name, mod in engines.items():
            p = mod.read_forcefield(system)
            fns[name] = jax.jit(jax.value_and_grad(lambda y, p=p, mod=mod: jnp.sum(mod.batched_energy(p)(y))))
            jax.block_until_ready(fns[name](x))
        times = {k: [] for k in fns}
        for _ in range(args.repeats):
            for name, f in fns.items():
                t = time.perf_counter()
                for _ in range(20):
                    jax.block_until_ready(f(x))
                times[name].append((time.perf_counter() - t) / 20)
        med = {k: 1e3 * float(np.median(v)) for k, v in times.items()}
        print(f"{args.molecule} batch {batch}: base {med['base']:.2f} ms, current {med['current']:.2f} ms, "
              f"current / base {med['current'] / med['base']:.3f}", flush=True)


if __name__ == "__main__":
    main()
