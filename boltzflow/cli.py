"""The ``boltzflow`` command: train | evaluate | sample | plot | targets | presets.

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

from boltzflow.config import config_from_dict, presets, read_config
from boltzflow.errors import BoltzflowError
from boltzflow.evaluate import evaluate
from boltzflow.experiment import load_run, train
from boltzflow.flows.paths import path_weights
from boltzflow.plot import plot_samples, plot_training
from boltzflow.targets import targets_table


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
    summary = train(cfg, out, progress=not args.no_progress)
    report = finish_run(out, summary, n_eval=args.eval_samples)
    print(_table(report["eval"], f"{cfg.name}: {summary['steps']} steps in {summary['time_s']:.1f} s -> {out}"))


def finish_run(out: Path, summary: dict, n_eval: int) -> dict:
    """After training: evaluate, plot samples and curves, write report.json."""
    exp, _ = load_run(out)
    metrics = evaluate(exp, jax.random.key(exp.config.train.seed + 1), n_samples=n_eval)
    _plot_model_samples(exp, out / "samples.png")
    plot_training(out)
    report = {"config": exp.config.to_dict(), "training": summary, "eval": metrics}
    (out / "report.json").write_text(json.dumps(report, indent=1))
    return report


def _plot_model_samples(exp, path: Path) -> None:
    key = jax.random.key(123)
    x = exp.model.sample(key, 3000)
    exact = exp.target.sample(key, 3000) if exp.target.can_sample else None
    plot_samples(exp.target, x, path, title=f"{exp.config.name}: model samples", exact=exact)


def _evaluate(args) -> None:
    exp, state = load_run(args.run)
    ais_state = getattr(state.method_state, "ais_state", None)
    metrics = evaluate(exp, jax.random.key(args.seed), n_samples=args.samples, ais_state=ais_state,
                       with_ais=args.ais)
    (Path(args.run) / "eval.json").write_text(json.dumps(metrics, indent=1))
    print(_table(metrics, f"evaluation of {args.run} ({args.samples} samples)"))


def _sample(args) -> None:
    exp, _ = load_run(args.run)
    x, log_w, _ = jax.jit(lambda k: path_weights(exp.model, exp.target, k, args.n))(jax.random.key(args.seed))
    np.savez(args.out, x=np.asarray(x), log_w=np.asarray(log_w))
    print(f"wrote {args.n} samples and log weights to {args.out}")


def _plot(args) -> None:
    exp, _ = load_run(args.run)
    run = Path(args.run)
    _plot_model_samples(exp, run / "samples.png")
    plot_training(run)
    print(f"wrote {run / 'samples.png'} and {run / 'training.png'}")


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
    return "\n".join(lines)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="boltzflow", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train a sampler from a config file or preset")
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
    e = sub.add_parser("evaluate", help="evaluate a run directory; writes DIR/eval.json")
    e.add_argument("run")
    e.add_argument("--samples", type=int, default=10_000)
    e.add_argument("--ais", action="store_true", help="also evaluate AIS targeting p, started from the flow")
    e.add_argument("--seed", type=int, default=1)
    e.set_defaults(func=_evaluate)
    s = sub.add_parser("sample", help="draw samples with importance log weights into an .npz file")
    s.add_argument("run")
    s.add_argument("--n", type=int, default=10_000)
    s.add_argument("--out", default="samples.npz")
    s.add_argument("--seed", type=int, default=2)
    s.set_defaults(func=_sample)
    pl = sub.add_parser("plot", help="(re)draw a run's plots")
    pl.add_argument("run")
    pl.set_defaults(func=_plot)
    sub.add_parser("targets", help="list built-in targets").set_defaults(func=_targets)
    sub.add_parser("presets", help="list preset configs").set_defaults(func=_presets)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
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
