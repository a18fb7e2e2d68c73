"""Reference data by replica-exchange Langevin molecular dynamics, in JAX, batched over chains and replicas.

The system: C independent chains, each a ladder of R replicas at temperatures T_0 < T_1 < ... < T_{R-1}
(T_0 the temperature of interest), all advanced together as one batch of C x R conformations, so one force call
per step serves every replica.

Integrator: BAOAB Langevin dynamics (Leimkuhler & Matthews 2013), with masses m (dalton), friction gamma (1/ps),
time step h (ps); units kJ/mol, nm, ps, dalton are consistent (1 kJ/mol = 1 dalton nm^2 / ps^2):

    B: v <- v + h/2 F(x) / m
    A: x <- x + h/2 v
    O: v <- c v + sqrt((1 - c^2) k T / m) xi,   c = exp(-gamma h),  xi ~ N(0, 1)
    A: x <- x + h/2 v
    B: v <- v + h/2 F(x) / m                     (one force evaluation per step, reused by the next B)

BAOAB's configurational sampling error is O(h^2) and small at h = 1 fs for molecules without constraints. Any
other target runs in its own reduced units: k_B = 1 (``boltzmann=1``), energy u = -log p, masses 1, temperatures
relative to the target's (replica T samples p^(1/T)).

Replica exchange (parallel tempering; Swendsen & Wang 1986, Sugita & Okamoto 1999): every ``exchange_every``
steps, neighbouring temperatures (i, i + 1) of each chain propose to swap configurations, even pairs and odd pairs in
alternate rounds, accepted with probability

    min(1, exp((beta_i - beta_{i+1}) (E_i - E_{i+1}))),      beta = 1 / kT,

which leaves the product of the Boltzmann distributions invariant. Velocities travel with their configuration,
rescaled by sqrt(T_new / T_old) so they stay Maxwell-Boltzmann at the new temperature.

Everything is a pure function of an explicit state and key; :func:`run_replica_exchange` runs it in blocks of
``save_every`` steps (one ``lax.scan`` each), saves the T_0 replica of every chain after each block, and
checkpoints to a directory (boltzflow.checkpoint) so an interrupted run resumes where it stopped (same result as
an uninterrupted run: the state, key and saved samples are all in the checkpoint).
"""

from __future__ import annotations

import json
import os
import time
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from tqdm import tqdm

from boltzflow.checkpoint import read_checkpoint, write_atomic, write_json
from boltzflow.errors import BoltzflowError

#: kJ / (mol K)
GAS_CONSTANT = 8.314462618e-3


class MDState(NamedTuple):
    """Positions and velocities ``(C, R, D)``, forces, energies ``(C, R)``, and exchange statistics ``(R - 1,)``."""

    x: jax.Array
    v: jax.Array
    force: jax.Array
    energy: jax.Array
    swaps_tried: jax.Array
    swaps_accepted: jax.Array


def geometric_temperatures(t_min: float, t_max: float, n: int) -> np.ndarray:
    """n temperatures from t_min to t_max in geometric progression (equal acceptance for a constant heat capacity)."""
    if n < 1 or t_min <= 0 or t_max < t_min:
        raise BoltzflowError(f"need n >= 1 and 0 < t_min <= t_max, got n={n}, t_min={t_min}, t_max={t_max}")
    return t_min * (t_max / t_min) ** (np.arange(n) / max(n - 1, 1))


def make_step(energy_fn: Callable, masses: np.ndarray, temperatures: np.ndarray, dt: float, friction: float,
              boltzmann: float = GAS_CONSTANT):
    """One BAOAB step of every replica: ``step(state, key) -> state`` (module docstring)."""
    kt = jnp.asarray(boltzmann * temperatures)[None, :, None]
    inv_m = 1.0 / jnp.asarray(masses)
    c = float(np.exp(-friction * dt))
    noise_scale = jnp.sqrt((1 - c**2) * kt * inv_m)

    def energy_force(x):
        n_c, n_r, d = x.shape
        flat = x.reshape(n_c * n_r, d)
        e, vjp = jax.vjp(energy_fn, flat)
        (g,) = vjp(jnp.ones_like(e))
        return e.reshape(n_c, n_r), -g.reshape(n_c, n_r, d)

    def step(state: MDState, key) -> MDState:
        v = state.v + 0.5 * dt * state.force * inv_m
        x = state.x + 0.5 * dt * v
        v = c * v + noise_scale.astype(v.dtype) * jax.random.normal(key, v.shape, v.dtype)
        x = x + 0.5 * dt * v
        e, f = energy_force(x)
        v = v + 0.5 * dt * f * inv_m
        return state._replace(x=x, v=v, force=f, energy=e)

    return step, energy_force


def make_exchange(temperatures: np.ndarray, boltzmann: float = GAS_CONSTANT):
    """Neighbour swaps of every chain: ``exchange(state, key, parity) -> state`` (module docstring)."""
    beta = jnp.asarray(1.0 / (boltzmann * temperatures))
    temps = jnp.asarray(temperatures)
    n_r = len(temperatures)

    def exchange(state: MDState, key, parity):
        if n_r < 2:
            return state
        lo = jnp.arange(n_r - 1)
        active = (lo % 2) == parity  # pairs (i, i+1) with i of this parity
        e = state.energy
        log_acc = (beta[:-1] - beta[1:]) * (e[:, :-1] - e[:, 1:])  # (C, R-1)
        accept = (jnp.log(jax.random.uniform(key, log_acc.shape)) < log_acc) & active[None, :]
        # permutation of replica slots per chain: slot i takes from i+1 and vice versa where accepted
        src = jnp.broadcast_to(jnp.arange(n_r), e.shape)
        take_up = jnp.pad(accept, ((0, 0), (0, 1)))  # slot i receives from i+1
        take_down = jnp.pad(accept, ((0, 0), (1, 0)))  # slot i+1 receives from i
        src = jnp.where(take_up, src + 1, jnp.where(take_down, src - 1, src))
        gather = lambda a: jnp.take_along_axis(a, src.reshape(src.shape + (1,) * (a.ndim - 2)), axis=1)  # noqa
        scale = jnp.sqrt(temps[None, :] / temps[src])[..., None]
        return state._replace(x=gather(state.x), v=gather(state.v) * scale.astype(state.v.dtype),
                              force=gather(state.force), energy=gather(state.energy),
                              swaps_tried=state.swaps_tried + active * e.shape[0],
                              swaps_accepted=state.swaps_accepted + jnp.sum(accept, axis=0))

    return exchange


def make_block(energy_fn, masses, temperatures, dt, friction, n_steps: int, exchange_every: int,
               boltzmann: float = GAS_CONSTANT):
    """``block(state, key, step0) -> state``: ``n_steps`` BAOAB steps with exchanges every ``exchange_every``."""
    step, energy_force = make_step(energy_fn, masses, temperatures, dt, friction, boltzmann)
    exchange = make_exchange(temperatures, boltzmann)

    def body(carry, i):
        state, key = carry
        key, k_step, k_swap = jax.random.split(key, 3)
        state = step(state, k_step)
        t = i + 1
        do = (t % exchange_every) == 0
        swapped = exchange(state, k_swap, (t // exchange_every) % 2)
        state = jax.tree.map(lambda a, b: jnp.where(do, a, b), swapped, state)
        return (state, key), None

    @jax.jit
    def block(state, key, step0):
        (state, _), _ = jax.lax.scan(body, (state, key), step0 + jnp.arange(n_steps))
        return state

    return block, energy_force


def initial_state(energy_force, x0: np.ndarray, masses: np.ndarray, temperatures: np.ndarray, n_chains: int,
                  key, dtype, boltzmann: float = GAS_CONSTANT) -> MDState:
    """Every chain and replica starts at ``x0`` (D,) with Maxwell-Boltzmann velocities at its temperature."""
    n_r, d = len(temperatures), x0.shape[0]
    x = jnp.broadcast_to(jnp.asarray(x0, dtype), (n_chains, n_r, d))
    sd = jnp.sqrt(boltzmann * jnp.asarray(temperatures)[None, :, None] / jnp.asarray(masses)[None, None, :])
    v = (sd * jax.random.normal(key, x.shape)).astype(dtype)
    e, f = energy_force(x)
    zeros = jnp.zeros(max(n_r - 1, 0), jnp.int32)
    return MDState(x=x, v=v, force=f, energy=e, swaps_tried=zeros, swaps_accepted=zeros)


# ------------------------------------------------------------------------------------------------ the runner

CHECKPOINT = "md_checkpoint.npz"
SAMPLES = "samples.npz"
REPORT = "md.json"


def _load_npz(path) -> dict:
    with np.load(path) as f:
        return dict(f)


def force_evaluations(steps: int, n_chains: int, n_temperatures: int) -> int:
    """Force evaluations of an MD run after ``steps`` steps (equilibration included): every replica once per step,
    plus the initial forces."""
    return int((steps + 1) * n_chains * n_temperatures)


def run_replica_exchange(out: str, energy_fn: Callable, masses: np.ndarray, x0: np.ndarray,
                         temperatures, n_chains: int = 16, n_steps: int = 1_000_000, equilibration: int = 50_000,
                         dt_fs: float = 1.0, friction: float = 1.0, save_every: int = 1000,
                         exchange_every: int = 100, seed: int = 0, dtype=jnp.float32,
                         checkpoint_every_s: float = 60.0, time_limit_s: float | None = None,
                         progress: bool = True, boltzmann: float = GAS_CONSTANT) -> dict:
    """Replica-exchange Langevin MD of ``n_chains`` chains, resumable; writes ``out/samples.npz``.

    Args:
        out: run directory (created; an existing checkpoint there is resumed if the settings match).
        energy_fn: ``x (n, D) -> E (n,)`` in kJ/mol (or reduced: ``boltzmann``), jittable and differentiable.
        masses: mass of each coordinate, ``(D,)`` dalton (an atom's mass repeated for x, y, z).
        x0: starting conformation ``(D,)`` nm.
        temperatures: the ladder, ``temperatures[0]`` the one sampled (kelvin).
        n_steps: steps per chain after equilibration; ``equilibration`` steps are run first and not saved.
        dt_fs, friction: time step (femtoseconds) and Langevin friction (1/ps).
        save_every: steps between saved samples (per chain, from the first replica); exchange_every likewise.
        time_limit_s: stop with a checkpoint after this much wall-clock (rerun to continue).
        boltzmann: k_B in the energy's units per temperature unit: the molar gas constant (kJ/mol/K) for
            molecules; 1 for a target in reduced units (energy u = -log p at temperature 1, masses 1, the time step
            dt_fs / 1000 in the target's own time unit), whose replicas then sample p^(1/T).

    Returns the report (also written to ``out/md.json``): samples, simulated time, force evaluations, wall-clock,
    ns/day per replica and for the whole batch, exchange acceptance per neighbour pair.
    ``out/samples.npz`` holds ``x`` (n, D) float32 (chain-major within each save), ``energy`` (kJ/mol, or
    reduced), ``chain``, ``time_ps`` (simulated time of each chain at the save); a run stopped by its time limit
    writes the samples so far (``finished: false`` in the report), and its rerun overwrites them with the longer
    set.
    """
    temperatures = np.asarray(temperatures, np.float64)
    masses = np.asarray(masses, np.float64)
    x0 = np.asarray(x0, np.float64).reshape(-1)
    if masses.shape != x0.shape:
        raise BoltzflowError(f"masses {masses.shape} and x0 {x0.shape} must have the same shape (D,)")
    if temperatures.ndim != 1 or len(temperatures) < 1 or np.any(np.diff(temperatures) <= 0) or temperatures[0] <= 0:
        raise BoltzflowError(f"temperatures must increase from a positive first one, got {temperatures.tolist()}")
    for name, val in (("n_chains", n_chains), ("save_every", save_every), ("exchange_every", exchange_every)):
        if int(val) < 1:
            raise BoltzflowError(f"{name} must be >= 1, got {val}")
    if n_steps % save_every or equilibration % save_every:
        raise BoltzflowError(f"n_steps ({n_steps}) and equilibration ({equilibration}) must be multiples of "
                             f"save_every ({save_every})")
    if save_every % exchange_every:
        raise BoltzflowError(f"save_every ({save_every}) must be a multiple of exchange_every ({exchange_every})")
    os.makedirs(out, exist_ok=True)
    settings = dict(temperatures=temperatures.tolist(), n_chains=int(n_chains), n_steps=int(n_steps),
                    equilibration=int(equilibration), dt_fs=float(dt_fs), friction=float(friction),
                    save_every=int(save_every), exchange_every=int(exchange_every), seed=int(seed),
                    dtype=np.dtype(dtype).name, dim=int(x0.shape[0]),
                    **({} if boltzmann == GAS_CONSTANT else {"boltzmann": float(boltzmann)}))
    settings_path = os.path.join(out, "md_settings.json")
    ckpt_path = os.path.join(out, CHECKPOINT)
    resumed = read_checkpoint(ckpt_path, settings_path, _load_npz)
    if resumed is not None:
        ck, old = resumed
        if old != settings:
            changed = sorted(k for k in settings if old.get(k) != settings[k])
            raise BoltzflowError(f"{out} holds an MD run with other settings ({', '.join(changed)}); use another "
                                 "--out or the same settings to resume")
    else:
        write_json(settings_path, settings)

    dt = dt_fs * 1e-3
    block, energy_force = make_block(energy_fn, masses, temperatures, dt, friction, save_every, exchange_every,
                                     boltzmann)
    total_blocks = (equilibration + n_steps) // save_every
    if resumed is not None:
        state = MDState(*(jnp.asarray(ck[k]) for k in MDState._fields))
        key = jnp.asarray(ck["key"])
        done, wall = int(ck["blocks_done"]), float(ck["wall_s"])
        saved = {k: list(ck[k]) for k in ("x_saved", "e_saved", "chain_saved", "t_saved")}
    else:
        key, k0 = jax.random.split(jax.random.PRNGKey(seed))
        state = initial_state(energy_force, x0, masses, temperatures, n_chains, k0, dtype, boltzmann)
        done, wall = 0, 0.0
        saved = {"x_saved": [], "e_saved": [], "chain_saved": [], "t_saved": []}

    def checkpoint():
        stack = lambda v, shape, dt_: np.asarray(v, dt_).reshape(shape)  # noqa: E731
        arrays = dict(key=np.asarray(key), blocks_done=done, wall_s=wall,
                      x_saved=stack(saved["x_saved"], (-1, x0.shape[0]), np.float32),
                      e_saved=stack(saved["e_saved"], (-1,), np.float64),
                      chain_saved=stack(saved["chain_saved"], (-1,), np.int32),
                      t_saved=stack(saved["t_saved"], (-1,), np.float64),
                      **{k: np.asarray(getattr(state, k)) for k in MDState._fields})
        write_atomic(ckpt_path, lambda f: np.savez(f, **arrays))

    bar, unit = None, " kJ/mol" if boltzmann == GAS_CONSTANT else " (reduced)"
    if progress:
        bar = tqdm(total=total_blocks, initial=done, unit="block", desc=f"MD ({n_chains}x{len(temperatures)})",
                   dynamic_ncols=True)
    start, last_ck, stopped = time.time(), time.time(), False
    wall0 = wall
    try:
        while done < total_blocks:
            key, sub = jax.random.split(key)
            state = block(state, sub, jnp.asarray(done * save_every))
            done += 1
            if done * save_every > equilibration:
                x = np.asarray(state.x[:, 0, :], np.float32)
                saved["x_saved"].extend(x)
                saved["e_saved"].extend(np.asarray(state.energy[:, 0], np.float64))
                saved["chain_saved"].extend(range(n_chains))
                saved["t_saved"].extend([done * save_every * dt] * n_chains)
            wall = wall0 + time.time() - start
            if bar is not None:
                acc = np.asarray(state.swaps_accepted) / np.maximum(np.asarray(state.swaps_tried), 1)
                bar.set_postfix_str(f"E0 {float(jnp.mean(state.energy[:, 0])):.1f}{unit}, swap acc "
                                    f"{acc.min() if acc.size else float('nan'):.2f}-{acc.max() if acc.size else 0:.2f}")
                bar.update(1)
            if not np.all(np.isfinite(np.asarray(state.energy))):
                raise BoltzflowError("MD blew up (non-finite energy): use a smaller dt_fs or a higher friction")
            if time.time() - last_ck > checkpoint_every_s:
                checkpoint()
                last_ck = time.time()
            if time_limit_s is not None and wall - wall0 > time_limit_s:
                stopped = True
                break
    finally:
        if bar is not None:
            bar.close()
    checkpoint()
    n_saved = len(saved["e_saved"])
    steps_done = done * save_every
    sim_ns = steps_done * dt * 1e-3
    tried, acc = np.asarray(state.swaps_tried), np.asarray(state.swaps_accepted)
    report = dict(settings=settings, finished=not stopped, blocks_done=done, total_blocks=total_blocks,
                  samples=n_saved, simulated_ns_per_replica=sim_ns,
                  simulated_ns_total=sim_ns * n_chains * len(temperatures),
                  force_evaluations=force_evaluations(steps_done, n_chains, len(temperatures)),
                  wall_s=wall, ns_per_day_per_replica=sim_ns / wall * 86400 if wall else None,
                  ns_per_day_total=sim_ns * n_chains * len(temperatures) / wall * 86400 if wall else None,
                  exchange_acceptance=(acc / np.maximum(tried, 1)).tolist(), machine=os.uname().nodename,
                  device=str(jax.devices()[0]))
    if n_saved:  # also for a run stopped by its time limit: md.json's "finished" says whether it is complete
        np.savez_compressed(os.path.join(out, SAMPLES), x=np.asarray(saved["x_saved"], np.float32),
                            energy=np.asarray(saved["e_saved"]), chain=np.asarray(saved["chain_saved"], np.int32),
                            time_ps=np.asarray(saved["t_saved"]), temperature=temperatures[0])
    with open(os.path.join(out, REPORT), "w") as f:
        json.dump(report, f, indent=1)
    return report
