"""Evaluation of a trained model, as in the FAB paper (Sec. 5) and the SNF paper, and its pictures: what its
target gives (``report`` and ``draw``: boltzflow.targets.base; a VAE's data set its own, boltzflow.vae.report). For a
sampler q of a target p (log p unnormalised, log Z = log int exp(log p)), from n importance-weighted samples of q:

- ``ess``: Kish effective sample size of flow importance sampling, a fraction in [0, 1];
- ``log_z`` with ``log_z_stderr``: log mean w, w = p/q, with its delta-method standard error; ``log_z_true``
  and ``log_z_error`` when the target knows log Z; ``z_rel_error_pct`` = 100 |Z_hat/Z - 1| (the "MAE of Z");
- ``block_accept``, ``block_nonfinite`` for an SNF: each stochastic block's mean acceptance and the moves rejected
  for non-finite densities, over the samples drawn;
- the target's own metrics (its ``metrics``: exact-sample and mode metrics, boltzflow.targets.base; a molecule's,
  boltzflow.targets.molecule);
- the missing-mass check (``check``; on the command line as the config's ``explore.check`` says, by default up to
  16 dimensions and not for molecules; boltzflow.explore): an
  exploration of the target that does not use the model (tempered SMC from a broad Gaussian, within a budget of
  target evaluations: ``explore.budget``, by default the training's own; its key is the run's, fold 8 of
  ``train.seed``, so every evaluation of a run sees the same exploration, kept in the run directory,
  boltzflow.explore_cache, and its cost, ``explore_target_evals`` and ``explore_seconds``, is paid once) gives
  ``explore_log_z`` +- ``explore_log_z_stderr`` beside the model's, ``log_z_difference`` (exploration minus
  model) and ``log_z_difference_sigma`` (in combined standard errors); and the mass of the region where q is ten
  times too thin, by the exploration and by the model's own importance sampling (``thin_region_mass_explore``,
  ``thin_region_mass_flow``), their difference ``unseen_mass`` +- ``unseen_mass_stderr``, the fraction of the
  exploration's independent groups that see more than 0.1 % of p unseen (``unseen_in_groups``) and ``mass_missing``
  (difference above 0.1 % of p and either above 3 standard errors or seen by every group: the sign test of
  docs/concepts/missing-mass-check.md): a model that never samples a mode reports a confident log Z and ESS, but
  not this; where the difference is at 2-3 standard errors a second exploration is pooled with the first
  (``explore_looks`` 2; boltzflow.explore.check_flow, the second look); ``explore_converged`` false (the budget or
  the rounds ran out before the reference was wide enough) means the check could not conclude;
- with ``ais=True`` the same estimates from AIS (targeting p, step sizes frozen at their trained values); for
  an SNF with Langevin blocks AIS runs in its path space (boltzflow.snf.paths), whose x-marginal is p; for a model
  without a tractable density (an SNF with Metropolis blocks) a one-line error says so.
"""

from __future__ import annotations

import dataclasses
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import jax
import jax.numpy as jnp

from boltzflow.ais import ais_from_settings
from boltzflow.estimators import WeightSums, stream_sums
from boltzflow.experiment import CHECK_FILES, CHUNK, Experiment
from boltzflow.explore import check_flow
from boltzflow.explore_cache import load_exploration, save_exploration
from boltzflow.flows.paths import Space, backward_log_q, block_metrics, path_weights
from boltzflow.plot import plot_histograms, plot_image_grid, plot_molecule_samples, plot_samples
from boltzflow.sharding import device_chunk, writes_files
from boltzflow.targets.base import Target
from boltzflow.targets.report import Evaluation, ModelSamples, Pictures, apply_in_chunks
from boltzflow.train.state import seed_key


#: model samples the missing-mass check draws (at most; fewer when the evaluation draws fewer)
CHECK_SAMPLES = 65_536
#: the check's explorations: fold this of the run's seed key (fold 7 seeds FAB's buffer, boltzflow.experiment)
CHECK_STREAM = 8


def importance_metrics(target, sums: WeightSums, prefix: str = "") -> dict:
    """ESS and log Z (with errors where log Z is known) of weighted samples, from their :class:`WeightSums`."""
    log_z, se = sums.log_z()
    out = {f"{prefix}ess": float(sums.ess()), f"{prefix}log_z": float(log_z),
           f"{prefix}log_z_stderr": float(se), f"{prefix}n_nonfinite": int(sums.n_nonfinite)}
    if target.log_z is not None:
        out[f"{prefix}log_z_error"] = float(log_z) - target.log_z
        out[f"{prefix}z_rel_error_pct"] = float(100 * abs(np.expm1(float(log_z) - target.log_z)))
    return out


def evaluate(exp: Experiment, key: jax.Array, n_samples: int = 10_000, ais_state=None, with_ais: bool = False,
             chunk: int = CHUNK, check: bool | None = False, check_budget: int | None = None,
             check_dir: Path | None = None, baseline: bool = False, paths: int = 1) -> dict:
    """All metrics of the trained model in ``exp`` as a flat dict of floats (see the module docstring).

    Samples are drawn and reduced ``chunk`` at a time (rounded up to a multiple of the devices of the mesh in use,
    boltzflow.sharding, over which each chunk is split); only sums, and what the target's metrics keep of every
    sample (its ``keep_rows``), leave the devices, so n_samples is bounded by time, not memory. ``check``: run the
    missing-mass check (None: as the config's ``explore.check`` says, what the command line does), within
    ``check_budget`` target evaluations unless the config's ``explore.budget`` says otherwise (None: no limit but
    ``explore.n``), keeping its explorations in ``check_dir`` (None: nowhere). ``baseline``: add the equal-cost
    baseline (:func:`baseline_report`, the check's first exploration: run once, shared with the check). ``paths``:
    for a stochastic model (an SNF, an augmented flow), the paths pooled into each weight and each estimate of log q
    (boltzflow.flows.paths.path_weights), reported as ``paths``; a flow ignores it."""
    space = exp.space("evaluate --ais") if with_ais else None  # before any work: the error comes first
    setup = CheckSetup(check_budget, None if check_dir is None else Path(check_dir))
    check = (exp.config.explore.wants("check", exp.target) if check is None else check) and setup
    chunk = device_chunk(chunk, n_samples)
    sampled = partial(_sampled_report, exp, key, n_samples, chunk, space, ais_state, check, paths)
    out = exp.target.report(Evaluation(exp.model, key, sampled))
    if baseline:
        out |= baseline_report(exp, jax.random.fold_in(key, 6), chunk, setup)
    return _flag_nonfinite(out)


def draw_pictures(exp: Experiment, out_dir: Path, key: jax.Array,
                  baseline: tuple[np.ndarray, np.ndarray] | None = None) -> list[Path]:
    """The pictures of ``exp``'s model as its target draws them (its ``draw``: model samples over the target's
    contours, a molecule's torsions, a VAE's reconstructions and samples).

    Args:
        exp: the experiment.
        out_dir: the folder they go to.
        key: for the samples drawn.
        baseline: the equal-cost baseline's weighted samples (x, log w), for the targets that draw them beside the
            model's (:func:`kept_baseline`).

    Returns:
        The paths written.
    """
    return exp.target.draw(Pictures(exp.config.name, Path(out_dir), key, exp.model, exp.weighted_samples,
                                    plot_samples, plot_molecule_samples, plot_image_grid, plot_histograms, baseline))


class CheckSetup(NamedTuple):
    """The missing-mass check's budget (target evaluations; None: no limit but ``explore.n``) and the directory
    that keeps its explorations (None: nowhere)."""

    budget: int | None
    cache: Path | None


def kept_baseline(exp: Experiment, setup: CheckSetup) -> tuple[np.ndarray, np.ndarray] | None:
    """The equal-cost baseline's weighted samples (x, log w) where ``setup.cache`` keeps them (an evaluation with the
    missing-mass check or ``baseline`` made them: :func:`baseline_report`), else None; nothing is run."""
    path, meta = _exploration_file(exp, _check_key(exp), 0, _check_budget(exp, setup), setup.cache)
    if path is None or not path.is_file():  # (a VAE's run, with no target density, never has one)
        return None
    e = load_exploration(path, meta, exp.target.log_prob)
    return None if e is None else (e.x, e.log_w)


def _sampled_report(exp: Experiment, key: jax.Array, n_samples: int, chunk: int, space: Space | None, ais_state: Any,
                    check: CheckSetup | bool, paths: int, target: Target) -> dict:
    """The report on ``n_samples`` importance-weighted samples of ``target`` by ``exp``'s model (module
    docstring), with the target's metrics."""
    model = exp.model
    k_flow, k_exact, k_truth, k_ais = jax.random.split(key, 4)
    k_check = jax.random.fold_in(key, 5)  # a fifth stream, leaving the four above as they were

    def draw(k, valid):  # block diagnostics: per-chunk means, summed here and divided by the chunks below
        x, log_w, infos = path_weights(model, target, k, chunk, paths)
        sums = {"w": WeightSums.of(log_w, valid, target.test_values(x)), "blocks": block_metrics(infos)}
        return sums, target.sample_rows(x, log_w)

    sums, kept = stream_sums(draw, k_flow, n_samples, chunk, target.keep_rows)
    out = {"n_samples": n_samples, **importance_metrics(target, sums["w"])}
    if sums["blocks"]:
        n_chunks = -(-n_samples // chunk)
        out["block_accept"] = [float(a) / n_chunks for a in np.asarray(sums["blocks"]["block_accept"])]
        out["block_nonfinite"] = int(sums["blocks"]["block_nonfinite"])
    # log q of given points: exact for a flow; for an SNF the backward-path estimate, a lower bound in expectation
    log_q_fn = jax.jit(lambda xs: backward_log_q(model, xs, k_exact, paths))
    log_q = lambda x: apply_in_chunks(log_q_fn, x, chunk)  # noqa: E731
    if model.stochastic:
        out["log_q_is_lower_bound"] = True
        out["paths"] = paths
    if target.log_z is not None:
        out["log_z_true"] = target.log_z
    out.update(target.metrics(ModelSamples(n_samples, chunk, sums["w"], kept, log_q, k_exact, k_truth)))
    if space is not None:
        out.update(ais_metrics(exp, space, ais_state, target, k_ais, n_samples, chunk))
    if check:
        out.update(missing_mass_check(exp, k_check, out["log_z"], out["log_z_stderr"], log_q,
                                      min(n_samples, CHECK_SAMPLES), chunk, check, paths))
    return out


def ais_metrics(exp: Experiment, space: Space, ais_state: Any, target: Target, key: jax.Array, n_samples: int,
                chunk: int) -> dict:
    """The importance-sampling metrics, prefixed ``ais_``, of ``n_samples`` AIS paths from the model in ``space``
    to ``target`` (``ais_state``: trained step sizes, frozen; None: the config's initial ones)."""
    ais = ais_from_settings(space.log_p, exp.config.ais, alpha=1.0)
    state = ais_state if ais_state is not None else ais.init_state()

    def run(k, valid):
        res = ais.run(k, state, lambda kk, m: space.sample_and_log_q(exp.model, kk, m),
                      lambda v: space.log_q(exp.model, v), chunk, adapt=False)[0]
        return WeightSums.of(res.log_w, valid), {}

    return importance_metrics(target, stream_sums(run, key, n_samples, chunk)[0], prefix="ais_")


def missing_mass_check(exp: Experiment, key, log_z: float, log_z_stderr: float, log_q, n_flow: int,
                       chunk: int, setup: CheckSetup = CheckSetup(None, None), paths: int = 1) -> dict:
    """The model's estimates against an exploration that does not use it (boltzflow.explore.check_flow): log Z
    both ways, their difference in standard errors, and the mass in the region where q is ten times too thin
    (boltzflow.explore.unseen_mass) by each (``log_q`` of points, chunk at a time), on ``n_flow`` fresh model
    samples (``key``); a second exploration where one is inconclusive (boltzflow.explore.check_flow).
    ``mass_missing`` when that mass differs by more than 3 standard errors (and 0.1 % of p). The explorations use
    the run's own key (:data:`CHECK_STREAM`) and ``setup``'s budget, and are kept in and taken from ``setup.cache``
    (boltzflow.explore_cache); ``explore_seconds`` is what they cost when run, ``explore_reused`` the looks taken
    from the run directory."""
    budget = _check_budget(exp, setup)
    reused = []

    def look(k):
        e, was_kept = _exploration(exp, k, len(reused), budget, setup.cache)
        reused.append(was_kept)
        return e, e.log_p - np.asarray(log_q(jnp.asarray(e.x, jnp.result_type(float))))

    flow_log_w = exp.weighted_samples(key, n_flow, chunk, paths)[1]  # the program that Run.sample compiles
    out = check_flow(look, _check_key(exp), flow_log_w, log_z)
    diff = out["explore_log_z"] - log_z
    se = float(np.hypot(out["explore_log_z_stderr"], log_z_stderr))
    return out | {"explore_budget": budget, "explore_reused": sum(reused),
                  "log_z_difference": diff, "log_z_difference_sigma": diff / se if se > 0 else float("inf")}


def _check_budget(exp: Experiment, setup: CheckSetup) -> int | None:
    """The explorations' budget: the config's ``explore.budget``, else the setup's (the training's evaluations)."""
    return exp.config.explore.budget if exp.config.explore.budget is not None else setup.budget


def _check_key(exp: Experiment) -> jax.Array:
    """The key of the run's missing-mass check (and of its first exploration, the baseline)."""
    return jax.random.fold_in(seed_key(exp.config.train.seed), CHECK_STREAM)


def _exploration_file(exp: Experiment, key, slot: int, budget: int | None, cache: Path | None):
    """Where exploration number ``slot`` of the run's check is kept (None: nowhere) and what it is kept with."""
    used = {f: v for f, v in dataclasses.asdict(exp.config.explore).items() if f not in ("check", "seed_buffer")}
    meta = {"settings": used, "budget": budget, "key": np.asarray(jax.random.key_data(key)).ravel().tolist(),
            "dtype": str(np.dtype(jnp.result_type(float))), "dim": exp.target.dim}
    return (None if cache is None else cache / CHECK_FILES[slot]), meta


def _exploration(exp: Experiment, key, slot: int, budget: int | None, cache: Path | None):
    """Exploration number ``slot`` of the run's check (key ``key``), taken from ``cache`` where it was kept with the
    same settings, else run and kept there; returns it and whether it was taken from the cache."""
    path, meta = _exploration_file(exp, key, slot, budget, cache)
    e = None if path is None else load_exploration(path, meta, exp.target.log_prob)
    if e is not None:
        return e, True
    e = exp.config.explore.run(key, exp.target, jnp.result_type(float), budget=budget)
    if path is not None and writes_files():
        save_exploration(path, e, meta)
    return e, False


def baseline_report(exp: Experiment, key: jax.Array, chunk: int, setup: CheckSetup = CheckSetup(None, None)) -> dict:
    """The equal-cost baseline beside the model: the missing-mass check's first exploration of the target, tempered
    SMC with HMC moves from a broad Gaussian (boltzflow.explore) within the training's target evaluations (or
    ``explore.budget``), reported as the model is where no density of q is needed, every key prefixed
    ``baseline_``: its ESS (Kish, of its final weights), log Z +- the standard error of its independent groups,
    and the target's metrics of its weighted samples (``key`` for the target's exact samples), with
    ``baseline_target_evals`` and ``baseline_converged``."""
    target = exp.target
    e, _ = _exploration(exp, _check_key(exp), 0, _check_budget(exp, setup), setup.cache)
    x = jnp.asarray(e.x, jnp.result_type(float))
    log_w = jnp.where(jnp.isfinite(jnp.asarray(e.log_w)), jnp.asarray(e.log_w, x.dtype), -jnp.inf)
    sums = WeightSums.of(log_w, jnp.ones(len(e.log_w), bool), target.test_values(x))
    kept = target.keep_rows({k: np.asarray(v) for k, v in target.sample_rows(x, log_w).items()})
    k_exact, k_truth = jax.random.split(key)
    out = importance_metrics(target, sums)
    out |= {"log_z": e.log_z, "log_z_stderr": e.log_z_stderr, "target_evals": e.target_evals,
            "converged": e.converged, "samples": len(e.log_w)}
    out |= target.metrics(ModelSamples(len(e.log_w), chunk, sums, kept, None, k_exact, k_truth))
    return {f"baseline_{k}": v for k, v in out.items()}


def _flag_nonfinite(metrics: dict) -> dict:
    """No silent NaN in a report: non-finite values become None and are listed under ``nonfinite_metrics``."""
    bad = [k for k, v in metrics.items() if isinstance(v, float) and not np.isfinite(v)]
    if bad:
        metrics = {k: (None if k in bad else v) for k, v in metrics.items()} | {"nonfinite_metrics": bad}
    return metrics


