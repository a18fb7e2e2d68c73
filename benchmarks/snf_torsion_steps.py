"""What Metropolis moves at lambda = 1 below the internal-coordinate layer (an SNF's last block) do to a trained
flow's torsion marginals, for several step sizes: one step for every coordinate, or a larger one on the rotatable
torsions (``blocks.torsion_step_size``, boltzflow.snf.builder).

    python benchmarks/snf_torsion_steps.py RUN --steps 0.1 0.1:0.7 0.1:1.0 --moves 100 --samples 4000

RUN is a trained flow on internal coordinates (e.g. ``boltzflow train snf_aldp_vacuum_rnvp --data FILE``); each
``--steps`` entry is ``STEP`` or ``STEP:TORSION_STEP``. From ``--samples`` flow samples, ``--moves`` random-walk
Metropolis moves of the target pulled back through the internal-coordinate layer (boltzflow.flows.paths.PulledBack,
the density the SNF's last block samples) by :func:`boltzflow.mcmc.metropolis.metropolis_step`; printed: the mean
acceptance and the KL (boltzflow.molecules.metrics, 100 bins) of each named torsion's marginal against the target's
reference samples, before and after the moves, and the fraction of the flow's samples whose torsion lies outside
[-pi, pi) in its internal coordinate (a flow on the real line; the angle wraps when the molecule is built). The
KL's floor at n model samples is about (bins - 1) / (2 n) (0.012 at 4,000).
"""

from __future__ import annotations

import argparse
import json

import jax
import jax.numpy as jnp
import numpy as np

import boltzflow as bf
from boltzflow.flows.paths import PulledBack
from boltzflow.mcmc.metropolis import metropolis_step
from boltzflow.mcmc.point import make_point
from boltzflow.molecules.metrics import named_torsions, torsion_angles, torsion_kl
from boltzflow.molecules.reference import load_reference


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run")
    p.add_argument("--steps", nargs="+", default=["0.1", "0.1:0.7"])
    p.add_argument("--moves", type=int, default=100)
    p.add_argument("--samples", type=int, default=4000)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    run = bf.load(args.run)
    if run.config.train.dtype == "float64":  # the work below in the run's precision (bf.load's own ends with it)
        jax.config.update("jax_enable_x64", True)
    model, target = run.model, run.target
    layer = model.layers[-1]
    if not hasattr(layer, "circular_mask") or model.stochastic:
        raise SystemExit(f"{args.run}: needs a flow (no stochastic blocks) on internal coordinates")
    key = jax.random.key(args.seed)
    z = model.base.sample(key, args.samples)
    for i, f in enumerate(model.layers[:-1]):  # the flow below the internal-coordinate layer
        z = f.forward(z, jax.random.fold_in(key, i))[0]
    pulled = PulledBack(target, layer)
    torsions = named_torsions(target.molecule)
    ref = torsion_angles(load_reference(target.reference_path)["x"], torsions)
    zero = lambda v: jnp.zeros(v.shape[0], v.dtype)  # noqa: E731  (lambda = 1: the prior's weight is 0)

    def angles_of(y):
        return torsion_angles(np.asarray(layer.forward(y)[0]), torsions)

    def kls(angles):
        return {name: round(torsion_kl(ref[name], angles[name]), 4) for name in torsions}

    def outside(y, angles):  # each named torsion's internal coordinate (the column equal to it up to a constant)
        y = np.asarray(y)
        q = np.asarray(layer.reference_ic) + np.asarray(layer.scales) * y
        out = {}
        for name, a in angles.items():
            c = int(np.argmax([abs(np.mean(np.exp(1j * (q[:, j] - a)))) for j in range(y.shape[1])]))
            out[name] = round(float(np.mean(np.abs(y[:, c]) * layer.scales[c] > np.pi)), 4)
        return out

    @jax.jit
    def moves(k, y, eps):
        def body(carry, kk):
            point, acc = carry
            point, info = metropolis_step(kk, point, jnp.array([0.0, 1.0]), eps, zero, pulled.log_prob)
            return (point, acc + jnp.mean(info.accept)), None
        (point, acc), _ = jax.lax.scan(body, (make_point(y, zero, pulled.log_prob, with_grad=False), 0.0),
                                       jax.random.split(k, args.moves))
        return point.x, acc / args.moves

    flow_angles = angles_of(z)
    rows = [{"steps": "flow samples", **kls(flow_angles)},
            {"steps": "flow samples outside [-pi, pi)", **outside(z, flow_angles)}]
    mask = jnp.asarray(layer.circular_mask)
    for spec in args.steps:
        step, _, torsion = spec.partition(":")
        eps = jnp.where(mask, float(torsion or step), float(step)).astype(z.dtype)
        y, acc = moves(jax.random.fold_in(key, 99), z, eps)
        rows.append({"steps": spec, "accept": round(float(acc), 3), **kls(angles_of(y))})
    for row in rows:
        print(json.dumps(row))


if __name__ == "__main__":
    main()
