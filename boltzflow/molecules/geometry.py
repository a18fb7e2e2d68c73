"""Bond lengths, angles, dihedrals and the pair-distance matrix of a batch of conformations, for the JAX engine.

A :class:`Geometry` wraps positions ``(B, n_atoms, 3)`` laid out as ``(3, B, n_atoms)``, so that elementwise work
vectorises along atoms and pairs, not along xyz. Bond vectors come from small incidence matrices
(x_j - x_i = (e_j - e_i)^T X) rather than gathers: on a CPU the matmul and its transpose (the gradient) are several
times faster than a gather and its scatter-add. Angles are atan2(|u x v|, u . v) in [0, pi] (accurate near 0 and pi);
dihedrals follow the IUPAC sign, as OpenMM, in (-pi, pi]. Distances use the "double where", so that the gradient is
finite even where two atoms coincide.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def norm(v):
    """|v| of a vector given as its three components (each (B, ...)), with a finite gradient at v = 0."""
    sq = v[0] * v[0] + v[1] * v[1] + v[2] * v[2]
    safe = jnp.where(sq > 0, sq, jnp.ones_like(sq))
    return jnp.where(sq > 0, jnp.sqrt(safe), jnp.zeros_like(sq))


def dot(u, v):
    return u[0] * v[0] + u[1] * v[1] + u[2] * v[2]


def cross(u, v):
    return (u[1] * v[2] - u[2] * v[1], u[2] * v[0] - u[0] * v[2], u[0] * v[1] - u[1] * v[0])


def angle_from_vectors(u, v):
    """Angle between u and v in [0, pi]."""
    return jnp.arctan2(norm(cross(u, v)), dot(u, v))


def dihedral_from_vectors(b0, b1, b2):
    """IUPAC dihedral from the bond vectors b0 = b - a, b1 = c - b, b2 = d - c, in (-pi, pi] (OpenMM's sign)."""
    n1, n2 = cross(b0, b1), cross(b1, b2)
    return jnp.arctan2(norm(b1) * dot(b0, n2), dot(n1, n2))


def _incidence(n_atoms: int, tail: np.ndarray, head: np.ndarray) -> np.ndarray:
    """(m, n_atoms) matrix whose row t maps positions to x[head_t] - x[tail_t]."""
    m = np.zeros((len(tail), n_atoms))
    m[np.arange(len(tail)), head] += 1.0
    m[np.arange(len(tail)), tail] -= 1.0
    return m


class Geometry:
    """Geometric quantities of a batch of conformations ``pos`` (B, n_atoms, 3), in pos's dtype."""

    def __init__(self, pos: jax.Array):
        self.dtype, self.n_atoms = pos.dtype, pos.shape[1]
        self.xyz = jnp.moveaxis(pos, -1, 0)  # (3, B, n)
        self._pairs = None

    def vectors(self, tail: np.ndarray, head: np.ndarray):
        """x[head] - x[tail] for index arrays of length m, as three (B, m) components."""
        v = jnp.einsum("mk,cbk->cbm", jnp.asarray(_incidence(self.n_atoms, tail, head), self.dtype), self.xyz)
        return v[0], v[1], v[2]

    def distances(self, i: np.ndarray, j: np.ndarray) -> jax.Array:
        return norm(self.vectors(i, j))

    def angles(self, i: np.ndarray, j: np.ndarray, k: np.ndarray) -> jax.Array:
        return angle_from_vectors(self.vectors(j, i), self.vectors(j, k))

    def dihedrals(self, i, j, k, l) -> jax.Array:
        return dihedral_from_vectors(self.vectors(i, j), self.vectors(j, k), self.vectors(k, l))

    def pair_distances(self) -> tuple[jax.Array, jax.Array]:
        """(r, eye): the (B, n, n) distance matrix with its diagonal set to 1 (to be masked by every use), and the
        (n, n) boolean identity."""
        if self._pairs is None:
            eye, one = jnp.eye(self.n_atoms, dtype=bool), jnp.ones((), self.dtype)
            diff = [jnp.where(eye, one, comp[:, :, None] - comp[:, None, :]) for comp in self.xyz]
            self._pairs = jnp.where(eye, one, norm(diff)), eye
        return self._pairs
