"""Chirality (L/D) filter: keep conformations whose stereocentres have the reference structure's handedness.

A flow on internal coordinates or Cartesian positions can produce the mirror image of a centre (e.g. D-alanine
from L-alanine training data): same energy, wrong molecule. This module finds stereocentres from the bond graph and
checks each one's handedness.

Stereocentres (:func:`find_stereocentres`): atoms with exactly 4 bonded neighbours, except those with two or more
terminal neighbours (degree 1) of the same element (CH3, CH2, NH2, CF3, ...: swapping two identical terminal atoms
does not change the molecule). This graph rule is conservative in one direction only: a centre with two identical
but non-terminal substituents (e.g. the CH of an isopropyl group) is kept; rejecting its mirror image only fixes
which of two equivalent labellings is used.

Handedness: for centre c with neighbours (a1, a2, a3) (its three lowest-index neighbours, a fixed order), the sign
of the signed volume

    V = (x_a1 - x_c) . ((x_a2 - x_c) x (x_a3 - x_c)),

which flips under any reflection (x -> -x) and is unchanged by rotations and translations. :class:`Chirality`
records the signs at a reference structure; :meth:`Chirality.mask` is True where every centre has its reference
sign. For alanine dipeptide the only stereocentre is CA (atom 8).
"""

from __future__ import annotations

from dataclasses import dataclass

import jax.numpy as jnp
import numpy as np

from boltzflow.errors import BoltzflowError


def find_stereocentres(n_atoms: int, bonds, elements) -> list[tuple[int, tuple[int, int, int]]]:
    """(centre, its three lowest-index neighbours) for each stereocentre (rule in the module docstring)."""
    bonds = np.asarray(bonds, np.int64).reshape(-1, 2)
    if bonds.size and (bonds.min() < 0 or bonds.max() >= n_atoms):
        raise BoltzflowError(f"bond atom index out of range for {n_atoms} atoms")
    if len(elements) != n_atoms:
        raise BoltzflowError(f"{len(elements)} elements for {n_atoms} atoms")
    adj = [set() for _ in range(n_atoms)]
    for a, b in bonds.tolist():
        if a != b:
            adj[a].add(b)
            adj[b].add(a)
    out = []
    for c in range(n_atoms):
        nbrs = sorted(adj[c])
        if len(nbrs) != 4:
            continue
        terminal = [str(elements[a]).upper() for a in nbrs if len(adj[a]) == 1]
        if any(terminal.count(e) >= 2 for e in set(terminal)):
            continue
        out.append((c, (nbrs[0], nbrs[1], nbrs[2])))
    return out


def signed_volumes(x, centres, neighbours):
    """Signed volume per stereocentre: ``x (..., 3N)`` -> ``(..., m)`` (nm^3)."""
    x = jnp.asarray(x)
    X = x.reshape(*x.shape[:-1], -1, 3)
    centres, neighbours = np.asarray(centres, np.int64), np.asarray(neighbours, np.int64).reshape(-1, 3)
    c = X[..., centres, :]
    u, v, w = (X[..., neighbours[:, i], :] - c for i in range(3))
    return jnp.sum(u * jnp.cross(v, w), axis=-1)


@dataclass(frozen=True, eq=False)
class Chirality:
    """The stereocentres of a molecule and their handedness at a reference structure.

    Attributes:
        n_atoms: number of atoms.
        centres: ``(m,)`` stereocentre atoms.
        neighbours: ``(m, 3)`` the neighbours whose vectors span the signed volume, in that order.
        signs: ``(m,)`` +1 or -1, the sign of the signed volume at the reference.
    """

    n_atoms: int
    centres: np.ndarray
    neighbours: np.ndarray
    signs: np.ndarray

    @classmethod
    def from_graph(cls, n_atoms: int, bonds, elements, reference) -> "Chirality":
        """Find the stereocentres of the bond graph and record their signs at ``reference`` (``(N, 3)`` or
        ``(3N,)``)."""
        found = find_stereocentres(n_atoms, bonds, elements)
        centres = np.asarray([c for c, _ in found], np.int64)
        neighbours = np.asarray([n for _, n in found], np.int64).reshape(-1, 3)
        ref = np.asarray(reference, np.float64)
        if ref.size != 3 * n_atoms:
            raise BoltzflowError(f"reference structure must have {n_atoms} x 3 coordinates, got shape {ref.shape}")
        ref = ref.reshape(n_atoms, 3)
        c = ref[centres]
        u, v, w = (ref[neighbours[:, i]] - c for i in range(3))
        vol = np.sum(u * np.cross(v, w), axis=-1)
        flat = np.abs(vol) < 1e-9
        if np.any(flat):
            raise BoltzflowError(f"the reference structure is planar at stereocentre(s) {centres[flat].tolist()}")
        return cls(int(n_atoms), centres, neighbours, np.sign(vol).astype(np.int64))

    @classmethod
    def from_system(cls, molecule, reference=None) -> "Chirality":
        """From a :class:`~boltzflow.molecules.system.MolecularSystem`; reference default: its starting positions."""
        ref = molecule.positions if reference is None else reference
        return cls.from_graph(molecule.n_atoms, molecule.bonds, molecule.elements, ref)

    def signed_volumes(self, x):
        """``x (..., 3N)`` -> ``(..., m)`` signed volumes."""
        return signed_volumes(x, self.centres, self.neighbours)

    def mask(self, x):
        """``x (n, 3N)`` -> bool ``(n,)``: True where every stereocentre has the reference's handedness."""
        x = jnp.asarray(x)
        if x.ndim < 1 or x.shape[-1] != 3 * self.n_atoms:
            raise BoltzflowError(f"positions must have shape (n, {3 * self.n_atoms}), got {x.shape}")
        if self.centres.size == 0:
            return jnp.ones(x.shape[:-1], bool)
        return jnp.all(self.signed_volumes(x) * jnp.asarray(self.signs, x.dtype) > 0, axis=-1)
