"""Where an alanine-dipeptide FAB pass spends its time (issue 33): the preset's training step against its parts.

    python benchmarks/aldp_pass_profile.py [--preset aldp_fab_cpu] [--repeats 5]

Each part is jitted alone and timed at the preset's batch (median of ``--repeats`` calls after a warm-up), in the
space AIS runs in (the internal coordinates below the flow's last layer):

- ``fab_step``: one training step as ``boltzflow train`` runs it: an AIS pass, the buffer update and the preset's
  gradient updates on buffer batches (boltzflow.train.fab);
- ``ais_pass``: the AIS pass alone (flow samples, then K intermediate distributions of HMC with L leapfrog steps:
  1 + K L evaluations of log q and log p with their gradients per sample);
- ``log_q_grad``: log q of the flow (its inverse pass and log-det) with its gradient, one batch;
- ``log_p_grad``: the target's log p with its gradient in that space (internal -> Cartesian, the force field), one
  batch; ``energy_grad``: the force field alone on Cartesian positions;
- ``sample``: the flow's forward pass drawing a batch with its log q;
- ``log_q_grad_no_spline``: ``log_q_grad`` with every spline transformer replaced by an affine stand-in on the same
  conditioner outputs (shift and log-scale from its first two): what log q would cost if the spline were free;

Beside each part: the cores it kept busy (process CPU time over wall-clock time while it ran).

The sums (1 + K L) (log_q_grad + log_p_grad) + sample and n_updates x update are what a step would cost if nothing
but those evaluations took time; the rest is the AIS and buffer bookkeeping.
"""

from __future__ import annotations

import argparse
import statistics
import time

import equinox as eqx
import jax
import jax.numpy as jnp

import boltzflow as bf
from boltzflow.ais import ais_from_settings
from boltzflow.experiment import build_experiment, build_method
from boltzflow.train.state import make_optimizer


CORES: dict[str, float] = {}  # part -> process CPU seconds per wall-clock second while it ran


def timed(fn, *args, repeats: int, name: str) -> float:
    jax.block_until_ready(fn(*args))  # compile and warm up
    times = []
    cpu0, wall0 = time.process_time(), time.perf_counter()
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t)
    CORES[name] = (time.process_time() - cpu0) / (time.perf_counter() - wall0)
    return statistics.median(times)


def _without_spline(space, model, x):
    """log q + gradient, jitted, with RQSpline's maps replaced by an affine map of the same parameters while it is
    traced at ``x`` (only for this measurement: the class is restored before returning)."""
    from boltzflow.flows.coupling import RQSpline

    def affine(self, v, theta, circular):
        return v * jnp.exp(0.1 * jnp.tanh(theta[..., 1])) + theta[..., 0], 0.1 * jnp.tanh(theta[..., 1])

    fn = eqx.filter_jit(jax.value_and_grad(lambda v, m: jnp.sum(space.log_q(m, v))))
    saved = RQSpline.forward, RQSpline.inverse
    RQSpline.forward = RQSpline.inverse = affine
    try:
        jax.block_until_ready(fn(x, model))  # traced and compiled with the stand-in
    finally:
        RQSpline.forward, RQSpline.inverse = saved
    return fn


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="aldp_fab_cpu")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args(argv)
    cfg = bf.load_config(args.preset)
    exp = build_experiment(cfg)
    model, target, n = exp.model, exp.target, cfg.train.batch_size
    space = exp.space("the profile")
    settings = cfg.method.settings
    optimizer = make_optimizer(cfg.train)
    method = build_method(exp, optimizer)
    key = jax.random.key(0)
    ais = ais_from_settings(space.log_p, cfg.ais, alpha=settings.alpha)
    # the model is an argument of every jitted part (as in training), not a constant baked into the program
    sample = eqx.filter_jit(lambda m, k: space.sample_and_log_q(m, k, n))
    x, _ = sample(model, key)
    parts = {
        "sample": timed(sample, model, key, repeats=args.repeats, name="sample"),
        "log_q_grad": timed(eqx.filter_jit(jax.value_and_grad(lambda v, m: jnp.sum(space.log_q(m, v)))), x, model,
                            repeats=args.repeats, name="log_q_grad"),
        "log_p_grad": timed(jax.jit(jax.value_and_grad(lambda v: jnp.sum(space.log_p(v)))), x, repeats=args.repeats,
                            name="log_p_grad"),
    }
    if hasattr(target, "energy_kj"):
        xc = jnp.asarray(target.molecule.positions.reshape(1, -1), x.dtype) + 0.01 * jax.random.normal(
            key, (n, target.dim), x.dtype)
        parts["energy_grad"] = timed(jax.jit(jax.value_and_grad(lambda v: jnp.sum(target.energy_kj(v)))), xc,
                                     repeats=args.repeats, name="energy_grad")
    parts["log_q_grad_no_spline"] = timed(_without_spline(space, model, x), x, model, repeats=args.repeats,
                                          name="log_q_grad_no_spline")
    ais_state = ais.init_state(x.dtype)
    parts["ais_pass"] = timed(eqx.filter_jit(lambda m, k: ais.run(k, ais_state,
                                                                  lambda kk, mm: space.sample_and_log_q(m, kk, mm),
                                                                  lambda v: space.log_q(m, v), n, adapt=True)[0].log_w),
                              model, key, repeats=args.repeats, name="ais_pass")
    params = eqx.filter(model, eqx.is_inexact_array)
    opt_state = optimizer.init(params)
    step = eqx.filter_jit(method.step)
    _, _, state, _ = step(model, opt_state, method.init(key, model), key)  # the first step fills the buffer
    parts["fab_step"] = timed(lambda k: step(model, opt_state, state, k), key, repeats=args.repeats, name="fab_step")
    evals = ais.evals_per_sample
    print(f"{args.preset}: batch {n}, AIS {cfg.ais.n_intermediate} intermediate distributions, {cfg.ais.kernel} "
          f"({evals} gradient evaluations of log q and log p per sample), {settings.n_updates} updates per step")
    for name, t in parts.items():
        print(f"  {name:12s} {1e3 * t:9.1f} ms   {CORES[name]:.2f} cores")
    model_ais = evals * (parts["log_q_grad"] + parts["log_p_grad"]) + parts["sample"]
    print(f"  AIS pass as {evals} x (log_q_grad + log_p_grad) + sample: {1e3 * model_ais:.1f} ms "
          f"({100 * evals * parts['log_q_grad'] / parts['ais_pass']:.0f} % flow, "
          f"{100 * evals * parts['log_p_grad'] / parts['ais_pass']:.0f} % target of the measured pass)")
    print(f"  the spline's share of log_q_grad: {100 * (1 - parts['log_q_grad_no_spline'] / parts['log_q_grad']):.0f} %")
    print(f"  fab_step - ais_pass = {1e3 * (parts['fab_step'] - parts['ais_pass']):.1f} ms "
          f"(buffer and {settings.n_updates} gradient updates)")


if __name__ == "__main__":
    main()
