"""The ``boltzflow`` command: train | evaluate | sample | plot | md | reference | targets | presets.

``train``, ``evaluate`` and ``sample`` run data-parallel on ``--devices`` devices (default: all visible;
boltzflow.sharding); on several hosts every host runs the same command with ``--coordinator HOST:PORT --num-hosts N
--host-id I`` (jax.distributed.initialize), the run directory on a shared file system, written by host 0 only.

User mistakes (BoltzflowError) print one line ``boltzflow: error: ...`` and exit with status 2; anything else is a
bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import jax
import numpy as np

from boltzflow.allocator import retain_freed_memory
from boltzflow.config import config_from_dict, presets, read_config
from boltzflow.errors import BoltzflowError
from boltzflow.evaluate import evaluate
from boltzflow.experiment import load_run, train
from boltzflow.molecules.md import geometric_temperatures, run_replica_exchange
from boltzflow.molecules.reference import load_reference, write_compact, write_reference
from boltzflow.molecules.system import minimize
from boltzflow.plot import plot_image_grid, plot_molecule_samples, plot_samples, plot_training
from boltzflow.sharding import use_devices, writes_files
from boltzflow.targets import make_target, targets_table
from boltzflow.targets.molecule import MoleculeTarget
from boltzflow.vae import VAE, generate, reconstruct


def _train(args) -> None:
    raw, source = read_config(args.config)
    if not isinstance(raw, dict):
        raise BoltzflowError(f"{source}: expected a mapping of config sections, got {type(raw).__name__}")
    if args.target:
        raw["target"] = args.target
    if args.data:  # a method without a data option says so when the config is parsed
        method = raw.get("method") or {}
        raw["method"] = {**({"name": method} if isinstance(method, str) else method),
                         "data": str(Path(args.data).resolve())}
    overrides = {k: v for k, v in (("seed", args.seed), ("steps", args.steps), ("time_limit_s", args.time_limit),
                                   ("init_from", args.init_from and str(Path(args.init_from).resolve())))
                 if v is not None}
    if overrides:
        raw["train"] = {**(raw.get("train") or {}), **overrides}
    cfg = config_from_dict(raw, source)
    out = Path(args.out or f"runs/{cfg.name}-seed{cfg.train.seed}")
    with use_devices(args.devices):
        summary = train(cfg, out, progress=not args.no_progress)
    report = finish_run(out, summary, n_eval=args.eval_samples, devices=args.devices)
    print(_table(report["eval"], f"{cfg.name}: {summary['steps']} steps in {summary['time_s']:.1f} s -> {out}"))


def finish_run(out: Path, summary: dict, n_eval: int, devices: int | None = None) -> dict:
    """After training: evaluate (on ``devices``), plot samples and curves, write report.json."""
    exp, _ = load_run(out)
    with use_devices(devices):
        metrics = evaluate(exp, jax.random.key(exp.config.train.seed + 1), n_samples=n_eval, check=None)
    report = {"config": exp.config.to_dict(), "training": summary, "eval": metrics}
    if writes_files():
        _plot_model_samples(exp, out / "samples.png")
        plot_training(out)
        (out / "report.json").write_text(json.dumps(report, indent=1))
    return report


def _plot_model_samples(exp, path: Path) -> None:
    key = jax.random.key(123)
    if isinstance(exp.model, VAE):  # images: reconstructions of test images, and samples of the decoder
        _plot_vae(exp, path.parent, key)
        return
    if isinstance(exp.target, MoleculeTarget):  # torsions, not coordinates
        x, log_w = exp.weighted_samples(key, 10_000)
        ref = exp.target.reference_path and load_reference(exp.target.reference_path)["x"]
        plot_molecule_samples(exp.target, x, log_w, path.parent, reference_x=ref)
        return
    x = exp.model.sample(key, 3000)
    exact = exp.target.sample(key, 3000) if exp.target.can_sample else None
    plot_samples(exp.target, x, path, title=f"{exp.config.name}: model samples", exact=exact)


def _plot_vae(exp, out: Path, key, n: int = 12) -> None:
    """``reconstructions.png`` (test images over their posterior reconstructions E[x | z], z ~ q(z | x)) and
    ``samples.png`` (E[x | z] for z ~ p(z), four rows)."""
    data, model = exp.target, exp.model
    k_rec, k_gen = jax.random.split(key)
    x = data.test[:: max(data.test.shape[0] // n, 1)][:n]
    rec = jax.jit(lambda x: reconstruct(model, x, k_rec))(x)
    plot_image_grid([("test", x), ("reconstructed", rec)], data.shape, out / "reconstructions.png",
                    title=f"{exp.config.name}: reconstructions")
    samples = np.asarray(jax.jit(lambda k: generate(model, k, 4 * n))(k_gen))
    plot_image_grid([("", samples[i * n:(i + 1) * n]) for i in range(4)], data.shape, out / "samples.png",
                    title=f"{exp.config.name}: samples of the decoder")


def _evaluate(args) -> None:
    exp, state = load_run(args.run)
    ais_state = getattr(state.method_state, "ais_state", None)
    with use_devices(args.devices):
        metrics = evaluate(exp, jax.random.key(args.seed), n_samples=args.samples, ais_state=ais_state,
                           with_ais=args.ais, chunk=args.chunk, check=None)
    if writes_files():
        (Path(args.run) / "eval.json").write_text(json.dumps(metrics, indent=1))
    print(_table(metrics, f"evaluation of {args.run} ({args.samples} samples)"))


def _sample(args) -> None:
    exp, _ = load_run(args.run)
    with use_devices(args.devices):
        x, log_w = exp.weighted_samples(jax.random.key(args.seed), args.n)
    if not writes_files():
        return
    np.savez(args.out, x=x, log_w=log_w)
    print(f"wrote {args.n} samples and log weights to {args.out}")


def _plot(args) -> None:
    exp, _ = load_run(args.run)
    run = Path(args.run)
    _plot_model_samples(exp, run / "samples.png")
    plot_training(run)
    print(f"wrote the plots of {run}")


def _md(args) -> None:
    spec = {"name": args.target, "engine": args.engine}
    if args.temperature is not None:
        spec["temperature"] = args.temperature
    target = make_target(spec)
    if not isinstance(target, MoleculeTarget):
        raise BoltzflowError(f"md needs a molecular target (aldp_implicit, aldp_vacuum, molecule), got {args.target!r}")
    if args.float64:
        jax.config.update("jax_enable_x64", True)
    t0 = target.temperature
    temps = geometric_temperatures(t0, args.t_max or t0, args.replicas if args.t_max else 1)
    dt_ps = args.dt_fs * 1e-3
    steps = lambda ps: int(round(ps / dt_ps))  # noqa: E731
    save_every, exchange_every = steps(args.save_ps), steps(args.exchange_ps)
    n_steps = int(round(args.ns * 1000 / args.save_ps)) * save_every
    equilibration = int(round(args.equilibration_ps / args.save_ps)) * save_every
    out = Path(args.out or f"runs/md-{target.name}")
    report = run_replica_exchange(
        str(out), target.energy_kj, np.repeat(target.molecule.masses, 3), minimize(target.molecule).reshape(-1),
        temps, n_chains=args.chains, n_steps=n_steps, equilibration=equilibration, dt_fs=args.dt_fs,
        friction=args.friction, save_every=save_every, exchange_every=exchange_every, seed=args.seed,
        dtype=np.float64 if args.float64 else np.float32, time_limit_s=args.time_limit,
        progress=not args.no_progress)
    if not report["finished"]:
        print(f"stopped after {report['wall_s']:.0f} s with a checkpoint in {out}; run the same command to continue")
        return
    summary = write_reference(str(out), target.molecule)
    print(_table({**{k: v for k, v in report.items() if not isinstance(v, (dict, list))},
                  **{k: v for k, v in summary.items() if k.startswith("population")}},
                 f"md of {target.name}: {report['samples']} samples -> {out}/reference.npz"))


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
    """The lines a user must not miss: the model's estimates disagree with an exploration that does not use it."""
    out = []
    if metrics.get("mass_missing"):
        out.append(f"WARNING: mass may be missing: an exploration without the model finds "
                   f"{metrics['unseen_mass']:.3g} +- {metrics['unseen_mass_stderr']:.2g} of p where the model's "
                   f"density is ten times too thin, which its own samples do not see; its ESS and log Z error bars "
                   f"do not include that mass")
    sigma = metrics.get("log_z_difference_sigma")
    if sigma is not None and sigma > 3:  # one-sided: mass the model misses makes its log Z the lower one
        out.append(f"WARNING: the exploration's log Z exceeds the model's by {metrics['log_z_difference']:.3g} "
                   f"({sigma:.1f} standard errors): mass may be missing")
    return out


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="boltzflow", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    scale = argparse.ArgumentParser(add_help=False)  # several devices and hosts (module docstring)
    scale.add_argument("--devices", type=int, help="devices to run data-parallel on (default: all visible)")
    scale.add_argument("--coordinator", metavar="HOST:PORT", help="several hosts: host 0's address, on every host")
    scale.add_argument("--num-hosts", type=int, help="several hosts: how many")
    scale.add_argument("--host-id", type=int, help="several hosts: this host's index, 0 .. num-hosts - 1")
    t = sub.add_parser("train", help="train a sampler from a config file or preset", parents=[scale])
    t.add_argument("config", help="YAML file or preset name (see `boltzflow presets`)")
    t.add_argument("--out", help="run directory (default runs/NAME-seedN); an existing run there is resumed")
    t.add_argument("--seed", type=int)
    t.add_argument("--steps", type=int)
    t.add_argument("--time-limit", type=float, help="seconds of training before stopping with a checkpoint")
    t.add_argument("--target", help="replace the target: a preset name or module:function")
    t.add_argument("--init-from", metavar="DIR", help="start from the trained model of another run (same flow)")
    t.add_argument("--data", help="samples of p (.npy / .npz, shape (n, dim)) for the maximum-likelihood term")
    t.add_argument("--eval-samples", type=int, default=10_000)
    t.add_argument("--no-progress", action="store_true")
    t.set_defaults(func=_train)
    e = sub.add_parser("evaluate", help="evaluate a run directory; writes DIR/eval.json", parents=[scale])
    e.add_argument("run")
    e.add_argument("--samples", type=int, default=10_000)
    e.add_argument("--chunk", type=int, default=4096, help="samples drawn and reduced at a time (split over devices)")
    e.add_argument("--ais", action="store_true", help="also evaluate AIS targeting p, started from the flow")
    e.add_argument("--seed", type=int, default=1)
    e.set_defaults(func=_evaluate)
    s = sub.add_parser("sample", help="draw samples with importance log weights into an .npz file", parents=[scale])
    s.add_argument("run")
    s.add_argument("--n", type=int, default=10_000)
    s.add_argument("--out", default="samples.npz")
    s.add_argument("--seed", type=int, default=2)
    s.set_defaults(func=_sample)
    pl = sub.add_parser("plot", help="(re)draw a run's plots")
    pl.add_argument("run")
    pl.set_defaults(func=_plot)
    m = sub.add_parser("md", help="reference samples of a molecular target by replica-exchange Langevin MD "
                                  "(resumable)")
    m.add_argument("target", help="molecular target preset (aldp_implicit, aldp_vacuum)")
    m.add_argument("--temperature", type=float, help="kelvin (default: the target's)")
    m.add_argument("--t-max", type=float, help="highest replica temperature (default: no replica exchange)")
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


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    retain_freed_memory()
    try:
        _start_hosts(args)
        args.func(args)
    except BoltzflowError as e:
        print(f"boltzflow: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("boltzflow: interrupted (the last checkpoint is kept; run the same command to resume)", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
