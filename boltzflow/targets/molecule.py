"""A molecule at a temperature as a target: p(x) proportional to exp(-E(x) / kT) on Cartesian positions.

x is the flattened positions in nm, ``(n, 3 n_atoms)`` (66 for alanine dipeptide); internal coordinates are a
layer of the model (:class:`boltzflow.flows.internal.InternalCoordinates`), not of the target. The energy comes
from one of two engines with the same interface, ``x (n, 3 n_atoms) -> E (n,)`` in kJ/mol:

- ``engine: jax`` (default): the force field in JAX (:mod:`boltzflow.molecules.forcefield`), parameters read from
  the OpenMM System; batched, jitted, differentiated by autodiff, float32 or float64 as x is.
- ``engine: openmm``: OpenMM itself in a pool of worker processes (:mod:`boltzflow.molecules.openmm_engine`),
  called from jitted JAX with OpenMM's forces as the gradient.

Energies are regularised as FAB's alanine dipeptide target does, in units of kT (u = E / kT):

    u_reg = u                                  if u <= u_cut
          = u_cut + log(1 + u - u_cut)         if u_cut < u <= u_max      (linear-log: large but finite gradients)
          = u_cut + log(1 + u_max - u_cut)     above u_max,

with u_cut = 1e8 and u_max = 1e20 by default, so a flow sample with nearly overlapping atoms has a finite weight
of ~ 0 and a usable gradient instead of an overflow. A non-finite energy (coincident atoms, NaN positions) gives
log p = -inf, which boltzflow's samplers and losses treat as an invalid point (weight zero, counted).

Stereoisomer. A mirror image has the same energy, but it is another molecule (D- instead of L-alanine) that MD
from the L-form never visits. With ``chirality: true`` (default) the target is the Boltzmann distribution of the
starting structure's stereoisomer: log p = -inf where a stereocentre has the other handedness
(:class:`boltzflow.molecules.chirality.Chirality`), so AIS, FAB's buffer and every importance weight drop such
samples, as the FAB paper filters them during training.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from boltzflow.errors import BoltzflowError
from boltzflow.molecules.forcefield import batched_energy, read_forcefield
from boltzflow.molecules.chirality import Chirality
from boltzflow.molecules.openmm_engine import OpenMMEngine
from boltzflow.molecules.reference import builtin_reference
from boltzflow.molecules.system import MolecularSystem, load_system
from boltzflow.targets.base import Target

#: Molar gas constant in kJ / (mol K) (CODATA 2018, as openmm.unit.MOLAR_GAS_CONSTANT_R).
GAS_CONSTANT = 8.314462618e-3
ENGINES = ("jax", "openmm")


def regularize_energy(u: jax.Array, cut: float, maximum: float) -> jax.Array:
    """FAB's linear-log regularisation of a reduced energy u = E / kT (module docstring)."""
    u = jnp.minimum(u, maximum)
    excess = jnp.maximum(u - cut, 0.0)
    return jnp.where(u > cut, cut + jnp.log1p(excess), u)


class MoleculeTarget(Target):
    """Boltzmann distribution exp(-E(x) / kT) of a molecule at ``temperature`` (kelvin).

    Args:
        molecule: a built-in name (``"aldp_implicit"``, ``"aldp_vacuum"``), a source dict or a
            :class:`MolecularSystem` (see :func:`boltzflow.molecules.system.load_system`).
        temperature: kelvin.
        engine: ``"jax"`` or ``"openmm"``.
        platform: OpenMM platform of the openmm engine (``"CPU"`` or ``"Reference"``).
        n_workers: worker processes of the openmm engine (default: one per core).
        energy_cut, energy_max: the regularisation thresholds in kT.
        reference: an ``.npz`` of reference samples (``x``, (n, 3 n_atoms), e.g. ``reference.npz`` of
            ``boltzflow md``) for the molecular metrics of ``boltzflow evaluate``; default: the set shipped with
            boltzflow for this molecule and temperature, if there is one.
        chirality: keep only the starting structure's stereoisomer (module docstring).
    """

    log_z = None

    def __init__(self, molecule="aldp_implicit", temperature: float = 300.0, engine: str = "jax",
                 platform: str = "CPU", n_workers: int | None = None, energy_cut: float = 1e8,
                 energy_max: float = 1e20, reference: str | None = None, chirality: bool = True):
        if engine not in ENGINES:
            raise BoltzflowError(f"unknown engine {engine!r}; expected one of {', '.join(ENGINES)}")
        temperature = float(temperature)
        if not np.isfinite(temperature) or temperature <= 0:
            raise BoltzflowError(f"temperature must be a positive number of kelvin, got {temperature}")
        if not 0 < energy_cut < energy_max:
            raise BoltzflowError(f"need 0 < energy_cut < energy_max, got {energy_cut}, {energy_max}")
        self.molecule: MolecularSystem = load_system(molecule)
        self.temperature = temperature
        self.kT = GAS_CONSTANT * temperature
        self.engine = engine
        self.energy_cut, self.energy_max = float(energy_cut), float(energy_max)
        self.name = f"{self.molecule.name}_{temperature:g}K"
        self.dim = self.molecule.dim
        self.reference_path = reference or builtin_reference(self.molecule.name, temperature)
        self.chirality = Chirality.from_system(self.molecule)
        self.keep_chirality = bool(chirality)
        if engine == "jax":
            self.params = read_forcefield(self.molecule.openmm_system())
            self.energy_kj = batched_energy(self.params)
        else:
            self.energy_kj = OpenMMEngine(self.molecule, platform=platform, n_workers=n_workers).energy_fn()

    def reduced_energy(self, x: jax.Array) -> jax.Array:
        """E(x) / kT, regularised; +inf where the energy is not finite."""
        u = self.energy_kj(x) / self.kT
        return jnp.where(jnp.isfinite(u), regularize_energy(u, self.energy_cut, self.energy_max), jnp.inf)

    def _log_prob(self, x: jax.Array) -> jax.Array:
        log_p = -self.reduced_energy(x)
        return jnp.where(self.chirality.mask(x), log_p, -jnp.inf) if self.keep_chirality else log_p

    def __repr__(self) -> str:
        return (f"MoleculeTarget({self.molecule.name!r}, temperature={self.temperature:g} K, engine={self.engine!r}, "
                f"dim={self.dim})")
