"""The ``boltzflow`` command: train | evaluate | sample | free-energy | plot | md | reference | targets | presets.

``train``, ``evaluate`` and ``sample`` run data-parallel on ``--devices`` devices (default: all visible;
boltzflow.sharding); on several hosts every host runs the same command with ``--coordinator HOST:PORT --num-hosts N
--host-id I`` (jax.distributed.initialize), the run directory on a shared file system, written by host 0 only.

User mistakes (BoltzflowError) print one line ``boltzflow: error: ...`` and exit with status 2; when an exception in
the user's own code caused it (their module, target function or log density: the error's ``__cause__``), the user's
frames (file:line) and that exception follow. Another exception raised through user code (e.g. a log density failing
while JAX traces it in training) prints ``boltzflow: error: TYPE: MESSAGE`` with the user's frames and exits with
status 1; anything else is a bug and keeps its traceback. ``--debug`` prints the full traceback of any error. The
command adds its working directory to ``sys.path`` (``--target my_module:make``); the library never edits it.

Interruptions: Ctrl-C (SIGINT) ends any command with ``boltzflow: interrupted (...)`` and status 130, a training
keeping its last checkpoint. SIGTERM (what batch schedulers send before SIGKILL) during ``train`` finishes the
compiled call in progress (at most ``log_every`` = 10 steps), writes a checkpoint at the step reached and ends with
``boltzflow: terminated at step N (...)`` and status 143; after training (evaluation, report) it ends the command at
once, also with 143. The library installs no signal handlers; the command does, as the owner of its process
(:func:`entry`).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import re
import signal
import sys
import sysconfig
import threading
import traceback
from pathlib import Path

import jax
import numpy as np
import yaml

from boltzflow.allocator import retain_freed_memory
from boltzflow.checkpoint import check_writable, write_atomic, write_json
from boltzflow.config import is_config_file, load_config, presets
from boltzflow.errors import BoltzflowError
from boltzflow.estimators import resample
from boltzflow.experiment import CHUNK
from boltzflow.molecules.free_energy import (backbone_states, collective_variables, cv_values,
                                             free_energy_surface, periodic_cvs, state_free_energies, time_blocks)
from boltzflow.molecules.free_energy_plot import plot_free_energy_surface
from boltzflow.molecules.md import GAS_CONSTANT, geometric_temperatures, run_replica_exchange
from boltzflow.molecules.metrics import ramachandran_pairs
from boltzflow.molecules.openmm_engine import close_all
from boltzflow.molecules.reference import load_reference, write_compact, write_reference
from boltzflow.molecules.system import minimize
from boltzflow.molecules.trajectory import FORMATS, is_trajectory, write_trajectory
from boltzflow.run import fit, load
from boltzflow.sharding import use_devices, writes_files
from boltzflow.targets import make_target, targets_table
from boltzflow.targets.molecule import MoleculeTarget
from boltzflow.targets.particles import ParticleTarget


def _train(args) -> None:
    data = args.data and {"data": str(Path(args.data).resolve())}  # a method without a data option says so
    train = {k: v for k, v in (("seed", args.seed), ("steps", args.steps), ("time_limit_s", args.time_limit),
                                ("init_from", args.init_from and str(Path(args.init_from).resolve())))
             if v is not None}
    overrides = {k: v for k, v in (("target", args.target), ("method", data), ("train", train)) if v}
    cfg = load_config(args.config, **overrides)
    out = Path(args.out or f"runs/{cfg.name}-seed{cfg.train.seed}")
    with _Sigterm() as sigterm:
        with use_devices(args.devices):
            run = fit(None, cfg, out=out, progress=not args.no_progress, restart=args.restart,
                      stop=sigterm.requested.is_set)
            sigterm.trained(run.summary["steps"])
            metrics = run.evaluate(jax.random.key(run.config.train.seed + 1), n=args.eval_samples)
        print(_table(metrics, f"{cfg.name}: {run.summary['steps']} steps in {run.summary['time_s']:.1f} s -> {out}"))
        if writes_files():
            with _keeping(f"the report and plots to {out}", "the results are printed above; the run's checkpoint "
                                                            "is complete"):
                write_json(out / "report.json", {"config": run.config.to_dict(), "training": run.summary,
                                                 "eval": metrics})
                run.plot()


class Terminated(BaseException):
    """SIGTERM ended ``train`` at ``step`` (its checkpoint written): status 143. A BaseException, as
    KeyboardInterrupt, which no ``except Exception`` stops."""

    def __init__(self, step: int):
        super().__init__(step)
        self.step = step


class _Sigterm:
    """The SIGTERM handler for the duration of ``train``: while it trains, a stop request (:attr:`requested`, which
    training asks after each compiled call, then checkpoints at the step reached and stops); once training is over
    (:meth:`trained`), :class:`Terminated` at once. Installed from the main thread only (elsewhere nothing changes)."""

    def __init__(self):
        self.requested = threading.Event()
        self.step: int | None = None  # where training ended, once it has
        self.installed = False
        self.previous = None

    def __call__(self, signum, frame) -> None:
        self.requested.set()
        if self.step is not None:
            raise Terminated(self.step)

    def trained(self, step: int) -> None:
        """Training ended at ``step``: :class:`Terminated` if a SIGTERM stopped it, and from now on at any SIGTERM."""
        self.step = step
        if self.requested.is_set():
            raise Terminated(step)

    def __enter__(self) -> _Sigterm:
        if threading.current_thread() is threading.main_thread():
            self.previous, self.installed = signal.signal(signal.SIGTERM, self), True
        return self

    def __exit__(self, kind, exc, tb) -> None:
        if self.installed:  # None: a handler not installed from Python, which cannot be put back
            signal.signal(signal.SIGTERM, signal.SIG_DFL if self.previous is None else self.previous)
        if kind is None and self.requested.is_set():  # its Terminated was dropped (see _raise_dropped_interrupt)
            raise Terminated(self.step)


def _evaluate(args) -> None:
    run = load(args.run)
    path = Path(args.run) / "eval.json"
    _check_writable(path)
    with use_devices(args.devices):
        metrics = run.evaluate(jax.random.key(args.seed), n=args.samples, ais=args.ais, chunk=args.chunk,
                               baseline=args.baseline, paths=args.paths)
    print(_table(metrics, f"evaluation of {args.run} ({args.samples} samples)"))
    if writes_files():
        with _keeping(path, "the results are printed above"):
            write_json(path, metrics)


def _sample(args) -> None:
    trajectory = is_trajectory(args.out)
    out = Path(args.out if trajectory or args.out.endswith(".npz") else args.out + ".npz")  # np.savez's name
    if args.resample is not None and not trajectory:
        raise BoltzflowError(f"--resample writes a trajectory ({', '.join(FORMATS)}), not {out.name}; an .npz keeps "
                             "the weighted samples")
    if args.resample is not None and args.resample < 1:
        raise BoltzflowError(f"--resample needs M >= 1 frames, got {args.resample}")
    run = load(args.run)
    if trajectory:
        _molecular(run, f"a trajectory ({out.name})")
    _check_writable(out)
    with use_devices(args.devices):
        x, log_w = run.sample(jax.random.key(args.seed), args.n, paths=args.paths)
    if not writes_files():
        return
    with _keeping(out, "the samples are not kept"):
        if not trajectory:
            write_atomic(out, lambda f: np.savez(f, x=x, log_w=log_w))
            print(f"wrote {args.n} samples and log weights to {out}")
        elif args.resample is not None:
            frames = resample(jax.random.key(args.seed + 1), x, log_w, args.resample)
            write_trajectory(out, run.target.molecule, frames)
            print(f"wrote {args.resample} unweighted frames, resampled from {args.n} weighted samples, to {out}")
        else:
            written = write_trajectory(out, run.target.molecule, x, log_w)
            print(f"wrote {args.n} samples to {written[0]} and their log weights (log p - log q; frame i has weight "
                  f"exp(log_w[i]) / sum) to {written[1]}")


def _molecular(run, what: str) -> MoleculeTarget:
    """The run's target if it is a molecule; else one line saying that ``what`` needs one."""
    if not isinstance(run.target, MoleculeTarget):
        raise BoltzflowError(f"{what} needs a molecular target; this run's target is {run.target.name!r}")
    return run.target


def _free_energy(args) -> None:
    run = load(args.run)
    target = _molecular(run, "free-energy")
    pairs = ramachandran_pairs(target.molecule)
    if not args.cv and not pairs:
        raise BoltzflowError(f"{target.molecule.name} has no backbone (phi, psi): give two collective variables, --cv")
    cvs = collective_variables(target.molecule, args.cv or list(pairs[0]))
    periodic = periodic_cvs(cvs)
    states = _read_states(args.states) if args.states else backbone_states(list(cvs))
    out = Path(args.run)
    for name in ("free_energy.npz", "free_energy.png"):
        _check_writable(out / name)
    with use_devices(args.devices):
        x, log_w = run.sample(jax.random.key(args.seed), args.n, paths=args.paths)
    if not writes_files():
        return
    values, key = cv_values(x, cvs), jax.random.key(args.seed + 1)
    surface = free_energy_surface(key, values, log_w, target.kT, periodic=periodic, bins=args.bins,
                                  n_bootstrap=args.bootstrap)
    arrays = {"cv": list(surface.names), "edges_0": surface.edges[0], "edges_1": surface.edges[1],
              "free_energy": surface.free_energy, "free_energy_se": surface.free_energy_se,
              "probability": surface.probability, "kT": surface.kT, "n_effective": surface.n_effective}
    lines = [f"free energies of {args.run} ({args.n} samples, ESS {surface.n_effective:.0f}; kT = {target.kT:.4g} "
             f"kJ/mol; bootstrap errors, {args.bootstrap} replicates)"]
    if states:
        s = state_free_energies(key, values, log_w, target.kT, states, periodic=periodic, n_bootstrap=args.bootstrap)
        arrays |= {"state": list(s.names), "state_probability": s.probability, "state_probability_se": s.probability_se,
                   "state_free_energy": s.free_energy, "state_free_energy_se": s.free_energy_se,
                   "state_difference": s.difference, "state_difference_se": s.difference_se}
        top = int(np.argmax(s.probability))
        lines += [f"{name:16s} P = {p:.4g} +- {pse:.2g}   F - F({s.names[top]}) = {d:8.3f} +- {dse:.3f} kJ/mol"
                  for name, p, pse, d, dse in zip(s.names, s.probability, s.probability_se, s.difference[:, top],
                                                  s.difference_se[:, top])]
    reference = None
    if target.reference_path is not None:  # the same free energies of the reference MD, block-bootstrapped
        md = load_reference(target.reference_path)
        ref_values = cv_values(md["x"], cvs)
        blocks = time_blocks(md["chain"]) if "chain" in md else None
        reference = free_energy_surface(key, ref_values, None, target.kT, periodic=periodic, bins=args.bins,
                                        n_bootstrap=args.bootstrap, blocks=blocks)
        arrays |= {"reference_free_energy": reference.free_energy, "reference_free_energy_se": reference.free_energy_se}
        if states:
            r = state_free_energies(key, ref_values, None, target.kT, states, periodic=periodic,
                                    n_bootstrap=args.bootstrap, blocks=blocks)
            arrays |= {"reference_state_probability": r.probability, "reference_state_difference": r.difference,
                       "reference_state_difference_se": r.difference_se}
            lines += [f"reference MD {target.reference_path} ({len(md['x'])} samples; errors by a bootstrap of "
                      f"{'time blocks' if blocks is not None else 'samples'}):"]
            gap = s.difference[:, top] - r.difference[:, top]
            gap_se = np.hypot(s.difference_se[:, top], r.difference_se[:, top])
            lines += [f"{name:16s} P = {p:.4g}   F - F({s.names[top]}) = {d:8.3f} +- {dse:.3f} kJ/mol   model - "
                      f"reference = {g:+.3f} +- {gse:.3f}"
                      for name, p, d, dse, g, gse in zip(r.names, r.probability, r.difference[:, top],
                                                         r.difference_se[:, top], gap, gap_se)]
    with _keeping(f"the free energies to {out}", "the state free energies are printed above"):
        print("\n".join(lines))
        write_atomic(out / "free_energy.npz", lambda f: np.savez(f, **arrays))
        plot_free_energy_surface(surface, out / "free_energy.png", states, periodic, reference=reference)
    print(f"wrote {out / 'free_energy.npz'} and {out / 'free_energy.png'}")


def _read_states(path: str) -> dict:
    """``{state: {cv: [lo, hi]}}`` from a YAML file; one line if it is not that."""
    try:
        with open(path) as f:
            states = yaml.safe_load(f)
    except (OSError, yaml.YAMLError) as e:
        raise BoltzflowError(f"cannot read states from {path}: {e}") from None
    if not (isinstance(states, dict) and states and all(isinstance(b, dict) and b for b in states.values())):
        raise BoltzflowError(f"{path}: states must be a mapping NAME: {{CV: [lo, hi], ...}} (degrees for a torsion, nm "
                             f"for a distance)")
    return states


def _check_writable(path: Path) -> None:
    """One line, before any work, if the file a command writes at its end cannot be written."""
    if writes_files():  # process 0 writes it
        try:
            check_writable(path)
        except OSError as e:
            raise BoltzflowError(f"cannot write {path}: {e}") from e


@contextlib.contextmanager
def _keeping(what, kept: str):
    """An OSError while writing a command's results (a full disk) as one line saying what could not be written
    and what is ``kept``."""
    try:
        yield
    except OSError as e:
        raise BoltzflowError(f"could not write {what}: {e} ({kept})") from e


def _plot(args) -> None:
    load(args.run).plot()
    print(f"wrote the plots of {args.run}")


def _md_target_spec(arg: str, engine: str, temperature: float | None) -> dict:
    """md's target: a preset name, ``module:function``, or a config file (its target section: the molecule a
    training of yours uses), with --engine and --temperature where given."""
    spec = load_config(arg).target if is_config_file(arg) else arg
    if isinstance(spec, str):
        spec = {"function": spec} if ":" in spec else {"name": spec}
    return {**spec, **({"engine": engine} if engine != "jax" else {}),
            **({"temperature": temperature} if temperature is not None else {})}


def _md(args) -> None:
    target = make_target(_md_target_spec(args.target, args.engine, args.temperature))
    if isinstance(target, MoleculeTarget):  # kJ/mol, kelvin, dalton
        t0, boltzmann, energy = target.temperature, GAS_CONSTANT, target.energy_kj
        masses = np.repeat(target.molecule.masses, 3)
    elif isinstance(target, ParticleTarget):  # reduced units: u = -log p, temperatures relative to the target's
        t0, masses, boltzmann, energy = 1.0, np.ones(target.dim), 1.0, lambda y: -target.log_prob(y)
    else:
        raise BoltzflowError(f"md needs a molecular or particle target (aldp_implicit, aldp_vacuum, "
                             f"ace_ala3_nme_implicit, molecule, dw4, lj13, lj55), got {args.target!r}")
    temps = geometric_temperatures(t0, args.t_max or t0, args.replicas if args.t_max else 1)
    dt_ps = args.dt_fs * 1e-3
    steps = lambda ps: int(round(ps / dt_ps))  # noqa: E731
    save_every, exchange_every = steps(args.save_ps), steps(args.exchange_ps)
    n_steps = int(round(args.ns * 1000 / args.save_ps)) * save_every
    equilibration = int(round(args.equilibration_ps / args.save_ps)) * save_every
    out = Path(args.out or f"runs/md-{target.name}")
    with jax.enable_x64(True) if args.float64 else contextlib.nullcontext():  # this command's work only
        x0 = minimize(target.molecule).reshape(-1) if isinstance(target, MoleculeTarget) else target.start()
        report = run_replica_exchange(
            str(out), energy, masses, x0, temps, n_chains=args.chains, n_steps=n_steps, equilibration=equilibration,
            dt_fs=args.dt_fs, friction=args.friction, save_every=save_every, exchange_every=exchange_every,
            seed=args.seed, dtype=np.float64 if args.float64 else np.float32, time_limit_s=args.time_limit,
            progress=not args.no_progress, boltzmann=boltzmann)
    if not report["finished"]:
        print(f"stopped after {report['wall_s']:.0f} s with a checkpoint in {out}; run the same command to continue")
        return
    populations = {}
    if isinstance(target, MoleculeTarget):
        summary = write_reference(str(out), target.molecule)
        populations = {k: v for k, v in summary.items() if k.startswith("population")}
    written = out / ("reference.npz" if isinstance(target, MoleculeTarget) else "samples.npz")
    print(_table({**{k: v for k, v in report.items() if not isinstance(v, (dict, list))}, **populations},
                 f"md of {target.name}: {report['samples']} samples -> {written}"))


def _reference(args) -> None:
    target = make_target(args.target)
    if not isinstance(target, MoleculeTarget):
        raise BoltzflowError(f"reference needs a molecular target, got {args.target!r}")
    summary = write_reference(args.out, target.molecule, args.runs, thin=args.thin)
    if args.compact:
        write_compact(str(Path(args.out) / "reference.npz"), args.compact)
    print(_table({k: v for k, v in summary.items() if not isinstance(v, (dict, list))},
                  f"reference set of {len(args.runs)} MD run(s) -> {args.out}/reference.npz"))


def _targets(args) -> None:
    print(targets_table())


def _presets(args) -> None:
    print("\n".join(presets()))


def _table(metrics: dict, title: str) -> str:
    lines = [title, "-" * len(title)]
    for k, v in metrics.items():
        if isinstance(v, list) and all(isinstance(a, float) for a in v):
            v = "[" + ", ".join(f"{a:.3g}" for a in v) + "]"
        lines.append(f"{k:28s} {v:.6g}" if isinstance(v, float) else f"{k:28s} {v}")
    return "\n".join(lines + _warnings(metrics))


def _warnings(metrics: dict) -> list[str]:
    """The lines a user must not miss: the missing-mass check's verdict and cost (an exploration that does not use
    the model: what it finds that the model does not, or that it could not conclude)."""
    if "explore_target_evals" not in metrics:
        return []
    budget = metrics.get("explore_budget")
    cost = (f"its exploration: {metrics['explore_target_evals']:.3g} target evaluations"
            + (f" (budget {budget:.3g})" if budget else "") + f", {metrics['explore_seconds']:.1f} s"
            + (", kept from an earlier evaluation of this run" if metrics.get("explore_reused") else ""))
    out = []
    if metrics.get("mass_missing"):
        every = " (every one of its independent groups does)" if metrics.get("unseen_in_groups") == 1 else ""
        out.append(f"WARNING: mass may be missing: an exploration without the model finds "
                   f"{metrics['unseen_mass']:.3g} +- {metrics['unseen_mass_stderr']:.2g} of p{every} where the "
                   f"model's density is ten times too thin, which its own samples do not see; its ESS and log Z error "
                   f"bars do not include that mass")
    sigma = metrics.get("log_z_difference_sigma")
    if sigma is not None and sigma > 3:  # one-sided: mass the model misses makes its log Z the lower one
        out.append(f"WARNING: the exploration's log Z exceeds the model's by {metrics['log_z_difference']:.3g} "
                   f"({sigma:.1f} standard errors): mass may be missing")
    if out:
        short = ("" if metrics.get("explore_converged", True) else
                 " (it did not converge within its budget: more may be missing)")
        return out + [f"missing-mass check: {cost}{short}"]
    if not metrics.get("explore_converged", True):
        return [f"WARNING: the missing-mass check could not conclude: {cost}, ran out before its reference was wide "
                f"enough; give it more (explore: {{budget: N}}) or the target's extent (explore: {{bounds: ...}})"]
    return [f"missing-mass check: no mass of p the model misses (none above 0.1 % of p at 3 standard errors or in "
            f"every group); {cost}"]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="boltzflow", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    scale = argparse.ArgumentParser(add_help=False)  # several devices and hosts (module docstring)
    scale.add_argument("--devices", type=int, help="devices to run data-parallel on (default: all visible)")
    scale.add_argument("--coordinator", metavar="HOST:PORT", help="several hosts: host 0's address, on every host")
    scale.add_argument("--num-hosts", type=int, help="several hosts: how many")
    scale.add_argument("--host-id", type=int, help="several hosts: this host's index, 0 .. num-hosts - 1")
    weights = argparse.ArgumentParser(add_help=False)
    weights.add_argument("--paths", type=int, default=1,
                         help="a stochastic model's (an SNF's, an augmented flow's) paths pooled into each importance "
                              "weight and log q estimate: lower variance for their cost (default 1)")
    t = sub.add_parser("train", help="train a sampler from a config file or preset", parents=[scale])
    t.add_argument("config", help="YAML file or preset name (see `boltzflow presets`)")
    t.add_argument("--out", help="run directory (default runs/NAME-seedN); an existing run there is resumed")
    t.add_argument("--restart", action="store_true",
                   help="start over in --out, deleting the run there (its config, checkpoint, metrics, reports)")
    t.add_argument("--seed", type=int)
    t.add_argument("--steps", type=int)
    t.add_argument("--time-limit", type=float, help="seconds of training before stopping with a checkpoint")
    t.add_argument("--target", help="replace the target: a preset name or module:function")
    t.add_argument("--init-from", metavar="DIR", help="start from the trained model of another run (same flow)")
    t.add_argument("--data", help="samples of p (.npy / .npz, shape (n, dim)) for the maximum-likelihood term")
    t.add_argument("--eval-samples", type=int, default=10_000)
    t.add_argument("--no-progress", action="store_true")
    t.set_defaults(func=_train)
    e = sub.add_parser("evaluate", help="evaluate a run directory; writes DIR/eval.json", parents=[scale, weights])
    e.add_argument("run")
    e.add_argument("--samples", type=int, default=10_000)
    e.add_argument("--chunk", type=int, default=CHUNK, help="samples drawn and reduced at a time (split over devices)")
    e.add_argument("--ais", action="store_true", help="also evaluate AIS targeting p, started from the flow")
    e.add_argument("--baseline", action="store_true",
                   help="also report the equal-cost baseline: tempered SMC with HMC moves given the training's "
                        "target evaluations (the missing-mass check's exploration), keys baseline_...")
    e.add_argument("--seed", type=int, default=1)
    e.set_defaults(func=_evaluate)
    s = sub.add_parser("sample", help="draw samples with importance log weights into an .npz file, or a trajectory "
                                      "of a molecule", parents=[scale, weights])
    s.add_argument("run")
    s.add_argument("--n", type=int, default=10_000)
    s.add_argument("--out", default="samples.npz",
                   help="FILE.npz (x, log_w), or for a molecule a trajectory FILE.pdb / .dcd / .xtc / .h5 with the "
                        "log weights in FILE.EXT.log_w.npy")
    s.add_argument("--resample", type=int, metavar="M",
                   help="write M unweighted frames (systematic importance resampling) instead: a trajectory only")
    s.add_argument("--seed", type=int, default=2)
    s.set_defaults(func=_sample)
    fe = sub.add_parser("free-energy", help="free-energy surface and state free energies of a molecular run "
                                            "(reweighted samples); writes DIR/free_energy.npz and .png",
                        parents=[scale, weights])
    fe.add_argument("run")
    fe.add_argument("--cv", nargs=2, metavar=("CV1", "CV2"),
                    help="collective variables: named torsions or atom indices i,j (distance) / i,j,k,l (torsion); "
                         "default the first residue's phi psi")
    fe.add_argument("--states", metavar="FILE.yaml",
                    help="states as boxes NAME: {CV: [lo, hi]} (degrees / nm; lo > hi wraps a torsion through 180); "
                         "default for phi psi (or phi_k psi_k of residue k): C7eq, alpha_R, C7ax_alpha_L")
    fe.add_argument("--n", type=int, default=100_000, help="model samples")
    fe.add_argument("--bins", type=int, default=60, help="bins per collective variable")
    fe.add_argument("--bootstrap", type=int, default=200, help="bootstrap replicates for the standard errors")
    fe.add_argument("--seed", type=int, default=3)
    fe.set_defaults(func=_free_energy)
    pl = sub.add_parser("plot", help="(re)draw a run's plots")
    pl.add_argument("run")
    pl.set_defaults(func=_plot)
    m = sub.add_parser("md", help="reference samples of a molecular target by replica-exchange Langevin MD "
                                  "(resumable)")
    m.add_argument("target", help="molecular target preset (aldp_implicit, aldp_vacuum, ace_ala3_nme_implicit), a "
                                  "config file (its target section: a molecule of your own) or module:function, or "
                                  "a particle target (dw4, lj13, lj55: reduced units, times in thousandths of the "
                                  "target's time unit where the options say fs / ps / ns)")
    m.add_argument("--temperature", type=float, help="kelvin (default: the target's; molecules only)")
    m.add_argument("--t-max", type=float, help="highest replica temperature (default: no replica exchange); for a "
                                                "particle target relative to its own (e.g. 3)")
    m.add_argument("--replicas", type=int, default=8, help="temperatures from T to --t-max, geometric")
    m.add_argument("--chains", type=int, default=16, help="independent replica-exchange chains run as one batch")
    m.add_argument("--ns", type=float, default=1.0, help="simulated nanoseconds per chain after equilibration")
    m.add_argument("--equilibration-ps", type=float, default=50.0)
    m.add_argument("--dt-fs", type=float, default=1.0)
    m.add_argument("--friction", type=float, default=1.0, help="Langevin friction, 1/ps")
    m.add_argument("--save-ps", type=float, default=1.0, help="picoseconds between saved samples of each chain")
    m.add_argument("--exchange-ps", type=float, default=0.1, help="picoseconds between replica swaps")
    m.add_argument("--engine", default="jax", choices=["jax", "openmm"])
    m.add_argument("--float64", action="store_true")
    m.add_argument("--seed", type=int, default=0)
    m.add_argument("--out", help="run directory (default runs/md-TARGET); an unfinished run there is resumed")
    m.add_argument("--time-limit", type=float, help="seconds before stopping with a checkpoint")
    m.add_argument("--no-progress", action="store_true")
    m.set_defaults(func=_md)

    r = sub.add_parser("reference", help="one reference set from finished MD runs of the same settings (e.g. seeds)")
    r.add_argument("target", help="the molecular target the runs sampled (aldp_implicit, ...)")
    r.add_argument("runs", nargs="+", help="MD run directories (each with samples.npz)")
    r.add_argument("--out", required=True, help="directory for reference.npz and reference.json")
    r.add_argument("--thin", type=int, default=1, help="keep every THIN-th save of each chain")
    r.add_argument("--compact", metavar="FILE.npz", help="also write the compact form boltzflow ships")
    r.set_defaults(func=_reference)

    sub.add_parser("targets", help="list built-in targets").set_defaults(func=_targets)
    sub.add_parser("presets", help="list preset configs").set_defaults(func=_presets)
    debug = "print the full traceback of any error"
    p.add_argument("--debug", action="store_true", help=debug)
    for command in sub.choices.values():  # also after the command; SUPPRESS: absent there keeps the top-level value
        command.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=debug)
    return p


SHUTDOWN_TIMEOUT_S = 3600  # how long a host waits at exit for the others (host 0 writes the run's files)


def _start_hosts(args) -> None:
    """``jax.distributed.initialize`` when the command names a coordinator (before anything touches a device)."""
    names = ("coordinator", "num_hosts", "host_id")
    given = [getattr(args, n, None) is not None for n in names]
    if not any(given):
        return
    if not all(given) or not 0 <= args.host_id < args.num_hosts:
        raise BoltzflowError("several hosts need --coordinator HOST:PORT, --num-hosts N and --host-id I "
                             "(0 <= I < N), on every host")
    # the other hosts wait at exit while host 0 alone writes the report and its plots (minutes for a molecule's
    # 10,000 weighted samples on a busy host; JAX's default of 300 s ended a two-process test on one busy machine)
    jax.distributed.initialize(args.coordinator, num_processes=args.num_hosts, process_id=args.host_id,
                               shutdown_timeout_seconds=SHUTDOWN_TIMEOUT_S)


@functools.cache
def _library_dirs() -> tuple[str, ...]:
    """Directories of code that is not the user's: boltzflow, the standard library, JAX (also when not installed in
    site-packages)."""
    dirs = {Path(__file__).parent, Path(jax.__file__).parent,
            *(Path(sysconfig.get_paths()[k]) for k in ("stdlib", "platstdlib"))}
    return tuple(os.path.realpath(d) + os.sep for d in dirs)


def _is_user_file(filename: str) -> bool:
    if filename.startswith("<"):  # <frozen importlib._bootstrap>, <string>, ...
        return False
    path = os.path.realpath(filename)
    return not ({"site-packages", "dist-packages"} & set(Path(path).parts) or path.startswith(_library_dirs()))


def user_frames(exc: BaseException) -> list[traceback.FrameSummary]:
    """The frames of ``exc``'s own traceback in the user's code, innermost last: files outside the boltzflow package,
    site-packages / dist-packages, the standard library, JAX and ``<frozen ...>``."""
    return [f for f in traceback.extract_tb(exc.__traceback__) if _is_user_file(f.filename)]


def _raised_in_user_code(exc: BaseException, skip_first: bool) -> BaseException | None:
    """The first exception of ``exc``'s chain (``exc``, its ``__cause__`` or unsuppressed ``__context__``, and so on;
    without ``exc`` itself if ``skip_first``) with frames of user code; None if there is none."""
    seen = set()
    e = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if not (skip_first and e is exc) and user_frames(e):
            return e
        e = e.__cause__ or (None if e.__suppress_context__ else e.__context__)
    return None


def _describe_exception(exc: BaseException) -> str:
    """``TYPE: MESSAGE`` as the last line of a traceback, without notes (JAX's note about its removed frames)."""
    kind = type(exc)
    module = kind.__module__
    name = kind.__qualname__ if module in ("builtins", "__main__") else f"{module}.{kind.__qualname__}"
    return f"{name}: {exc}" if str(exc) else name


def _print_user_frames(exc: BaseException, show_exception: bool) -> None:
    """The user's frames of ``exc`` (file:line in function, and the line), ``exc`` itself if ``show_exception``, and
    where the rest is."""
    cwd = os.getcwd()
    lines = []
    for f in user_frames(exc):
        rel = os.path.relpath(f.filename, cwd)
        lines.append(f"  {f.filename if rel.startswith('..') else rel}:{f.lineno} in {f.name}")
        if f.line:
            lines.append(f"      {f.line}")
    if show_exception:
        lines.append(_describe_exception(exc))
    lines.append("(--debug for the full traceback)")
    print("\n".join(lines), file=sys.stderr)


def _callback_error(exc: BaseException) -> str | None:
    """The message of a BoltzflowError raised inside a JAX host callback: JAX raises a JaxRuntimeError (or, from a
    compiled call's fast path, a ValueError) whose message ends with the callback's traceback, last line
    ``BoltzflowError: MESSAGE``; None for any other exception."""
    m = re.search(r"\nBoltzflowError: ([^\n]*)\s*\Z", str(exc))
    return m.group(1) if m else None


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    retain_freed_memory()
    if "" not in sys.path and os.getcwd() not in sys.path:  # `--target my_module:make` from the working directory
        sys.path.append(os.getcwd())
    try:
        _start_hosts(args)
        args.func(args)
    except BoltzflowError as e:
        cause = None if args.debug else _raised_in_user_code(e, skip_first=True)
        if args.debug:
            traceback.print_exc()
        print(f"boltzflow: error: {e}", file=sys.stderr)
        if cause is not None:
            _print_user_frames(cause, show_exception=True)
        return 2
    except KeyboardInterrupt:
        print(INTERRUPTED, file=sys.stderr)
        return 130
    except Terminated as e:
        print(f"boltzflow: terminated at step {e.step} (checkpoint written; run the same command to resume)",
              file=sys.stderr)
        return 143
    except Exception as e:  # noqa: BLE001 -- raised through the user's code (else re-raised: a bug in boltzflow)
        message = _callback_error(e)
        if message is not None:  # a BoltzflowError in a JAX host callback (the OpenMM engine), wrapped by JAX
            if args.debug:
                traceback.print_exc()
            print(f"boltzflow: error: {message}", file=sys.stderr)
            return 2
        culprit = _raised_in_user_code(e, skip_first=False)
        if culprit is None:
            raise
        if args.debug:
            traceback.print_exc()
        else:
            print(f"boltzflow: error: {_describe_exception(e)}", file=sys.stderr)
            _print_user_frames(culprit, show_exception=culprit is not e)
        return 1
    return 0


INTERRUPTED = "boltzflow: interrupted (the last checkpoint is kept; run the same command to resume)"
#: seconds after a Ctrl-C before the command ends itself, where the interrupt never reached it (a library in whose
#: code it was raised dropped it: seen once in the test suite, 2026-12-06, a Ctrl-C during the first compilation)
INTERRUPT_GRACE_S = 10.0


def _on_sigint(signum, frame) -> None:
    """SIGINT in :func:`entry`: Python's KeyboardInterrupt, and a watchdog that ends the process with status 130
    :data:`INTERRUPT_GRACE_S` seconds later if it is still running then."""
    watchdog = threading.Timer(INTERRUPT_GRACE_S, _exit_interrupted)
    watchdog.daemon = True
    watchdog.start()
    signal.default_int_handler(signum, frame)


def _exit_interrupted() -> None:
    print(INTERRUPTED, file=sys.stderr)
    _hard_exit(130)


def _hard_exit(code: int) -> None:
    """End the process now, without the interpreter's teardown (:func:`entry`), its output flushed and the OpenMM
    workers closed."""
    for signum in (signal.SIGINT, signal.SIGTERM):  # a second one does not interrupt the exit
        signal.signal(signum, signal.SIG_IGN)
    sys.stdout.flush()
    sys.stderr.flush()
    close_all()
    os._exit(code)


def entry() -> None:
    """The ``boltzflow`` console script: :func:`main` in a process of its own, which it ends.

    An interrupted command (130, 143) ends without the interpreter's teardown (``os._exit``, once its output is
    flushed and the OpenMM engine's worker processes are closed): XLA's compiler threads may still be at work, and
    tearing the interpreter down under them crashed the process (exit 139). No checkpoint is at risk: each of its files
    is written to a temporary one and renamed (boltzflow.checkpoint). An interrupt that Python would drop because it
    came while a garbage-collection callback ran (JAX has one) is raised again (:func:`_raise_dropped_interrupt`),
    and one that never arrives ends the process after a grace period (:func:`_on_sigint`).
    """
    sys.unraisablehook = functools.partial(_raise_dropped_interrupt, sys.unraisablehook)
    signal.signal(signal.SIGINT, _on_sigint)
    code = main()
    if code in (130, 143):
        _hard_exit(code)
    sys.exit(code)


def _raise_dropped_interrupt(hook, unraisable) -> None:
    """``sys.unraisablehook`` of :func:`entry`: an interrupt (KeyboardInterrupt, :class:`Terminated`) raised where
    Python drops exceptions ("Exception ignored in ...": a garbage-collection callback, a ``__del__``) is raised again
    in the main thread; anything else goes to ``hook``. The signal is sent to the main thread again from another
    thread, a moment later: sent from here, its handler would raise inside this hook, and be dropped again."""
    kind = unraisable.exc_type
    signum = (signal.SIGINT if issubclass(kind, KeyboardInterrupt) else
              signal.SIGTERM if issubclass(kind, Terminated) else None)
    if signum is None:
        hook(unraisable)
        return
    threading.Timer(0.01, signal.pthread_kill, (threading.main_thread().ident, signum)).start()


if __name__ == "__main__":
    entry()
