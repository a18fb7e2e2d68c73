"""Molecule energy + forces throughput: the JAX force field against OpenMM's per-conformation loop.

One run, one process, side by side, on alanine dipeptide (``aldp_implicit``: Amber ff96 + OBC1 GB; ``aldp_vacuum``:
Amber ff96), in energy + force evaluations per second and microseconds per conformation:

- **JAX** float32 and float64: ``jax.jit(jax.value_and_grad(lambda x: jnp.sum(energy(x))))`` with
  ``energy = batched_energy(read_forcefield(system))`` (float64 traced and run inside ``jax.enable_x64(True)``), at
  batch 1, 128, 1024, 8192. The first call (compilation) is timed separately; then the call time is calibrated and
  each point is ``--timings`` timings of enough calls for >= ``--min-seconds`` in all; the median is reported. The
  inputs are already on the device and the outputs are waited for (``block_until_ready``).
- **OpenMM**, the loop FAB's code runs: one ``Context``, and for each conformation ``context.setPositions(x)`` +
  ``context.getState(getEnergy=True, getForces=True)`` + reading the energy (kJ/mol) and the forces (NumPy, kJ/mol/nm)
  out of the State, on the Reference platform (double precision) and on the CPU platform (mixed precision) with
  ``Threads = "1"`` and ``"2"``. A loop costs the same per conformation at every batch size, so it is timed once per
  platform on ``--openmm-confs`` conformations (fewer for Reference + implicit solvent, ~1.6 ms each) and that rate
  is reported at every batch size. Same timing rule (median of timings >= ``--min-seconds`` in all).

Conformations: the energy minimum (OpenMM L-BFGS, :func:`~boltzflow.molecules.system.minimize`) plus 0.01 nm
Gaussian noise per coordinate, seeded (``--seed``); the OpenMM loops use the first conformations of the same set.
As a check that both sides compute the same thing, the JAX float64 energies of the Reference loop's conformations
are compared with the Reference energies (max |dE|, and the max force error relative to the largest force).

Threads. By default (``--jax-threads 1``) XLA runs on one thread (``XLA_FLAGS=--xla_cpu_multi_thread_eigen=false
intra_op_parallelism_threads=1``, set before JAX is imported), so JAX float32/float64 compare with OpenMM CPU at 1
thread and Reference (single-threaded) on equal terms; ``--jax-threads all`` leaves XLA's default thread pool.

Memory. By default (``--malloc retain``) freed memory is kept in the process, as the ``boltzflow`` command does
(:mod:`boltzflow.allocator`): without it, XLA's temporaries at batch >= 1024 page-fault on every call and cost
about a third of the time; ``--malloc default`` measures glibc's own behaviour.

Bars (from the issue): JAX float32 at batch >= 128 against the best OpenMM platform (>= 5x) and against the
Reference loop (>= 30x); printed with PASS/FAIL per system and batch.

Usage::

    python benchmarks/molecule_energy.py [--quick] [--systems aldp_implicit aldp_vacuum] [--out PATH]

prints a Markdown table (with command, machine, versions, date) and writes the raw results as JSON to ``--out``
(default ``runs/bench/molecule_energy.json``; ``runs/bench/molecule_energy_quick.json`` with ``--quick``).
``--quick`` is a smoke run: batches 1 and 128, fewer conformations and shorter timings.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import statistics
import sys
import time

import numpy as np

BATCHES = (1, 128, 1024, 8192)
QUICK_BATCHES = (1, 128)
SYSTEMS = ("aldp_implicit", "aldp_vacuum")
NOISE_NM = 0.01
#: (label, OpenMM platform name, platform properties)
OPENMM_PLATFORMS = (
    ("OpenMM Reference", "Reference", {}),
    ("OpenMM CPU, 1 thread", "CPU", {"Threads": "1"}),
    ("OpenMM CPU, 2 threads", "CPU", {"Threads": "2"}),
)
BAR_BEST, BAR_REFERENCE = 5.0, 30.0


def _parse(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="smoke run: batches 1 and 128, short timings")
    ap.add_argument("--systems", nargs="+", default=list(SYSTEMS), choices=SYSTEMS, help="molecules to measure")
    ap.add_argument("--batches", nargs="+", type=int, default=None,
                    help=f"JAX batch sizes (default {' '.join(map(str, BATCHES))}; with --quick "
                         f"{' '.join(map(str, QUICK_BATCHES))})")
    ap.add_argument("--out", default=None, help="JSON output (default runs/bench/molecule_energy[_quick].json)")
    ap.add_argument("--min-seconds", type=float, default=None,
                    help="timed seconds per point, all timings together (default 1.0; 0.2 with --quick)")
    ap.add_argument("--timings", type=int, default=None, help="timings per point, median reported (default 3)")
    ap.add_argument("--openmm-confs", type=int, default=None,
                    help="conformations per OpenMM loop (default 1000; 300 for Reference + implicit solvent; "
                         "--quick: 200 / 100)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the conformation noise")
    ap.add_argument("--jax-threads", choices=("1", "all"), default="1",
                    help="XLA CPU threads: 1 (default, single-threaded like OpenMM CPU 1 thread) or all (XLA default)")
    ap.add_argument("--malloc", choices=("retain", "default"), default="retain",
                    help="retain: keep freed memory as the boltzflow command does (boltzflow/allocator.py); "
                         "default: glibc's own thresholds")
    return ap.parse_args(argv)


def _machine() -> dict:
    cpu = ""
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), "")
    except OSError:
        pass
    mem_gib = None
    try:
        with open("/proc/meminfo") as f:
            kb = next(int(ln.split()[1]) for ln in f if ln.startswith("MemTotal"))
        mem_gib = round(kb / 2**20, 1)
    except (OSError, StopIteration):
        pass
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    return {"nodename": os.uname().nodename, "cpu_model": cpu or platform.processor(), "cores": os.cpu_count(),
            "usable_cores": usable, "mem_gib": mem_gib, "machine": platform.machine(),
            "python": platform.python_version()}


def timed(call, min_seconds: float, timings: int) -> dict:
    """Calibrate one ``call()``, then ``timings`` timings of ``reps`` calls (>= min_seconds in all); the median time
    per call."""
    t0 = time.perf_counter()
    call()
    first = time.perf_counter() - t0
    reps = max(1, math.ceil(min_seconds / timings / max(first, 1e-9)))
    per_call = []
    for _ in range(timings):
        t0 = time.perf_counter()
        for _ in range(reps):
            call()
        per_call.append((time.perf_counter() - t0) / reps)
    return {"seconds_per_call": statistics.median(per_call), "timings_per_call": per_call, "reps": reps,
            "calibration_call_s": first}


# ------------------------------------------------------------------------------------------------------------ JAX


def bench_jax(jax, jnp, energy, x_np, batches, dtype_name: str, min_seconds: float, n_timings: int) -> list[dict]:
    rows = []
    for b in batches:
        x = jax.device_put(jnp.asarray(x_np[:b], getattr(jnp, dtype_name)))
        f = jax.jit(jax.value_and_grad(lambda y: jnp.sum(energy(y))))
        t0 = time.perf_counter()
        jax.block_until_ready(f(x))
        compile_s = time.perf_counter() - t0
        jax.block_until_ready(f(x))  # warm-up
        t = timed(lambda: jax.block_until_ready(f(x)), min_seconds, n_timings)
        sec = t.pop("seconds_per_call")
        rows.append({"batch": b, "dtype": dtype_name, "compile_plus_first_s": compile_s, "seconds_per_batch": sec,
                     "evals_per_s": b / sec, "us_per_conf": 1e6 * sec / b, **t})
        print(f"    JAX {dtype_name} batch {b}: {b / sec:.3g} evals/s ({1e6 * sec / b:.3g} us/conf, "
              f"compile {compile_s:.2f} s)", flush=True)
    return rows


# --------------------------------------------------------------------------------------------------------- OpenMM


def bench_openmm(openmm, molecule, x_np, platform_name: str, properties: dict, min_seconds: float,
                 n_timings: int) -> dict:
    """The per-conformation loop (module docstring) on ``x_np`` (n, n_atoms, 3) nm; its energies are kept."""
    unit = openmm.unit
    e_unit, f_unit = unit.kilojoule_per_mole, unit.kilojoule_per_mole / unit.nanometer
    context = openmm.Context(molecule.openmm_system(), openmm.VerletIntegrator(0.001),
                             openmm.Platform.getPlatformByName(platform_name), dict(properties))
    n = x_np.shape[0]
    energies, forces = [None] * n, [None] * n

    def loop():
        for i in range(n):
            context.setPositions(x_np[i])
            state = context.getState(getEnergy=True, getForces=True)
            energies[i] = state.getPotentialEnergy().value_in_unit(e_unit)
            forces[i] = state.getForces(asNumpy=True).value_in_unit(f_unit)

    loop()  # warm-up (the CPU platform builds its neighbour data on the first call)
    t = timed(loop, min_seconds, n_timings)
    sec = t.pop("seconds_per_call") / n
    actual = {k: context.getPlatform().getPropertyValue(context, k) for k in properties}
    del context
    return {"platform": platform_name, "properties": dict(properties), "properties_in_context": actual,
            "n_confs": n, "seconds_per_conf": sec, "evals_per_s": 1 / sec, "us_per_conf": 1e6 * sec,
            "energies": np.asarray(energies, np.float64), "forces": np.asarray(forces, np.float64), **t}


# ------------------------------------------------------------------------------------------------------------ run


def main(argv=None) -> dict:
    args = _parse(argv)
    if args.jax_threads == "1":  # before JAX is imported
        flags = os.environ.get("XLA_FLAGS", "")
        os.environ["XLA_FLAGS"] = (flags + " --xla_cpu_multi_thread_eigen=false "
                                   "intra_op_parallelism_threads=1").strip()
    import jax
    import jax.numpy as jnp
    import openmm

    from boltzflow.allocator import retain_freed_memory
    from boltzflow.molecules.forcefield import batched_energy, read_forcefield

    retained = retain_freed_memory() if args.malloc == "retain" else False
    from boltzflow.molecules.system import load_system, minimize

    quick = args.quick
    batches = tuple(args.batches or (QUICK_BATCHES if quick else BATCHES))
    min_seconds = args.min_seconds if args.min_seconds is not None else (0.2 if quick else 1.0)
    n_timings = args.timings or 3
    n_omm = args.openmm_confs or (200 if quick else 1000)
    n_omm_reference = args.openmm_confs or (100 if quick else 300)  # Reference + implicit solvent: ~1.6 ms each
    out_path = args.out or ("runs/bench/molecule_energy_quick.json" if quick else "runs/bench/molecule_energy.json")
    command = "python " + " ".join([os.path.relpath(sys.argv[0]) if sys.argv[0] else "benchmarks/molecule_energy.py"]
                                   + list(argv if argv is not None else sys.argv[1:]))
    started = datetime.datetime.now().astimezone()
    machine = _machine()
    load_before = os.getloadavg()
    print(f"{command}\n{started.isoformat(timespec='seconds')}  {machine['nodename']}: {machine['cpu_model']}, "
          f"{machine['cores']} cores; load average {load_before[0]:.2f}; jax {jax.__version__} "
          f"({jax.default_backend()}, XLA threads: {args.jax_threads}), OpenMM {openmm.__version__}", flush=True)

    results = {}
    for name in args.systems:
        print(f"\n{name}", flush=True)
        molecule = load_system(name)
        x_min = minimize(molecule)
        rng = np.random.default_rng(args.seed)
        n_total = max(max(batches), n_omm, n_omm_reference)
        x = x_min[None] + NOISE_NM * rng.standard_normal((n_total,) + x_min.shape)  # (n, n_atoms, 3) nm
        x_flat = x.reshape(x.shape[0], -1)
        params = read_forcefield(molecule.openmm_system())
        energy = batched_energy(params)
        has_gb = params.gb is not None or any(f.kind == "CustomGBForce" for f in params.custom)

        jax_rows = {"float32": bench_jax(jax, jnp, energy, x_flat, batches, "float32", min_seconds, n_timings)}
        with jax.enable_x64(True):
            jax_rows["float64"] = bench_jax(jax, jnp, energy, x_flat, batches, "float64", min_seconds, n_timings)

        omm = {}
        for label, plat, props in OPENMM_PLATFORMS:
            n_conf = min(n_omm_reference if plat == "Reference" and has_gb else n_omm, x.shape[0])
            r = bench_openmm(openmm, molecule, np.ascontiguousarray(x[:n_conf]), plat, props, min_seconds, n_timings)
            print(f"    {label}: {r['evals_per_s']:.3g} evals/s ({r['us_per_conf']:.3g} us/conf, "
                  f"{n_conf} confs)", flush=True)
            omm[label] = r

        # check: JAX float64 against the Reference loop on the same conformations
        ref = omm["OpenMM Reference"]
        with jax.enable_x64(True):
            x_ref = jnp.asarray(x_flat[:ref["n_confs"]], jnp.float64)
            _, g64 = jax.jit(jax.value_and_grad(lambda y: jnp.sum(energy(y))))(x_ref)
            e64 = np.asarray(jax.jit(energy)(x_ref))
            f64 = -np.asarray(g64).reshape(ref["forces"].shape)
        check = {"n_confs": ref["n_confs"], "max_abs_energy_diff_kj_mol": float(np.max(np.abs(e64 - ref["energies"]))),
                 "max_force_err_rel_to_max_force": float(np.max(np.abs(f64 - ref["forces"]))
                                                         / np.max(np.abs(ref["forces"]))),
                 "energy_range_kj_mol": [float(ref["energies"].min()), float(ref["energies"].max())]}
        print(f"    check JAX float64 vs Reference on {check['n_confs']} confs: max |dE| = "
              f"{check['max_abs_energy_diff_kj_mol']:.2e} kJ/mol, max force error / max force = "
              f"{check['max_force_err_rel_to_max_force']:.2e} (energies {check['energy_range_kj_mol'][0]:.1f} .. "
              f"{check['energy_range_kj_mol'][1]:.1f} kJ/mol)", flush=True)
        for r in omm.values():
            for k in ("energies", "forces"):
                r.pop(k)

        best_label = max(omm, key=lambda k: omm[k]["evals_per_s"])
        ratios = []
        for row in jax_rows["float32"]:
            if row["batch"] < 128:
                continue
            vs_best = row["evals_per_s"] / omm[best_label]["evals_per_s"]
            vs_ref = row["evals_per_s"] / omm["OpenMM Reference"]["evals_per_s"]
            ratios.append({"batch": row["batch"], "best_openmm": best_label, "vs_best_openmm": vs_best,
                           "pass_best": vs_best >= BAR_BEST, "vs_reference": vs_ref,
                           "pass_reference": vs_ref >= BAR_REFERENCE})
        results[name] = {"description": repr(molecule), "n_atoms": molecule.n_atoms, "forces": list(params.forces),
                         "jax": jax_rows, "openmm": omm, "check_float64_vs_reference": check, "ratios": ratios}

    load_after = os.getloadavg()
    out = {"command": command, "date": started.isoformat(timespec="seconds"), "machine": machine,
           "load_average_before": load_before, "load_average_after": load_after,
           "jax": jax.__version__, "jaxlib": None,
           "backend": jax.default_backend(), "xla_threads": args.jax_threads, "xla_flags": os.environ.get("XLA_FLAGS"),
           "malloc": args.malloc, "freed_memory_retained": retained,
           "openmm": openmm.__version__, "quick": quick, "batches": list(batches), "min_seconds": min_seconds,
           "timings": n_timings, "noise_nm": NOISE_NM, "seed": args.seed,
           "bars": {"vs_best_openmm": BAR_BEST, "vs_reference": BAR_REFERENCE}, "systems": results}
    try:
        import jaxlib

        out["jaxlib"] = jaxlib.__version__
    except (ImportError, AttributeError):
        pass
    print("\n" + markdown(out))
    os.makedirs(os.path.dirname(out_path) or ".", exist_ok=True)
    with open(out_path, "w") as f:
        json.dump(out, f, indent=2)
    print(f"raw results: {out_path}")
    return out


def _cell(evals_per_s: float, us: float) -> str:
    return f"{evals_per_s:.3g} ({us:.3g} µs)"


def markdown(out: dict) -> str:
    m = out["machine"]
    batches = out["batches"]
    lines = [f"`{out['command']}` — {out['date']}, {m['nodename']}: {m['cpu_model']}, {m['cores']} cores "
             f"({m['mem_gib']} GiB), load average {out['load_average_before'][0]:.2f} before / "
             f"{out['load_average_after'][0]:.2f} after; Python {m['python']}, jax/jaxlib {out['jax']}/"
             f"{out.get('jaxlib', '?')} ({out['backend']}, XLA threads: {out['xla_threads']}), "
             f"OpenMM {out['openmm']}. Energy + forces evaluations per second (µs per conformation); conformations: "
             f"minimum + {out['noise_nm']} nm Gaussian noise (seed {out['seed']}); median of {out['timings']} "
             f"timings, >= {out['min_seconds']:g} s per point. OpenMM: per-conformation loop (setPositions + "
             "getState(getEnergy, getForces)), the same rate at every batch size.", ""]
    head = "| system | engine | " + " | ".join(f"batch {b}" for b in batches) + " |"
    lines += [head, "|---|---|" + "---:|" * len(batches)]
    for name, r in out["systems"].items():
        for dt in ("float32", "float64"):
            cells = [_cell(row["evals_per_s"], row["us_per_conf"]) for row in r["jax"][dt]]
            lines.append(f"| {name} | JAX {dt} | " + " | ".join(cells) + " |")
        for label, o in r["openmm"].items():
            lines.append(f"| {name} | {label} ({o['n_confs']} confs) | "
                         + " | ".join([_cell(o["evals_per_s"], o["us_per_conf"])] * len(batches)) + " |")
    lines += ["", f"JAX float32 against the bars (best OpenMM >= {BAR_BEST:g}x, Reference loop >= "
                  f"{BAR_REFERENCE:g}x):", "",
              "| system | batch | best OpenMM | JAX f32 / best OpenMM | bar 5x | JAX f32 / Reference | bar 30x |",
              "|---|---:|---|---:|---|---:|---|"]
    for name, r in out["systems"].items():
        for q in r["ratios"]:
            lines.append(f"| {name} | {q['batch']} | {q['best_openmm']} | {q['vs_best_openmm']:.1f}x | "
                         f"{'PASS' if q['pass_best'] else 'FAIL'} | {q['vs_reference']:.1f}x | "
                         f"{'PASS' if q['pass_reference'] else 'FAIL'} |")
    lines += [""]
    for name, r in out["systems"].items():
        c = r["check_float64_vs_reference"]
        lines.append(f"- {name}: JAX float64 vs OpenMM Reference on {c['n_confs']} conformations: max |dE| "
                     f"{c['max_abs_energy_diff_kj_mol']:.1e} kJ/mol, max force error / max force "
                     f"{c['max_force_err_rel_to_max_force']:.1e}.")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
