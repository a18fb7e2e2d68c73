"""The program of an OpenMM worker process (boltzflow.molecules.openmm_engine starts it): one ``openmm.Context``
of the System it is sent, evaluating the energies and forces of the batches it is sent until told to stop.

It imports only the standard library, NumPy and OpenMM, never the ``boltzflow`` package: that brings JAX and the
whole library into every worker, at every start and restart (what it cost: docs/benchmarks.md, "The test suite's
time"). The engine loads this file by its path.
"""

import os
import signal
import traceback
from multiprocessing.connection import Connection

import numpy as np


def evaluate_batch(context, positions: np.ndarray, groups: int, energy_unit, force_unit):
    """Energies ``(n,)`` and forces ``(n, n_atoms, 3)`` of ``positions`` ``(n, n_atoms, 3)`` with one Context; a
    conformation that cannot be evaluated gets ``+inf`` and zero forces."""
    n, n_atoms, _ = positions.shape
    energies = np.full(n, np.inf)
    forces = np.zeros((n, n_atoms, 3))
    for i in range(n):
        p = positions[i]
        if not np.isfinite(p).all():
            continue
        try:
            context.setPositions(p)
            state = context.getState(getEnergy=True, getForces=True, groups=groups)
            e = state.getPotentialEnergy().value_in_unit(energy_unit)
            f = np.asarray(state.getForces(asNumpy=True).value_in_unit(force_unit), np.float64)
        except Exception:  # OpenMM raises plain Exceptions (e.g. "Particle coordinate is NaN")
            continue
        if np.isfinite(e) and np.isfinite(f).all():
            energies[i] = e
            forces[i] = f
    return energies, forces


def make_context(system_xml: str, platform: str, properties: dict):
    """A Context of the serialized System on ``platform`` (its centre-of-mass motion remover dropped: no integrator
    steps here)."""
    import openmm

    system = openmm.XmlSerializer.deserialize(system_xml)
    for k in reversed(range(system.getNumForces())):
        if isinstance(system.getForce(k), openmm.CMMotionRemover):
            system.removeForce(k)
    try:
        plat = openmm.Platform.getPlatformByName(platform)
    except Exception:
        names = [openmm.Platform.getPlatform(k).getName() for k in range(openmm.Platform.getNumPlatforms())]
        raise RuntimeError(f"OpenMM platform {platform!r} is not available; available: {', '.join(names)}") from None
    return openmm.Context(system, openmm.VerletIntegrator(0.001), plat, dict(properties))


def main(fd: int) -> None:
    """Serve the engine on the connection with file descriptor ``fd``, with SIGINT ignored (the parent handles it).

    Protocol: first ``("init", system_xml, platform, properties)`` -> ``("ready", pid)`` or ``("error", message)``;
    then ``("eval", positions, groups)`` -> ``("ok", energies, forces)`` or ``("error", message)``, until ``None``
    or end-of-file (the parent closed its end or died).
    """
    from openmm import unit

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    conn = Connection(fd)
    try:
        _, system_xml, platform, properties = conn.recv()
        try:
            context = make_context(system_xml, platform, properties)
        except Exception as e:
            conn.send(("error", str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__))
            return
        conn.send(("ready", os.getpid()))
        energy_unit, force_unit = unit.kilojoule_per_mole, unit.kilojoule_per_mole / unit.nanometer
        while True:
            msg = conn.recv()
            if msg is None:
                return
            _, positions, groups = msg
            try:
                conn.send(("ok", *evaluate_batch(context, positions, groups, energy_unit, force_unit)))
            except Exception:
                conn.send(("error", traceback.format_exc()))
    except (EOFError, OSError):  # the parent is gone
        return
