"""Evaluation of a trained sampler, as in the FAB paper (Sec. 5) and the SNF paper.

For a flow q and target p (log p unnormalised, log Z = log int exp(log p)):

- ``ess``: Kish effective sample size of flow importance sampling, a fraction in [0, 1];
- ``log_z`` with ``log_z_stderr``: log mean w, w = p/q, with its delta-method standard error; ``log_z_true``
  and ``log_z_error`` when the target knows log Z; ``z_rel_error_pct`` = 100 |Z_hat/Z - 1| (the "MAE of Z");
- ``mean_log_q_exact``: E_p[log q] on exact target samples; ``forward_kl`` = E_p[log p - log Z - log q];
- ``mean_log_q_modes``, ``min_log_q_modes``: the mean and the minimum of log q over the target's mode test set
  (Many Well);
- ``modes_covered``: modes with at least one flow sample (GMM; rule in the target's docstring);
- ``expectation_rel_error_pct``: 100 |E_hat[f] - E_p[f]| / |E_p[f]| for FAB's quadratic test function
  f(x) = a^T (x - 2b) + 2 (x - 2b)^T C (x - 2b) (a, b, C standard normal from ``numpy.random.default_rng(0)``,
  drawn in that order), estimated by self-normalised IS; E_p[f] from 2^20 exact samples;
- ``block_accept``, ``block_nonfinite`` for an SNF: each stochastic block's mean acceptance and the moves rejected
  for non-finite densities, over the samples drawn;
- for a molecular target (boltzflow.targets.molecule): ``chirality_fraction`` (model samples with the reference
  structure's handedness; the others get weight 0 in what follows, as FAB filters them), and, where the target has
  reference MD samples, the KL of each named torsion's marginal and of the (phi, psi) histogram, unweighted and
  ``_reweighted`` (boltzflow.molecules.metrics: FAB's histogram KL, 100 bins per axis), ``mean_log_q_reference``
  = E_p[log q] on the reference samples (log q of the Cartesian conformation including the internal-coordinate
  layer's log-det, as the FAB paper's E_p[log q] of its alanine dipeptide flow), and the phi > 0 population of
  the reweighted model beside the reference's;
- for a VAE (boltzflow.vae) instead, with the method's ``nll_samples`` K: ``test_jkl`` (J_KL, SNF eq. 13, the
  negative ELBO: minus the mean log path weight of 16 posterior paths per test image, averaged over the test set),
  ``test_nll`` (-log p(x) by importance sampling with K other posterior paths per test image,
  boltzflow.vae.bound) with ``test_nll_stderr`` (the standard error of the test mean, from each image's
  importance-sampling error), ``train_jkl`` on as many training images, and ``bound_below_nll_batches``, the
  fraction of test batches whose mean bound is below their mean estimated log-likelihood;
- the missing-mass check (``check``; on the command line as the config's ``explore.check`` says, by default up to
  16 dimensions and not for molecules; boltzflow.explore): an
  exploration of the target that does not use the model (tempered SMC from a broad Gaussian) gives
  ``explore_log_z`` +- ``explore_log_z_stderr`` beside the model's, ``log_z_difference`` (exploration minus
  model) and ``log_z_difference_sigma`` (in combined standard errors); and the mass of the region where q is ten
  times too thin, by the exploration and by the model's own importance sampling (``thin_region_mass_explore``,
  ``thin_region_mass_flow``), their difference ``unseen_mass`` +- ``unseen_mass_stderr`` and ``mass_missing``
  (difference above 3 standard errors and 0.1 % of p): a model that never samples a mode reports a confident log Z
  and ESS, but not this; where the difference is at 2-3 standard errors a second exploration is pooled with the
  first (``explore_looks`` 2; boltzflow.explore.check_flow, X6);
- with ``ais=True`` the same estimates from AIS (targeting p, step sizes frozen at their trained values); for
  an SNF with Langevin blocks AIS runs in its path space (boltzflow.snf.paths), whose x-marginal is p; for a model
  without a tractable density (an SNF with Metropolis blocks) a one-line error says so.
"""

from __future__ import annotations

import numpy as np
import jax
import jax.numpy as jnp

from boltzflow.ais import ais_from_settings
from boltzflow.data import Dataset
from boltzflow.estimators import WeightSums, effective_sample_size, log_z_estimate
from boltzflow.experiment import Experiment
from boltzflow.explore import check_flow
from boltzflow.flows.paths import backward_log_q, block_metrics, path_weights
from boltzflow.molecules.metrics import basin_populations, molecular_metrics, named_torsions, torsion_angles
from boltzflow.molecules.reference import load_reference
from boltzflow.sharding import device_chunk, shard_batch, to_host
from boltzflow.vae.bound import log_likelihood, path_bound
from boltzflow.vae.model import VAE


#: model samples the missing-mass check draws (at most; fewer when the evaluation draws fewer)
CHECK_SAMPLES = 65_536


def quadratic_test_function(dim: int):
    rng = np.random.default_rng(0)
    a, b, c = rng.standard_normal(dim), rng.standard_normal(dim), rng.standard_normal((dim, dim))
    a, b, c = (jnp.asarray(v, jnp.float32) for v in (a, b, c))

    def f(x):
        d = x - 2.0 * b
        return d @ a + 2.0 * jnp.einsum("ni,ij,nj->n", d, c.astype(x.dtype), d)

    return f


def _merge(a, b):
    """Chunk results merged: :class:`WeightSums` by their rule, every other leaf summed."""
    return jax.tree_util.tree_map(lambda u, v: u.merge(v) if isinstance(u, WeightSums) else u + v, a, b,
                                  is_leaf=lambda t: isinstance(t, WeightSums))


def _stream(fn, key, n: int, chunk: int, keep=None):
    """Merged sums of ``fn(key_i, count_i) -> (sums, rows)`` over ceil(n / chunk) chunks of ``chunk`` samples, the
    last one's rows past n masked by ``count_i`` (a traced count: one compilation). With ``keep`` (a function of a
    chunk's rows, a tuple of host arrays cut to its count, returning a tuple of arrays), what it returns for every
    chunk is concatenated in host memory (numpy) and returned too; else the rows are dropped."""
    fn = jax.jit(fn)
    total, kept = None, []
    for i, k in enumerate(jax.random.split(key, -(-n // chunk))):
        count = min(chunk, n - i * chunk)
        # one chunk's program finishes before the next starts: with more devices than cores, XLA:CPU could run
        # devices of two chunks' programs at once and deadlock in an all-reduce (seen on 4 forced host devices)
        sums, rows = jax.block_until_ready(fn(k, jnp.asarray(count, jnp.int32)))
        total = sums if total is None else _merge(total, sums)
        if keep is not None:
            kept.append(keep(*(np.asarray(r)[:count] for r in to_host(rows))))
    return total, [np.concatenate(c) for c in zip(*kept)] if keep is not None else None


def _whole(*rows):
    """The rows of a chunk kept as they are (:func:`_stream`'s ``keep``)."""
    return rows


def importance_metrics(target, sums: WeightSums, prefix: str = "") -> dict:
    """ESS and log Z (with errors where log Z is known) of weighted samples, from their :class:`WeightSums`."""
    log_z, se = sums.log_z()
    out = {f"{prefix}ess": float(sums.ess()), f"{prefix}log_z": float(log_z),
           f"{prefix}log_z_stderr": float(se), f"{prefix}n_nonfinite": int(sums.n_nonfinite)}
    if target.log_z is not None:
        out[f"{prefix}log_z_error"] = float(log_z) - target.log_z
        out[f"{prefix}z_rel_error_pct"] = float(100 * abs(np.expm1(float(log_z) - target.log_z)))
    return out


def evaluate(exp: Experiment, key, n_samples: int = 10_000, ais_state=None, with_ais: bool = False,
             chunk: int = 4096, check: bool | None = False) -> dict:
    """All metrics of the trained model in ``exp`` as a flat dict of floats (see the module docstring).

    Samples are drawn and reduced ``chunk`` at a time (rounded up to a multiple of the devices of the mesh in use,
    boltzflow.sharding, over which each chunk is split); only sums leave the devices, so n_samples is bounded by
    time, not memory. Targets whose metrics need every sample keep, chunk by chunk in host memory, what those
    metrics need: mode coverage the flow's samples, a molecule each sample's torsion angles, handedness and log
    weight (37 bytes a sample for alanine dipeptide's 7 torsions: 0.37 GB for 10^7 samples). ``check``: run the
    missing-mass check (None: as the config's ``explore.check`` says, what the command line does)."""
    target, model = exp.target, exp.model
    space = exp.space("evaluate --ais") if with_ais else None  # before any work: the error comes first
    if isinstance(model, VAE):
        return _flag_nonfinite(vae_evaluation(model, target, key, exp.config.method.settings.nll_samples))
    k_flow, k_exact, k_truth, k_ais = jax.random.split(key, 4)
    k_check = jax.random.fold_in(key, 5)  # a fifth stream, leaving the four above as they were
    chunk = device_chunk(chunk, n_samples)
    rows_of = lambda count: jnp.arange(chunk) < count  # noqa: E731
    f = quadratic_test_function(target.dim)
    molecule = hasattr(target, "molecule")
    keep = molecular_rows(target) if molecule else _whole if target.has_modes else None

    def draw(k, count):  # block diagnostics: per-chunk means, summed here and divided by the chunks below
        x, log_w, infos = path_weights(model, target, k, chunk)
        values = f(x) if target.can_sample else None
        rows = (x, log_w, target.chirality.mask(x)) if molecule else (x,) if keep is not None else ()
        return {"w": WeightSums.of(log_w, rows_of(count), values), "blocks": block_metrics(infos)}, rows

    sums, kept = _stream(draw, k_flow, n_samples, chunk, keep)
    out = {"n_samples": n_samples, **importance_metrics(target, sums["w"])}
    if sums["blocks"]:
        n_chunks = -(-n_samples // chunk)
        out["block_accept"] = [float(a) / n_chunks for a in np.asarray(sums["blocks"]["block_accept"])]
        out["block_nonfinite"] = int(sums["blocks"]["block_nonfinite"])
    # log q of given points: exact for a flow; for an SNF the backward-path estimate, a lower bound in expectation
    log_q_fn = jax.jit(lambda xs: backward_log_q(model, xs, k_exact))
    if model.stochastic:
        out["log_q_is_lower_bound"] = True
    if target.log_z is not None:
        out["log_z_true"] = target.log_z
    if target.can_sample:
        def exact(k, count):  # E_p[log q] and E_p[log p - log Z - log q] on exact samples
            xs = shard_batch(target.sample(k, chunk))
            log_q = backward_log_q(model, xs, k_exact)
            kl = target.log_prob(xs) - (target.log_z or 0.0) - log_q
            rows = rows_of(count)
            return {"log_q": jnp.sum(jnp.where(rows, log_q, 0.0)), "kl": jnp.sum(jnp.where(rows, kl, 0.0))}, ()

        exact_sums = _stream(exact, k_exact, n_samples, chunk)[0]
        out["mean_log_q_exact"] = float(exact_sums["log_q"]) / n_samples
        if target.log_z is not None:
            out["forward_kl"] = float(exact_sums["kl"]) / n_samples
        big = 2**16
        truth = _stream(lambda k, count: (jnp.sum(f(shard_batch(target.sample(k, big)))), ()), k_truth, 2**20, big)[0]
        out["expectation_true"] = truth = float(truth) / 2**20
        est = float(sums["w"].expectation())
        out["expectation_rel_error_pct"] = float(100 * abs(est - truth) / abs(truth))
    if target.has_modes:
        modes = target.mode_points()
        if target.dim > 2:  # FAB's Many Well metric: log q on one point per mode
            log_q_modes = _chunked_apply(log_q_fn, modes, chunk)
            out["mean_log_q_modes"] = float(jnp.mean(log_q_modes))
            out["min_log_q_modes"] = float(jnp.min(log_q_modes))
        out["modes_covered"] = int(target.modes_covered(kept[0]))
        out["n_modes"] = int(modes.shape[0])
    if molecule:
        out.update(molecular_evaluation(target, *kept, log_q_fn, chunk))
    if with_ais:
        ais = ais_from_settings(space.log_p, exp.config.ais, alpha=1.0)
        state = ais_state if ais_state is not None else ais.init_state()

        def run(k, count):
            res = ais.run(k, state, lambda kk, m: space.sample_and_log_q(model, kk, m),
                          lambda v: space.log_q(model, v), chunk, adapt=False)[0]
            return WeightSums.of(res.log_w, rows_of(count)), ()

        out.update(importance_metrics(target, _stream(run, k_ais, n_samples, chunk)[0], prefix="ais_"))
    if exp.config.explore.wants("check", target) if check is None else check:
        out.update(missing_mass_check(exp, k_check, out["log_z"], out["log_z_stderr"], log_q_fn,
                                      min(n_samples, CHECK_SAMPLES), chunk))
    return _flag_nonfinite(out)


def missing_mass_check(exp: Experiment, key, log_z: float, log_z_stderr: float, log_q_fn, n_flow: int,
                       chunk: int) -> dict:
    """The model's estimates against an exploration that does not use it (boltzflow.explore.check_flow): log Z
    both ways, their difference in standard errors, and the mass in the region where q is ten times too thin (X5) by
    each, on ``n_flow`` fresh model samples; a second exploration where one is inconclusive (X6). ``mass_missing``
    when that mass differs by more than 3 standard errors (and 0.1 % of p)."""
    target, model = exp.target, exp.model
    k_explore, k_flow = jax.random.split(key)

    def look(k):
        e = exp.config.explore.run(k, target)
        xe = jnp.asarray(e.x, jnp.result_type(float))
        return e, e.log_p - np.asarray(_chunked_apply(log_q_fn, xe, chunk))

    flow_log_w = _stream(lambda k, count: ((), (path_weights(model, target, k, chunk)[1],)), k_flow, n_flow, chunk,
                         keep=_whole)[1][0]
    out = check_flow(look, k_explore, flow_log_w, log_z)
    diff = out["explore_log_z"] - log_z
    se = float(np.hypot(out["explore_log_z_stderr"], log_z_stderr))
    return out | {"log_z_difference": diff, "log_z_difference_sigma": diff / se if se > 0 else float("inf")}


def vae_evaluation(model: VAE, data: Dataset, key, k: int, k_bound: int = 16, batch: int = 24) -> dict:
    """The VAE metrics of the module docstring, on batches of ``batch`` images: J_KL from ``k_bound`` paths per
    image, log p(x) from ``k``."""
    bound_fn = jax.jit(lambda x, kk: path_bound(model, x, kk, k_bound))
    nll_fn = jax.jit(lambda x, kk: log_likelihood(model, x, kk, k))

    def over(images, key):
        m = images.shape[0]
        padded = np.resize(images, (-(-m // batch) * batch, images.shape[1]))  # the last batch filled from the start
        keys = jax.random.split(key, 2 * (padded.shape[0] // batch))
        bounds, logps, ses = [], [], []
        for i in range(0, padded.shape[0], batch):
            x = jnp.asarray(padded[i:i + batch])
            bounds.append(bound_fn(x, keys[2 * (i // batch)]))
            lp, se = nll_fn(x, keys[2 * (i // batch) + 1])
            logps.append(lp)
            ses.append(se)
        cut = lambda a: np.concatenate([np.asarray(v) for v in a])[:m]  # noqa: E731
        return cut(bounds), cut(logps), cut(ses), [float(np.mean(b) <= np.mean(lp)) for b, lp in zip(bounds, logps)]

    k_test, k_train = jax.random.split(key)
    bound, logp, se, below = over(data.test, k_test)
    train_bound = over(data.train[: data.test.shape[0]], k_train)[0]
    return {"test_jkl": float(-np.mean(bound)), "test_nll": float(-np.mean(logp)),
            "test_nll_stderr": float(np.sqrt(np.sum(se**2)) / se.shape[0]), "train_jkl": float(-np.mean(train_bound)),
            "bound_below_nll_batches": float(np.mean(below)), "n_test": int(data.test.shape[0]), "nll_samples": k}


def molecular_rows(target):
    """What :func:`molecular_evaluation` keeps of a chunk of model samples (x, log w, handedness mask): the named
    torsions' angles ``(n, T)`` (float32), the mask and the log weights."""
    torsions = named_torsions(target.molecule)

    def rows(x, log_w, chiral):
        angles = torsion_angles(x, torsions)
        columns = np.array([angles[name] for name in torsions], np.float32).reshape(len(torsions), len(x))
        return columns.T, chiral, np.asarray(log_w, np.float64)
    return rows


def molecular_evaluation(target, angles, chiral, log_w, log_q_fn, chunk: int = 4096) -> dict:
    """The molecular metrics (module docstring) of model samples kept by :func:`molecular_rows`: their torsion
    angles, handedness and log weights. Samples of the other handedness are left out, as FAB filters them."""
    torsions = named_torsions(target.molecule)
    out = {"chirality_fraction": float(chiral.mean())}
    model, log_w = {name: angles[chiral, i] for i, name in enumerate(torsions)}, log_w[chiral]
    if target.reference_path is None:
        return out
    ref_x = load_reference(target.reference_path)["x"]
    ref = torsion_angles(ref_x, torsions)
    out.update(molecular_metrics(target.molecule, ref, model, log_w))
    log_q_ref = _chunked_apply(log_q_fn, jnp.asarray(ref_x, jnp.result_type(float)), chunk)
    out["mean_log_q_reference"] = float(jnp.mean(log_q_ref))
    if "phi" in torsions and "psi" in torsions:
        pops = basin_populations(model["phi"], model["psi"], log_w)
        out["phi_positive_reweighted"] = pops["phi_positive"]
        out["phi_positive_reference"] = basin_populations(ref["phi"], ref["psi"])["phi_positive"]
    return out


def _flag_nonfinite(metrics: dict) -> dict:
    """No silent NaN in a report: non-finite values become None and are listed under ``nonfinite_metrics``."""
    bad = [k for k, v in metrics.items() if isinstance(v, float) and not np.isfinite(v)]
    if bad:
        metrics = {k: (None if k in bad else v) for k, v in metrics.items()} | {"nonfinite_metrics": bad}
    return metrics


def _chunked_apply(fn, x, chunk: int):
    return jnp.concatenate([fn(x[i:i + chunk]) for i in range(0, x.shape[0], chunk)])
