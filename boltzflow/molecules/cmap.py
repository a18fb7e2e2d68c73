"""OpenMM's ``CMAPTorsionForce`` in JAX: a bicubic energy correction map of two dihedral angles.

Each interaction t couples two IUPAC dihedrals, phi_t over atoms (a1, a2, a3, a4) and psi_t over (b1, b2, b3, b4),
through a tabulated map m(t) of size n, and contributes E_m(phi_t, psi_t) kJ/mol.

A map of size n holds n^2 energies on the uniform periodic grid with spacing h = 2 pi / n: ``energy[i + n j]``
belongs to phi = i h, psi = j h (0 <= i, j < n), and index n wraps round to 0. OpenMM interpolates it exactly as a
periodic ``Continuous2DFunction`` on [0, 2 pi]^2 with n + 1 knots per axis (the last repeating the first): knot
slopes E_phi, E_psi from periodic cubic splines along each grid line, the cross derivative from the spline of E_psi
along phi, and in each cell the bicubic Hermite patch matching value, both slopes and the cross derivative at its
four corners (C^1 across cells). So a map here *is* such a function (boltzflow.molecules.tabulated, coefficients
once in float64); a dihedral in (-pi, pi] is wrapped into [0, 2 pi) by the function's periodicity, and forces are
-grad E by autodiff.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import jax
import jax.numpy as jnp
import numpy as np

from boltzflow.errors import BoltzflowError
from boltzflow.molecules.geometry import Geometry
from boltzflow.molecules.tabulated import continuous_function


@dataclass(frozen=True, eq=False)
class CMAPParams:
    """The maps and torsions of a ``CMAPTorsionForce`` (module docstring).

    Attributes:
        maps: one periodic bicubic function f(phi, psi) per map.
        size: (n_maps,) grid size of each map.
        torsion_map: (n_torsions,) the map of each torsion.
        atoms: (n_torsions, 8) a1..a4 (phi), b1..b4 (psi).
    """

    maps: tuple[Callable, ...] = field(repr=False)
    size: np.ndarray
    torsion_map: np.ndarray
    atoms: np.ndarray = field(repr=False)


def read_cmap(force) -> CMAPParams:
    """The maps and torsions of an ``openmm.CMAPTorsionForce`` (one without periodic boundary conditions)."""
    if force.usesPeriodicBoundaryConditions():
        raise BoltzflowError("CMAPTorsionForce with periodic boundary conditions is not supported (no periodic box)")
    maps, sizes = [], []
    for m in range(force.getNumMaps()):
        size, energy = force.getMapParameters(m)
        if hasattr(energy, "value_in_unit"):
            from openmm import unit

            energy = energy.value_in_unit(unit.kilojoule_per_mole)
        grid = np.asarray(energy, np.float64).reshape(size, size).T  # grid[i, j]: phi index i, psi index j
        closed = np.pad(grid, ((0, 1), (0, 1)), mode="wrap")  # knot n repeats knot 0
        maps.append(continuous_function(closed, [(0.0, 2 * np.pi)] * 2, periodic=True, name=f"CMAP map {m}"))
        sizes.append(int(size))
    rows = [force.getTorsionParameters(t) for t in range(force.getNumTorsions())]
    return CMAPParams(maps=tuple(maps), size=np.asarray(sizes, np.int64),
                      torsion_map=np.asarray([r[0] for r in rows], np.int64).reshape(-1),
                      atoms=np.asarray([r[1:9] for r in rows], np.int64).reshape(-1, 8))


def cmap_energy(params: CMAPParams, geo: Geometry) -> jax.Array:
    """Total CMAP energy (kJ/mol), shape (B,), of a batch of conformations, in their dtype."""
    total = jnp.zeros(geo.xyz.shape[1:2], geo.dtype)
    if not len(params.torsion_map):
        return total
    phi, psi = geo.dihedrals(*params.atoms[:, :4].T), geo.dihedrals(*params.atoms[:, 4:].T)
    for m, f in enumerate(params.maps):
        sel = np.flatnonzero(params.torsion_map == m)
        if len(sel):
            total = total + jnp.sum(f(phi[:, sel], psi[:, sel]), axis=-1)
    return total
