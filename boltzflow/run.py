"""The Python API: fit a sampler to a target, then sample it, evaluate it, save it and load it again.

    import jax, boltzflow as bf
    target = bf.target_from_log_prob(log_prob, dim=6)          # a jittable (n, dim) -> (n,) function
    config = bf.load_config("auto", train={"steps": 2000})     # a preset, YAML file or mapping, with overrides
    run = bf.fit(target, config, key=jax.random.key(0))        # in memory; out="runs/x" checkpoints and resumes
    x, log_w = run.sample(jax.random.key(1), 100_000)          # samples and importance log weights log p - log q
    report = run.evaluate(jax.random.key(2), n=100_000)        # ESS, log Z +- s.e., the target's own metrics
    run.save("runs/x"); run = bf.load("runs/x")

``boltzflow train / evaluate / sample / plot`` are these calls with argument parsing and printing around them. A
run's randomness is its config's ``train.seed``; ``fit(key=...)`` sets that seed to the key's
(boltzflow.train.state.key_seed), so ``fit(key=jax.random.key(s))`` trains what ``boltzflow train --seed s`` trains.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import jax
import numpy as np

from boltzflow.config import Config, load_config
from boltzflow.errors import BoltzflowError
from boltzflow.evaluate import CheckSetup, draw_pictures, evaluate, kept_baseline
from boltzflow.experiment import (CHUNK, Experiment, build_experiment, build_method, check_resumable, clear_run_dir,
                                  load_run, precision, prepare_run_dir, run_config, write_run_files)
from boltzflow.plot import plot_training
from boltzflow.targets import FunctionTarget, Target
from boltzflow.train.loop import read_checkpoint_info, read_history, train, write_checkpoint
from boltzflow.train.state import TrainState, key_seed, make_optimizer


@dataclass
class Run:
    """A trained sampler: its config, target and model, the full training state and the logged metrics.

    Attributes:
        experiment: the config, target and trained model (``run.config``, ``run.target``, ``run.model``).
        state: the whole training state (model, optimiser, method state such as FAB's buffer, key, step).
        history: the logged metrics, one dict per logged step (loss, ESS, time, evaluations), as metrics.jsonl.
        summary: steps, training time, flow and target evaluations, the periodic ESS evaluations.
        out: the run directory it was trained in or loaded from, or None (trained in memory).

    A float64 run (``train.dtype: float64``) does its own work in 64-bit JAX without switching the process to it;
    to compute with ``run.model`` yourself, do it inside ``with jax.enable_x64(True):``.
    """

    experiment: Experiment
    state: TrainState
    history: list[dict]
    summary: dict
    out: Path | None = None

    def __repr__(self) -> str:
        return (f"Run({self.config.name!r}, target={self.target!r}, steps={self.summary['steps']}, "
                f"out={None if self.out is None else str(self.out)!r})")

    @property
    def config(self) -> Config:
        """The run's config, every setting it trained with."""
        return self.experiment.config

    @property
    def target(self) -> Any:
        """The target the run samples."""
        return self.experiment.target

    @property
    def model(self) -> Any:
        """The trained model (the parameter average where ``train.ema_decay`` keeps one)."""
        return self.experiment.model

    def sample(self, key: jax.Array, n: int, chunk: int = CHUNK, paths: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """Samples of the model with their importance log weights.

        Args:
            key: a JAX key.
            n: how many samples.
            chunk: samples drawn at a time (bounds memory; chunk i uses ``jax.random.fold_in(key, i)``).
            paths: for a stochastic model (an SNF, an augmented flow), paths pooled into each weight: a forward
                path and ``paths - 1`` backward paths from its sample, a weight of lower variance for that cost
                (boltzflow.flows.paths.path_weights); a flow ignores it.

        Returns:
            ``(x, log_w)``: numpy arrays ``(n, dim)`` and ``(n,)``, log w = log p(x) - log q(x) (path weights for an
            SNF), so that mean w estimates Z and weighted averages estimate expectations under p.

        Example:
            >>> x, log_w = run.sample(jax.random.key(1), 10_000)
        """
        with precision(self.config):
            return self.experiment.weighted_samples(key, n, chunk, paths)

    def evaluate(self, key: jax.Array, n: int = 10_000, *, ais: bool = False, chunk: int = CHUNK,
                 check: bool | None = None, baseline: bool = False, paths: int = 1) -> dict:
        """The report of ``boltzflow evaluate``: ESS, log Z with its standard error, and what the target adds.

        Args:
            key: a JAX key.
            n: model samples (drawn ``chunk`` at a time: n is bounded by time, not memory).
            ais: also estimate with AIS from the model towards p (the config's ``ais`` section).
            chunk: samples drawn and reduced at a time.
            check: run the missing-mass check (an exploration without the model, boltzflow.explore); None: as the
                config's ``explore.check`` says. Its budget is the config's ``explore.budget``, else the training's
                target evaluations; a run with a directory keeps its explorations there, so a second evaluation
                reuses them.
            baseline: also report the equal-cost baseline, keys ``baseline_...``: tempered SMC with HMC moves
                (the check's first exploration, within the same budget), its ESS, log Z and the target's metrics
                of its samples (boltzflow.evaluate.baseline_report).
            paths: for a stochastic model, paths pooled into each weight and each estimate of log q (as
                :meth:`sample`'s), reported as ``paths``; a flow ignores it.

        Returns:
            A flat dict of numbers (boltzflow.evaluate): ``ess`` (a fraction), ``log_z``, ``log_z_stderr``, and where
            the target knows them ``log_z_true``, ``forward_kl``, ``mean_log_q_exact``, ``modes_covered``, ...

        Example:
            >>> report = run.evaluate(jax.random.key(2), n=10_000)
            >>> log_z, stderr = report["log_z"], report["log_z_stderr"]
        """
        ais_state, setup = getattr(self.state.method_state, "ais_state", None), self._check_setup()
        with precision(self.config):
            return evaluate(self.experiment, key, n_samples=n, ais_state=ais_state, with_ais=ais, chunk=chunk,
                            check=check, check_budget=setup.budget, check_dir=setup.cache, baseline=baseline,
                            paths=paths)

    def _check_setup(self) -> CheckSetup:
        """The missing-mass check's (and the baseline's) budget, the training's target evaluations, and the run
        directory that keeps its explorations."""
        return CheckSetup(self.summary.get("target_evals") or None, self.out)

    def plot(self, out: str | Path | None = None) -> list[Path]:
        """Draw the run's pictures (the model's samples as its target shows them, beside the equal-cost baseline's
        where the run directory keeps them and the target draws them; the training curves).

        Args:
            out: a directory (default: the run directory).

        Returns:
            The paths of the files written.
        """
        out = Path(out) if out is not None else self.out
        if out is None:
            raise BoltzflowError("plot: this run was trained in memory; give a directory")
        out.mkdir(parents=True, exist_ok=True)
        with precision(self.config):
            paths = draw_pictures(self.experiment, out, jax.random.key(123),
                                  kept_baseline(self.experiment, self._check_setup()))
        return [*paths, plot_training(self.history, out / "training.png")]

    def save(self, path: str | Path) -> Path:
        """Write the run directory ``boltzflow train`` writes (config.yaml, checkpoint, metrics.jsonl), which
        :func:`load`, ``boltzflow evaluate`` and ``fit(out=path)`` (to train on) read.

        Args:
            path: the directory; one holding another run's config is refused.

        Returns:
            The directory.
        """
        path = Path(path)
        prepare_run_dir(path, self.config)
        write_run_files(path, self.experiment)
        (path / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in self.history))
        write_checkpoint(path, self.state, {"time_s": self.summary["time_s"], "evals": self.summary["evals"],
                                             "step": int(self.state.step)})
        return path


def fit(target: Target | str | dict | None, config: Config | str | Path | dict, *,
        key: jax.Array | None = None, out: str | Path | None = None, progress: bool = True,
        callback: Callable[[int, dict], None] | None = None, time_limit_s: float | None = None,
        log_every: int = 10, restart: bool = False, stop: Callable[[], bool] | None = None) -> Run:
    """Train a sampler of ``target`` as ``config`` says, in memory or into a run directory.

    Args:
        target: a Target, a target spec (a preset name such as ``"gmm40"``, a mapping, ``"module:function"``), or
            None for the config's own target. For a plain function use :func:`target_from_log_prob` first.
        config: a Config, a preset name, a YAML path or a mapping of config sections (:func:`load_config`).
        key: a JAX key; sets the config's ``train.seed`` (None: the config's seed).
        out: a run directory: checkpoints are written there and an interrupted run there resumes; None: nothing is
            written to disk. A run there that cannot be resumed (another config, a checkpoint incomplete, cut short
            or of another model) is an error and left as it is; one that cannot be written is an error before any
            work; a directory this call created is removed again if building the target or model fails.
        progress: show a progress bar.
        callback: ``callback(step, metrics)`` at every logged step (metrics as in metrics.jsonl).
        time_limit_s: stop (with a checkpoint, where ``out`` is given) after this much training wall-clock; as
            ``train.time_limit_s``.
        log_every: steps between logged metrics; also the most steps run as one compiled call, between two
            questions to ``stop``.
        restart: start over in ``out``, deleting the run there (its config, checkpoint, metrics and reports) once
            the new one is built (``boltzflow train --restart``).
        stop: a stop request, asked after each compiled call (``threading.Event().is_set``, set e.g. by a signal
            handler the caller installs: ``boltzflow train`` stops so on SIGTERM; the library installs none): once it
            returns True, training stops at the step reached, with a checkpoint where ``out`` is given (running
            again continues), and the run is returned with ``summary["stopped_by_request"]`` True.

    Returns:
        The trained :class:`Run`.

    Example:
        >>> import jax, jax.numpy as jnp, boltzflow as bf
        >>> target = bf.target_from_log_prob(lambda x: -0.5 * jnp.sum(x**2, axis=-1), dim=2)
        >>> config = bf.load_config("auto", flow={"type": "realnvp", "n_layers": 4, "hidden": 32},
        ...                         train={"steps": 50, "batch_size": 128})        # the preset, small and short
        >>> run = bf.fit(target, config, key=jax.random.key(0), progress=False)
        >>> x, log_w = run.sample(jax.random.key(1), 1000)
        >>> x.shape, log_w.shape
        ((1000, 2), (1000,))
    """
    overrides = {k: v for k, v in (("seed", None if key is None else key_seed(key)),
                                   ("time_limit_s", time_limit_s)) if v is not None}
    config = load_config(config, **({} if target is None else {"target": target}),
                         **({"train": overrides} if overrides else {}))
    out = None if out is None else Path(out)
    with precision(config):
        resume = False
        created = [] if out is None else [d for d in (out, *out.parents) if not d.exists()]  # innermost first
        try:
            if out is not None:
                config = prepare_run_dir(out, config, restart)
                resume = not restart and (out / "checkpoint.eqx").exists()
            exp = build_experiment(config)
            optimizer = make_optimizer(exp.config.train)
            method = build_method(exp, optimizer, fresh=not resume)
        except BaseException:  # leave no empty run directory behind
            _remove_empty(created)
            raise
        if out is not None:
            if resume:
                check_resumable(out, exp, optimizer, method)
            elif restart:
                clear_run_dir(out)
            write_run_files(out, exp)
        trained = train(out, exp.config.train, exp.model, optimizer, method, exp.target, progress=progress,
                        log_every=log_every, callback=callback, should_stop=stop)
    exp.model = trained.state.final_model
    return Run(exp, trained.state, trained.history, trained.summary, out)


def _remove_empty(dirs: list[Path]) -> None:
    """Remove the directories ``dirs`` (innermost first) while they are empty."""
    for d in dirs:
        try:
            d.rmdir()
        except OSError:  # not empty, or not there
            return


def load(path: str | Path, target: Target | str | dict | None = None) -> Run:
    """The run in a run directory (written by ``boltzflow train``, ``fit(out=...)`` or :meth:`Run.save`).

    Args:
        path: the run directory.
        target: the target, where the run was trained on a Python object (its config.yaml cannot rebuild it); or
            any target spec to use in place of the config's.

    Returns:
        The :class:`Run` at its last checkpoint.

    Example:
        >>> run = bf.load("runs/demo")              # a run directory: `boltzflow train ... --out`, or run.save
        >>> ess = run.evaluate(jax.random.key(2))["ess"]
    """
    path = Path(path)
    with precision(run_config(path, target)):
        exp, state = load_run(path, target)
    info = read_checkpoint_info(path / "checkpoint.json") if (path / "checkpoint.json").is_file() else {}
    history = read_history(path, int(state.step))
    summary = {"steps": int(state.step), "time_s": info.get("time_s", 0.0), "evals": info.get("evals", []),
               **{k: history[-1][k] for k in ("flow_evals", "target_evals") if history and k in history[-1]}}
    return Run(exp, state, history, summary, path)


def target_from_log_prob(log_prob: Callable[[jax.Array], jax.Array], dim: int, *, name: str | None = None,
                         log_z: float | None = None, sampler: Callable | None = None) -> Target:
    """A target from a log density function.

    Args:
        log_prob: the unnormalised log density of a batch, a jittable ``(n, dim) -> (n,)`` JAX function.
        dim: the dimension of x.
        name: a name for reports (default: the function's).
        log_z: the exact log normaliser of ``exp(log_prob)``, if known (reports then give the error of log Z).
        sampler: an exact sampler ``(key, n) -> (n, dim)``, if there is one (reports then give E_p[log q] and the
            forward KL on its samples).

    Returns:
        The target, checked once on a batch of 8 standard-normal points.

    Example:
        >>> target = bf.target_from_log_prob(lambda x: -0.5 * jnp.sum(x**2, axis=-1), dim=2,
        ...                                  log_z=float(jnp.log(2 * jnp.pi)))
    """
    return FunctionTarget(log_prob, dim, name=name, log_z=log_z, sampler=sampler)

