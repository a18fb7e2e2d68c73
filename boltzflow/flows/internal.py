"""Internal coordinates as a flow layer: normalised (bonds, angles, dihedrals) <-> Cartesian positions.

The layer sits last in the forward direction (latent -> data): the flow below it models a vector z of 3N - 6
normalised internal coordinates and this layer builds the molecule from them, in nm, flattened to (n, 3N):

    q = q_min + s * z          (bonds s = 0.005 nm, angles s = 0.15 rad, non-circular dihedrals s = 0.2 rad;
                                circular dihedrals s = 1: their z is the angle phi - phi_min itself; between
                                molecules, the link's length s = 0.05 nm and the angles and dihedrals that reach
                                across it s = 0.3 rad, as they move more)
    x = X(q)                   canonical frame: first atom at the origin, second on +x, third in the xy plane

where q_min are the internal coordinates of the energy minimum (:func:`boltzflow.molecules.system.minimize`, done
once when the layer is made; a constant of the layer, not a parameter). The inverse accepts a conformation in any
orientation and position: z = (q(x) - q_min) / s, with every dihedral difference first wrapped into [-pi, pi), so
circular z lie in [-pi, pi) (the circular dims of the base below) and the others are centred at the minimum.

log|det|. The forward map goes from R^{3N-6} to R^{3N}; its dS is the log-density change with the six rigid-body
degrees of freedom measured by d^3t (translation) and the Haar measure dR (rotation), see
:mod:`boltzflow.molecules.zmatrix`:

    dS_forward = log J(q) + sum_d log s_d,   log J(q) = 2 sum log b + sum log sin theta,      dS_inverse = -dS_forward,

so that log q(x) = log q_z(z) - dS_forward is the density of x per unit d^3t dR d^{3N-6}q-volume: the Cartesian
density of a molecule whose orientation is uniform (Haar) and whose position has unit density, the quantity an
importance weight against exp(-u(x)/kT) needs (the rigid motions integrate to the same constant on both sides).

Validity: the map is one-to-one where bonds > 0, 0 < angles < pi and non-circular |z| < pi / s; a standard normal
never gets near those bounds (a bond of 0.1 nm is 20 s away from 0).
"""

from __future__ import annotations

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from boltzflow.errors import BoltzflowError, check_batch
from boltzflow.flows.base import Layer
from boltzflow.flows.spline import wrap_angle
from boltzflow.molecules.system import MolecularSystem, minimize
from boltzflow.molecules.zmatrix import ZMatrix, cartesian_to_internal, internal_to_cartesian, log_det_jacobian


class InternalCoordinates(Layer):
    """Normalised internal coordinates ``(n, 3N - 6)`` -> Cartesian ``(n, 3N)`` (forward), and back (inverse).

    Args:
        source: a :class:`~boltzflow.molecules.system.MolecularSystem` (its Z-matrix is built from its bonds) or a
            :class:`~boltzflow.molecules.zmatrix.ZMatrix`.
        reference: the structure z = 0 stands for, ``(N, 3)`` or ``(3N,)`` nm. Default for a MolecularSystem: its
            energy minimum from the starting positions; required with a ZMatrix.
        bond_scale, angle_scale, dihedral_scale: the normalisation scales s (nm, rad, rad).
        link_bond_scale, link_angle_scale: the scales of the link's length and of the angles and dihedrals between
            molecules (several molecules: :mod:`boltzflow.molecules.zmatrix`).
        root: first atom of the Z-matrix (default: the heavy-atom graph centre; MolecularSystem only).

    The layer has no trainable parameters: the reference and scales are static (hashable) fields.
    """

    zmatrix: ZMatrix = eqx.field(static=True)
    reference_ic: tuple[float, ...] = eqx.field(static=True)
    scales: tuple[float, ...] = eqx.field(static=True)
    reference: tuple[float, ...] = eqx.field(static=True)

    def __init__(self, source, reference=None, *, bond_scale: float = 0.005, angle_scale: float = 0.15,
                 dihedral_scale: float = 0.2, link_bond_scale: float = 0.05, link_angle_scale: float = 0.3,
                 root: int | None = None):
        if isinstance(source, MolecularSystem):
            zm = ZMatrix.from_system(source, root=root)
            if reference is None:
                reference = minimize(source)
        elif isinstance(source, ZMatrix):
            zm = source
            if reference is None:
                raise BoltzflowError("InternalCoordinates from a ZMatrix needs a reference structure (n_atoms, 3)")
        else:
            raise BoltzflowError(f"InternalCoordinates needs a MolecularSystem or a ZMatrix, got "
                                 f"{type(source).__name__}")
        for name, s in (("bond_scale", bond_scale), ("angle_scale", angle_scale), ("dihedral_scale", dihedral_scale),
                        ("link_bond_scale", link_bond_scale), ("link_angle_scale", link_angle_scale)):
            if not (isinstance(s, (int, float)) and s > 0 and math.isfinite(s)):
                raise BoltzflowError(f"{name} must be a positive number, got {s!r}")
        ref = np.asarray(reference, np.float64)
        if ref.size != 3 * zm.n_atoms:
            raise BoltzflowError(f"reference structure must have {zm.n_atoms} x 3 coordinates, got shape {ref.shape}")
        ref = ref.reshape(1, 3 * zm.n_atoms)
        with jax.enable_x64(True):
            ic = np.concatenate([np.asarray(a, np.float64) for a in cartesian_to_internal(zm, jnp.asarray(ref))],
                                axis=-1)[0]
        bonds, angles, _ = zm.split(ic)
        if not (np.all(np.isfinite(ic)) and bonds.min() > 0 and np.sin(angles).min() > 1e-3):
            raise BoltzflowError("the reference structure is degenerate (overlapping atoms or a straight angle)")
        inter_b, inter_a, inter_d = zm.split(zm.intermolecular_mask)
        scale = np.concatenate([np.where(inter_b, float(link_bond_scale), float(bond_scale)),
                                np.where(inter_a, float(link_angle_scale), float(angle_scale)),
                                np.where(zm.circular, 1.0, np.where(inter_d, float(link_angle_scale),
                                                                    float(dihedral_scale)))])
        self.zmatrix = zm
        self.reference_ic = tuple(float(v) for v in ic)
        self.scales = tuple(float(v) for v in scale)
        self.reference = tuple(float(v) for v in ref[0])

    # ---- dimensions and layout of the latent vector -----------------------------------------------------------

    @property
    def n_atoms(self) -> int:
        return self.zmatrix.n_atoms

    @property
    def latent_dim(self) -> int:
        """Dimension of the internal-coordinate vector z, 3N - 6."""
        return self.zmatrix.dim

    @property
    def data_dim(self) -> int:
        """Dimension of a flattened conformation, 3N."""
        return 3 * self.zmatrix.n_atoms

    @property
    def coordinate_map(self) -> bool:
        return True

    def out_dim(self, in_dim: int) -> int:
        if in_dim != self.latent_dim:
            raise BoltzflowError(f"InternalCoordinates takes {self.latent_dim} internal coordinates, not {in_dim}")
        return self.data_dim

    @property
    def circular_mask(self) -> np.ndarray:
        """``(3N - 6,)`` bool: the latent dims that are circular (values in [-pi, pi)); build the base and flow below
        this layer with them."""
        return self.zmatrix.circular_mask

    @property
    def circular_indices(self) -> list[int]:
        return np.flatnonzero(self.circular_mask).tolist()

    @property
    def names(self) -> tuple[str, ...]:
        """Name of each latent dim, e.g. ``"bond N:6-CA:8"``, ``"dihedral C:4-N:6-CA:8-C:14"``."""
        return self.zmatrix.names

    @property
    def slices(self) -> dict[str, slice]:
        """Where the bonds, angles and dihedrals sit in the latent vector (in this order)."""
        nb, na = self.zmatrix.n_bonds, self.zmatrix.n_angles
        return {"bonds": slice(0, nb), "angles": slice(nb, nb + na), "dihedrals": slice(nb + na, self.latent_dim)}

    @property
    def reference_positions(self) -> np.ndarray:
        """The reference (minimum) structure, ``(N, 3)`` nm, as given (not in the canonical frame)."""
        return np.asarray(self.reference, np.float64).reshape(self.n_atoms, 3)

    @property
    def log_scale(self) -> float:
        """sum_d log s_d, the normalisation's constant share of dS_forward."""
        return float(np.sum(np.log(self.scales)))

    # ---- the maps -------------------------------------------------------------------------------------------------

    def _consts(self, dtype):
        return jnp.asarray(self.reference_ic, dtype), jnp.asarray(self.scales, dtype)

    def to_internal(self, z: jax.Array) -> jax.Array:
        """Normalised z ``(n, 3N - 6)`` -> internal coordinates q = q_min + s z (bonds nm, angles and dihedrals rad)."""
        ref, scale = self._consts(z.dtype)
        return ref + scale * z

    def forward(self, z, key=None):
        check_batch(z, self.latent_dim, "z")
        q = self.to_internal(z)
        bonds, angles, dihedrals = self.zmatrix.split(q)
        x = internal_to_cartesian(self.zmatrix, bonds, angles, dihedrals)
        return x, log_det_jacobian(bonds, angles) + jnp.asarray(self.log_scale, z.dtype)

    def inverse(self, x, key=None):
        check_batch(x, self.data_dim, "x")
        bonds, angles, dihedrals = cartesian_to_internal(self.zmatrix, x)
        ref, scale = self._consts(x.dtype)
        q = jnp.concatenate([bonds, angles, dihedrals], axis=-1)
        dihedral = np.arange(self.latent_dim) >= self.zmatrix.n_bonds + self.zmatrix.n_angles
        diff = jnp.where(dihedral, wrap_angle(q - ref), q - ref)
        z = diff / scale
        return z, -(log_det_jacobian(bonds, angles) + jnp.asarray(self.log_scale, x.dtype))
