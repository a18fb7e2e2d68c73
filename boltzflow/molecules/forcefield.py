"""The classical force field of an OpenMM System, in JAX: batched, jittable, differentiable.

Every parameter is read from the System's forces (:func:`read_forcefield`), never typed by hand. Supported forces
and the energies they contribute (kJ/mol; r in nm, angles in rad):

- ``HarmonicBondForce``:  sum_b  k_b / 2 (r_b - r0_b)^2
- ``HarmonicAngleForce``: sum_a  k_a / 2 (theta_a - theta0_a)^2
- ``PeriodicTorsionForce``: sum_t  k_t (1 + cos(n_t phi_t - phi0_t))      (phi: IUPAC dihedral, as OpenMM)
- ``NonbondedForce`` with ``NoCutoff``: over all pairs i < j that are not exceptions,
      C_nb q_i q_j / r_ij + 4 eps_ij ((sigma_ij / r_ij)^12 - (sigma_ij / r_ij)^6),
      sigma_ij = (sigma_i + sigma_j) / 2,  eps_ij = sqrt(eps_i eps_j)      (Lorentz-Berthelot)
  and over the exceptions (the 1-4 pairs, with the scaled charge product and LJ parameters as given; exceptions
  with zero charge product and zero epsilon are exclusions and contribute nothing). C_nb = 138.93545764438198
  kJ nm / (mol e^2), OpenMM's ONE_4PI_EPS0.
- ``GBSAOBCForce``, OpenMM's native generalized Born with the OBC Born radii (Onufriev, Bashford & Case 2004, OBC2
  constants). Per particle: charge q, offset radius or = rho - 0.009 and scaled offset radius sr = s * or.
  Born-radius integral over ordered pairs (i, j), j != i (asymmetric in i and j):

      I_i = sum_j  [r + sr_j > or_i] 1/2 (1/L - 1/U + (r - sr_j^2 / r) (1/U^2 - 1/L^2) / 4 + log(L/U) / (2 r))
                   + [or_i < sr_j - r] 2 (1/or_i - 1/L),
      U = r + sr_j,  L = max(or_i, |r - sr_j|),

      psi_i = I_i or_i,   B_i = 1 / (1/or_i - tanh(psi_i - 0.8 psi_i^2 + 4.85 psi_i^3) / rho_i);

  energy, with C_nb as the constant and gamma = getSurfaceAreaEnergy():

      - 1/2 C_nb (1/eps_in - 1/eps_out) sum_i q_i^2 / B_i
      - C_nb (1/eps_in - 1/eps_out) sum_{i<j} q_i q_j / sqrt(r^2 + B_i B_j exp(-r^2 / (4 B_i B_j)))
      + 4 pi gamma sum_i (rho_i + 0.14)^2 (rho_i / B_i)^6
- ``CustomBondForce``, ``CustomAngleForce``, ``CustomTorsionForce``, ``CustomExternalForce``,
  ``CustomNonbondedForce`` and ``CustomGBForce`` (every implicit solvent openmm.app builds: HCT, OBC1, OBC2, GBn,
  GBn2) by their own expressions (boltzflow.molecules.custom_forces);
- ``CMAPTorsionForce`` (boltzflow.molecules.cmap).

A force this module does not know (or a NonbondedForce with a cutoff, a periodic box, parameter offsets) raises a
one-line :class:`BoltzflowError` naming it; ``CMMotionRemover`` has no energy and is skipped.

Gradients come from autodiff. Distances use the "double where" (boltzflow.molecules.geometry) so that the gradient is
finite even where two atoms coincide (the energy there is infinite, and the target maps it to log p = -inf).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import jax
import jax.numpy as jnp
import numpy as np

from boltzflow.errors import BoltzflowError
from boltzflow.molecules.cmap import CMAPParams, cmap_energy, read_cmap
from boltzflow.molecules.custom_forces import SUPPORTED as CUSTOM_FORCES
from boltzflow.molecules.custom_forces import CustomForce, custom_energy, read_custom
from boltzflow.molecules.geometry import Geometry, cross, dihedral_from_vectors, dot, norm

#: OpenMM's 1 / (4 pi eps_0) in kJ nm / (mol e^2), used by NonbondedForce and GBSAOBCForce.
COULOMB_NONBONDED = 138.93545764438198
#: OpenMM's dielectric offset and probe radius (nm) for OBC.
DIELECTRIC_OFFSET = 0.009
PROBE_RADIUS = 0.14


@dataclass(frozen=True, eq=False)
class GBParams:
    """The native GBSAOBCForce's parameters (module docstring)."""

    charge: np.ndarray
    offset_radius: np.ndarray  # or = rho - 0.009
    scaled_radius: np.ndarray  # sr = s * or
    prefactor: float  # C (1/eps_in - 1/eps_out)
    surface: float  # coefficient of (rho + 0.14)^2 (rho / B)^6


@dataclass(frozen=True, eq=False)
class ForceFieldParams:
    """Every parameter of the supported forces as NumPy arrays (float64), grouped by term."""

    n_atoms: int
    bond_idx: np.ndarray = field(repr=False)
    bond_r0: np.ndarray = field(repr=False)
    bond_k: np.ndarray = field(repr=False)
    angle_idx: np.ndarray = field(repr=False)
    angle_theta0: np.ndarray = field(repr=False)
    angle_k: np.ndarray = field(repr=False)
    torsion_idx: np.ndarray = field(repr=False)
    torsion_n: np.ndarray = field(repr=False)
    torsion_phase: np.ndarray = field(repr=False)
    torsion_k: np.ndarray = field(repr=False)
    pair_idx: np.ndarray = field(repr=False)  # LJ + Coulomb pairs: normal pairs and exceptions together
    pair_qq: np.ndarray = field(repr=False)  # C_nb q_i q_j
    pair_sigma: np.ndarray = field(repr=False)
    pair_eps4: np.ndarray = field(repr=False)  # 4 eps
    gb: GBParams | None = field(default=None, repr=False)
    custom: tuple[CustomForce, ...] = field(default=(), repr=False)
    cmap: tuple[CMAPParams, ...] = field(default=(), repr=False)
    forces: tuple[str, ...] = ()


def _openmm():
    try:
        import openmm
    except ImportError:
        raise BoltzflowError("reading a force field needs OpenMM: pip install openmm") from None
    return openmm


def _value(q, unit):
    return q.value_in_unit(unit) if hasattr(q, "value_in_unit") else float(q)


def _bonded(get, count: int, n_atoms: int, units) -> tuple[np.ndarray, ...]:
    """Rows ``get(i)`` of a bonded force (``n_atoms`` atom indices, then one value per entry of ``units``; a unit
    of None is a plain number) -> the index array and one float64 array per value."""
    rows = [get(i) for i in range(count)]
    idx = np.asarray([r[:n_atoms] for r in rows], np.int64).reshape(-1, n_atoms)
    values = [np.asarray([float(r[n_atoms + j]) if unit is None else _value(r[n_atoms + j], unit) for r in rows],
                         np.float64) for j, unit in enumerate(units)]
    return (idx, *values)


def _bonds(f, u):
    return _bonded(f.getBondParameters, f.getNumBonds(), 2, (u.nanometer, u.kilojoule_per_mole / u.nanometer**2))


def _angles(f, u):
    return _bonded(f.getAngleParameters, f.getNumAngles(), 3, (u.radian, u.kilojoule_per_mole / u.radian**2))


def _torsions(f, u):
    return _bonded(f.getTorsionParameters, f.getNumTorsions(), 4, (None, u.radian, u.kilojoule_per_mole))


def _nonbonded(f, u, n_atoms: int):
    openmm = _openmm()
    if f.getNonbondedMethod() != openmm.NonbondedForce.NoCutoff:
        raise BoltzflowError("NonbondedForce with a cutoff or a periodic method is not supported by the jax engine "
                             "(use NoCutoff, or engine: openmm)")
    if f.getNumParticleParameterOffsets() or f.getNumExceptionParameterOffsets() or f.getNumGlobalParameters():
        raise BoltzflowError("NonbondedForce with parameter offsets / global parameters is not supported by the jax "
                             "engine (use engine: openmm)")
    p = [f.getParticleParameters(i) for i in range(n_atoms)]
    q = np.asarray([_value(r[0], u.elementary_charge) for r in p])
    sig = np.asarray([_value(r[1], u.nanometer) for r in p])
    eps = np.asarray([_value(r[2], u.kilojoule_per_mole) for r in p])
    exceptions = {}
    for e in range(f.getNumExceptions()):
        i, j, qq, s, ep = f.getExceptionParameters(e)
        exceptions[(min(i, j), max(i, j))] = (_value(qq, u.elementary_charge**2), _value(s, u.nanometer),
                                              _value(ep, u.kilojoule_per_mole))
    idx, qq, sigma, eps4 = [], [], [], []
    for i in range(n_atoms):
        for j in range(i + 1, n_atoms):
            if (i, j) in exceptions:
                c, s, ep = exceptions[(i, j)]
            else:
                c, s, ep = q[i] * q[j], 0.5 * (sig[i] + sig[j]), np.sqrt(eps[i] * eps[j])
            if c == 0.0 and ep == 0.0:
                continue
            idx.append((i, j))
            qq.append(COULOMB_NONBONDED * c)
            sigma.append(s)
            eps4.append(4.0 * ep)
    return (np.asarray(idx, np.int64).reshape(-1, 2), np.asarray(qq, np.float64), np.asarray(sigma, np.float64),
            np.asarray(eps4, np.float64))


def _obc_force(f, u, n_atoms: int) -> GBParams:
    openmm = _openmm()
    if f.getNonbondedMethod() != openmm.GBSAOBCForce.NoCutoff:
        raise BoltzflowError("GBSAOBCForce with a cutoff is not supported by the jax engine (use engine: openmm)")
    rows = [f.getParticleParameters(i) for i in range(n_atoms)]
    q = np.asarray([_value(r[0], u.elementary_charge) for r in rows])
    rho = np.asarray([_value(r[1], u.nanometer) for r in rows])
    s = np.asarray([float(r[2]) for r in rows])
    gamma_sa = _value(f.getSurfaceAreaEnergy(), u.kilojoule_per_mole / u.nanometer**2)
    return GBParams(charge=q, offset_radius=rho - DIELECTRIC_OFFSET, scaled_radius=s * (rho - DIELECTRIC_OFFSET),
                    prefactor=COULOMB_NONBONDED * (1 / f.getSoluteDielectric() - 1 / f.getSolventDielectric()),
                    surface=4 * np.pi * gamma_sa)


def read_forcefield(system) -> ForceFieldParams:
    """Read every supported force of an ``openmm.System`` (module docstring); unknown forces are refused."""
    openmm = _openmm()
    u = openmm.unit
    n = system.getNumParticles()
    empty = dict(bond_idx=np.zeros((0, 2), np.int64), bond_r0=np.zeros(0), bond_k=np.zeros(0),
                 angle_idx=np.zeros((0, 3), np.int64), angle_theta0=np.zeros(0), angle_k=np.zeros(0),
                 torsion_idx=np.zeros((0, 4), np.int64), torsion_n=np.zeros(0), torsion_phase=np.zeros(0),
                 torsion_k=np.zeros(0), pair_idx=np.zeros((0, 2), np.int64), pair_qq=np.zeros(0),
                 pair_sigma=np.zeros(0), pair_eps4=np.zeros(0))
    parts, gb, names, custom, cmap = {}, None, [], [], []
    concat = {}
    for f in system.getForces():
        name = type(f).__name__
        if isinstance(f, openmm.CMMotionRemover):
            continue
        names.append(name)
        if isinstance(f, openmm.HarmonicBondForce):
            new = dict(zip(("bond_idx", "bond_r0", "bond_k"), _bonds(f, u)))
        elif isinstance(f, openmm.HarmonicAngleForce):
            new = dict(zip(("angle_idx", "angle_theta0", "angle_k"), _angles(f, u)))
        elif isinstance(f, openmm.PeriodicTorsionForce):
            new = dict(zip(("torsion_idx", "torsion_n", "torsion_phase", "torsion_k"), _torsions(f, u)))
        elif isinstance(f, openmm.NonbondedForce):
            new = dict(zip(("pair_idx", "pair_qq", "pair_sigma", "pair_eps4"), _nonbonded(f, u, n)))
        elif isinstance(f, openmm.GBSAOBCForce):
            if gb is not None:
                raise BoltzflowError("a System with two GBSAOBCForces is not supported by the jax engine")
            gb = _obc_force(f, u, n)
            continue
        elif name in CUSTOM_FORCES:
            custom.append(read_custom(f, n))
            continue
        elif isinstance(f, openmm.CMAPTorsionForce):
            cmap.append(read_cmap(f))
            continue
        else:
            raise BoltzflowError(f"the jax engine does not support {name} (supported: HarmonicBondForce, "
                                 "HarmonicAngleForce, PeriodicTorsionForce, NonbondedForce, GBSAOBCForce, "
                                 f"CMAPTorsionForce, {', '.join(CUSTOM_FORCES)}); use engine: openmm")
        for k, v in new.items():
            concat.setdefault(k, []).append(v)
    for k, v in empty.items():
        parts[k] = np.concatenate(concat[k]) if k in concat else v
    return ForceFieldParams(n_atoms=n, gb=gb, custom=tuple(custom), cmap=tuple(cmap), forces=tuple(names), **parts)


# ----------------------------------------------------------------------------------------------- energy terms
#
# Everything works on a batch (B, n_atoms, 3) through boltzflow.molecules.geometry. Pair terms use the dense
# n_atoms x n_atoms distance matrix with parameter matrices that are zero where a pair does not interact.


def _torsion_energy(params: ForceFieldParams, bonds, dtype):
    """sum_t k_t (1 + cos(n_t phi_t - phi0_t)). For integer periodicities n <= 6 (every Amber / CHARMM torsion) the
    cosines come from cos(phi) = x / rho, sin(phi) = y / rho (phi = atan2(y, x)) and the angle-addition recurrence
    cos((k+1) phi) = cos(k phi) cos(phi) - sin(k phi) sin(phi), sin((k+1) phi) = sin(k phi) cos(phi) + cos(k phi)
    sin(phi), so no atan2 or cos is evaluated; otherwise phi itself is used."""
    c = lambda a: jnp.asarray(a, dtype)  # noqa: E731
    b0, b1, b2 = bonds
    n, k, phase = params.torsion_n, params.torsion_k, params.torsion_phase
    if not (np.all(n == np.round(n)) and np.all((n >= 0) & (n <= 6))):
        phi = dihedral_from_vectors(b0, b1, b2)
        return jnp.sum(c(k) * (1 + jnp.cos(c(n) * phi - c(phase))), axis=-1)
    n1, n2 = cross(b0, b1), cross(b1, b2)
    x, y = dot(n1, n2), norm(b1) * dot(b0, n2)
    rho = norm((x, y, jnp.zeros_like(x)))
    safe = jnp.where(rho > 0, rho, 1.0)
    cos1, sin1 = jnp.where(rho > 0, x / safe, 1.0), jnp.where(rho > 0, y / safe, 0.0)
    cos_k, sin_k = [jnp.ones_like(x)], [jnp.zeros_like(x)]
    for _ in range(int(n.max())):
        ck, sk = cos_k[-1], sin_k[-1]
        cos_k.append(ck * cos1 - sk * sin1)
        sin_k.append(sk * cos1 + ck * sin1)
    # cos(n phi - phi0) = cos(n phi) cos(phi0) + sin(n phi) sin(phi0), picked per term by its n
    total = jnp.zeros_like(x)
    for order in np.unique(n).astype(int):
        sel = n == order
        total = total + (c(np.where(sel, k * np.cos(phase), 0.0)) * cos_k[order]
                         + c(np.where(sel, k * np.sin(phase), 0.0)) * sin_k[order])
    return jnp.sum(total, axis=-1) + float(np.sum(k))


def _pair_matrix(n_atoms: int, idx: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Symmetric n_atoms x n_atoms matrix with ``values`` at the pairs ``idx`` (upper triangle only) and 0 elsewhere."""
    m = np.zeros((n_atoms, n_atoms))
    m[idx[:, 0], idx[:, 1]] = values
    return m


def _gb_energy(gb: GBParams, r, eye, dtype):
    """The native GBSAOBCForce's energy from the distance matrices r (B, n, n) (diagonal set to 1; module
    docstring)."""
    c = lambda a: jnp.asarray(a, dtype)  # noqa: E731
    q, orad, srad = c(gb.charge), c(gb.offset_radius), c(gb.scaled_radius)
    rho = orad + DIELECTRIC_OFFSET
    or_i, sr_j = orad[:, None], srad[None, :]
    upper = r + sr_j
    lower = jnp.maximum(or_i, jnp.abs(r - sr_j))
    inv_u, inv_l = 1 / upper, 1 / lower
    term = 0.5 * (inv_l - inv_u + 0.25 * (r - sr_j**2 / r) * (inv_u**2 - inv_l**2) + 0.5 * jnp.log(lower * inv_u) / r)
    term = term + jnp.where(or_i < sr_j - r, 1 / or_i - inv_l, 0.0)
    integral = jnp.sum(jnp.where((~eye) & (upper > or_i), term, 0.0), axis=-1)
    psi = integral * orad
    born = 1 / (1 / orad - jnp.tanh(psi - 0.8 * psi**2 + 4.85 * psi**3) / rho)
    self_e = -0.5 * gb.prefactor * jnp.sum(q**2 / born, axis=-1)
    bb = born[:, :, None] * born[:, None, :]
    r2 = jnp.where(eye, 0.0, r * r)
    f = jnp.sqrt(r2 + bb * jnp.exp(-r2 / (4 * bb)))
    qq = jnp.asarray(np.triu(np.outer(gb.charge, gb.charge), 1), dtype)  # each pair once
    pair_e = -gb.prefactor * jnp.sum(qq / f, axis=(-2, -1))
    return self_e + pair_e + gb.surface * jnp.sum((rho + PROBE_RADIUS) ** 2 * (rho / born) ** 6, axis=-1)


def energy_terms(params: ForceFieldParams, pos: jax.Array) -> dict[str, jax.Array]:
    """Each term's energy (kJ/mol) of a batch of conformations ``pos`` (B, n_atoms, 3) in nm, each ``(B,)``; same
    dtype as ``pos``. Keys: ``bond``, ``angle``, ``torsion``, ``coulomb``, ``lennard_jones``, ``generalized_born``
    (GBSAOBCForce), ``<CustomForceClass>_<k>`` and ``cmap_<k>`` for the k-th custom force / CMAP force read."""
    if pos.ndim != 3 or pos.shape[1:] != (params.n_atoms, 3):
        raise BoltzflowError(f"positions must have shape (B, {params.n_atoms}, 3), got {pos.shape}")
    dtype, n = pos.dtype, params.n_atoms
    c = lambda a: jnp.asarray(a, dtype)  # noqa: E731
    geo = Geometry(pos)
    out = {}
    if len(params.bond_k):
        r = geo.distances(*params.bond_idx.T)
        out["bond"] = jnp.sum(0.5 * c(params.bond_k) * (r - c(params.bond_r0)) ** 2, axis=-1)
    if len(params.angle_k):
        theta = geo.angles(*params.angle_idx.T)
        out["angle"] = jnp.sum(0.5 * c(params.angle_k) * (theta - c(params.angle_theta0)) ** 2, axis=-1)
    if len(params.torsion_k):
        i, j, k, l = params.torsion_idx.T
        out["torsion"] = _torsion_energy(params, [geo.vectors(a, b) for a, b in ((i, j), (j, k), (k, l))], dtype)
    if len(params.pair_qq):
        r, _ = geo.pair_distances()
        qq = c(_pair_matrix(n, params.pair_idx, params.pair_qq))
        sigma = c(_pair_matrix(n, params.pair_idx, params.pair_sigma))
        eps4 = c(_pair_matrix(n, params.pair_idx, params.pair_eps4))
        inv = 1 / r
        s6 = (sigma * inv) ** 6
        out["coulomb"] = jnp.sum(qq * inv, axis=(-2, -1))
        out["lennard_jones"] = jnp.sum(eps4 * (s6 * s6 - s6), axis=(-2, -1))
    if params.gb is not None:
        out["generalized_born"] = _gb_energy(params.gb, *geo.pair_distances(), dtype)
    for k, force in enumerate(params.custom):
        out[f"{force.kind}_{k}"] = custom_energy(force, geo)
    for k, cmap in enumerate(params.cmap):
        out[f"cmap_{k}"] = cmap_energy(cmap, geo)
    return out


def batched_energy(params: ForceFieldParams):
    """``x (B, 3 n_atoms) -> (B,)`` kJ/mol: the total potential energy of a flattened batch, in x's dtype."""
    n_atoms = params.n_atoms

    def fn(x):
        terms = energy_terms(params, x.reshape(x.shape[0], n_atoms, 3))
        return sum(terms.values()) if terms else jnp.zeros(x.shape[:1], x.dtype)

    return fn
