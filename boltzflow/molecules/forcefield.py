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
- Generalized Born with the OBC Born radii (Onufriev, Bashford & Case 2004), in either of OpenMM's two forms:

  * the ``CustomGBForce`` that ``openmm.app`` builds for ``implicitSolvent=OBC1`` or ``OBC2`` (recognised by
    rebuilding OpenMM's own template with the same dielectrics and comparing every expression; anything else is
    refused). Per particle: charge q, offset radius or = rho - 0.009 and scaled offset radius sr = s * or.
    Born-radius integral over ordered pairs (i, j), j != i (asymmetric in i and j):

        I_i = sum_j  [r + sr_j > or_i] 1/2 (1/L - 1/U + (r - sr_j^2 / r) (1/U^2 - 1/L^2) / 4 + log(L/U) / (2 r)),
        U = r + sr_j,  L = max(or_i, |r - sr_j|),

        psi_i = I_i or_i,   B_i = 1 / (1/or_i - tanh(a psi_i - b psi_i^2 + c psi_i^3) / rho_i),
        (a, b, c) = (0.8, 0, 2.909125) for OBC1 (Amber igb = 2) and (1, 0.8, 4.85) for OBC2 (igb = 5);

    energy (C_gb = 138.935485, the constant OpenMM writes into these expressions):

        - 1/2 C_gb (1/eps_in - 1/eps_out) sum_i q_i^2 / B_i
        - C_gb (1/eps_in - 1/eps_out) sum_{i<j} q_i q_j / sqrt(r^2 + B_i B_j exp(-r^2 / (4 B_i B_j)))
        + 28.3919551 sum_i (rho_i + 0.14)^2 (rho_i / B_i)^6          (ACE surface term, if present)

  * the native ``GBSAOBCForce`` (OBC2 constants, the same integral plus the Tinker term 2 (1/or_i - 1/L) when
    atom i lies inside the scaled sphere of j, C_nb as the constant, surface term 4 pi gamma (rho + 0.14)^2
    (rho / B)^6 with gamma = getSurfaceAreaEnergy()).

A force this module does not know (or a NonbondedForce with a cutoff, a periodic box, parameter offsets) raises a
one-line :class:`BoltzflowError` naming it; ``CMMotionRemover`` has no energy and is skipped.

Gradients come from autodiff. Distances use the "double where" so that the gradient is finite even where two atoms
coincide (the energy there is infinite, and the target maps it to log p = -inf).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import jax
import jax.numpy as jnp
import numpy as np

from boltzflow.errors import BoltzflowError

#: OpenMM's 1 / (4 pi eps_0) in kJ nm / (mol e^2), used by NonbondedForce and GBSAOBCForce.
COULOMB_NONBONDED = 138.93545764438198
#: The constant openmm.app writes into its CustomGBForce expressions.
COULOMB_GB = 138.935485
#: OpenMM's dielectric offset and probe radius (nm) for OBC.
DIELECTRIC_OFFSET = 0.009
PROBE_RADIUS = 0.14
OBC_CONSTANTS = {"OBC1": (0.8, 0.0, 2.909125), "OBC2": (1.0, 0.8, 4.85)}


@dataclass(frozen=True, eq=False)
class GBParams:
    """OBC generalized Born parameters (module docstring)."""

    charge: np.ndarray
    offset_radius: np.ndarray  # or = rho - 0.009
    scaled_radius: np.ndarray  # sr = s * or
    alpha: float
    beta: float
    gamma: float
    prefactor: float  # C (1/eps_in - 1/eps_out)
    surface: float  # coefficient of (rho + 0.14)^2 (rho / B)^6; 0 if no surface term
    tinker_interior: bool  # GBSAOBCForce adds 2 (1/or - 1/L) when atom i is inside j's scaled sphere


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


def _signature(f):
    """Every expression and computation type of a CustomGBForce, for comparison with OpenMM's templates."""
    cv = tuple(tuple(f.getComputedValueParameters(i)) for i in range(f.getNumComputedValues()))
    en = tuple(tuple(f.getEnergyTermParameters(i)) for i in range(f.getNumEnergyTerms()))
    pp = tuple(f.getPerParticleParameterName(i) for i in range(f.getNumPerParticleParameters()))
    return pp, cv, en


def _custom_gb(f, u, n_atoms: int) -> GBParams:
    from openmm.app.internal import customgbforces

    if f.getNumEnergyTerms() == 0:
        raise BoltzflowError("CustomGBForce without energy terms is not supported by the jax engine")
    text = f.getEnergyTermParameters(0)[0]
    diel = {name: float(m.group(1)) for name in ("solventDielectric", "soluteDielectric")
            if (m := re.search(name + r"=([-+0-9.eE]+)", text))}
    if len(diel) != 2 or f.getNumGlobalParameters() or f.getNumTabulatedFunctions() or f.getNumExclusions():
        raise BoltzflowError("this CustomGBForce is not one boltzflow's jax engine knows (it supports the OBC1 / "
                             "OBC2 forms openmm.app builds); use engine: openmm")
    sig = _signature(f)
    for model, cls in (("OBC1", customgbforces.GBSAOBC1Force), ("OBC2", customgbforces.GBSAOBC2Force)):
        for sa in (None, "ACE"):
            ref = cls(solventDielectric=diel["solventDielectric"], soluteDielectric=diel["soluteDielectric"], SA=sa,
                      cutoff=None, kappa=0.0)
            if _signature(ref) != sig:
                continue
            rows = np.asarray([f.getParticleParameters(i) for i in range(n_atoms)], np.float64)
            a, b, c = OBC_CONSTANTS[model]
            return GBParams(charge=rows[:, 0], offset_radius=rows[:, 1], scaled_radius=rows[:, 2], alpha=a, beta=b,
                            gamma=c, prefactor=COULOMB_GB * (1 / diel["soluteDielectric"] - 1 / diel["solventDielectric"]),
                            surface=28.3919551 if sa else 0.0, tinker_interior=False)
    raise BoltzflowError("this CustomGBForce is not one boltzflow's jax engine knows (it supports the OBC1 / OBC2 "
                         "forms openmm.app builds, no salt, no cutoff); use engine: openmm")


def _obc_force(f, u, n_atoms: int) -> GBParams:
    openmm = _openmm()
    if f.getNonbondedMethod() != openmm.GBSAOBCForce.NoCutoff:
        raise BoltzflowError("GBSAOBCForce with a cutoff is not supported by the jax engine (use engine: openmm)")
    rows = [f.getParticleParameters(i) for i in range(n_atoms)]
    q = np.asarray([_value(r[0], u.elementary_charge) for r in rows])
    rho = np.asarray([_value(r[1], u.nanometer) for r in rows])
    s = np.asarray([float(r[2]) for r in rows])
    a, b, c = OBC_CONSTANTS["OBC2"]
    gamma_sa = _value(f.getSurfaceAreaEnergy(), u.kilojoule_per_mole / u.nanometer**2)
    return GBParams(charge=q, offset_radius=rho - DIELECTRIC_OFFSET, scaled_radius=s * (rho - DIELECTRIC_OFFSET),
                    alpha=a, beta=b, gamma=c,
                    prefactor=COULOMB_NONBONDED * (1 / f.getSoluteDielectric() - 1 / f.getSolventDielectric()),
                    surface=4 * np.pi * gamma_sa, tinker_interior=True)


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
    parts, gb, names = {}, None, []
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
        elif isinstance(f, (openmm.CustomGBForce, openmm.GBSAOBCForce)):
            if gb is not None:
                raise BoltzflowError("a System with two generalized Born forces is not supported by the jax engine")
            gb = _custom_gb(f, u, n) if isinstance(f, openmm.CustomGBForce) else _obc_force(f, u, n)
            continue
        else:
            raise BoltzflowError(f"the jax engine does not support {name} (supported: HarmonicBondForce, "
                                 "HarmonicAngleForce, PeriodicTorsionForce, NonbondedForce, OBC CustomGBForce, "
                                 "GBSAOBCForce); use engine: openmm")
        for k, v in new.items():
            concat.setdefault(k, []).append(v)
    for k, v in empty.items():
        parts[k] = np.concatenate(concat[k]) if k in concat else v
    return ForceFieldParams(n_atoms=n, gb=gb, forces=tuple(names), **parts)


# ----------------------------------------------------------------------------------------------- energy terms
#
# Everything works on a batch (B, n_atoms, 3). Bond vectors are taken with small incidence matrices
# (x_j - x_i = (e_j - e_i)^T X) rather than gathers: on a CPU the matmul and its transpose (the gradient) are several
# times faster than a gather and its scatter-add. Pair terms use the dense n_atoms x n_atoms distance matrix with
# parameter matrices that are zero where a pair does not interact.


def _norm(v):
    """|v| of a vector given as its three components (each (B, ...)), with a finite gradient at v = 0 (the "double
    where")."""
    sq = v[0] * v[0] + v[1] * v[1] + v[2] * v[2]
    safe = jnp.where(sq > 0, sq, 1.0)
    return jnp.where(sq > 0, jnp.sqrt(safe), 0.0)


def _dot(u, v):
    return u[0] * v[0] + u[1] * v[1] + u[2] * v[2]


def _cross(u, v):
    return (u[1] * v[2] - u[2] * v[1], u[2] * v[0] - u[0] * v[2], u[0] * v[1] - u[1] * v[0])


def _incidence(n_atoms: int, tail: np.ndarray, head: np.ndarray) -> np.ndarray:
    """(m, n_atoms) matrix whose row t maps positions to x[head_t] - x[tail_t]."""
    m = np.zeros((len(tail), n_atoms))
    m[np.arange(len(tail)), head] += 1.0
    m[np.arange(len(tail)), tail] -= 1.0
    return m


def _vectors(matrix: np.ndarray, xyz: jax.Array):
    """Bond vectors as three component arrays (B, m), from coordinates laid out (3, B, n_atoms)."""
    v = jnp.einsum("mk,cbk->cbm", jnp.asarray(matrix, xyz.dtype), xyz)
    return v[0], v[1], v[2]


def _angle_from_vectors(u, v):
    """Angle between u and v in [0, pi], by atan2(|u x v|, u . v) (accurate near 0 and pi)."""
    return jnp.arctan2(_norm(_cross(u, v)), _dot(u, v))


def _dihedral_from_vectors(b0, b1, b2):
    """IUPAC dihedral from the bond vectors b0 = b - a, b1 = c - b, b2 = d - c, in (-pi, pi] (OpenMM's sign)."""
    n1, n2 = _cross(b0, b1), _cross(b1, b2)
    return jnp.arctan2(_norm(b1) * _dot(b0, n2), _dot(n1, n2))


def _torsion_energy(params: ForceFieldParams, bonds, dtype):
    """sum_t k_t (1 + cos(n_t phi_t - phi0_t)). For integer periodicities n <= 6 (every Amber / CHARMM torsion) the
    cosines come from cos(phi) = x / rho, sin(phi) = y / rho (phi = atan2(y, x)) and the angle-addition recurrence
    cos((k+1) phi) = cos(k phi) cos(phi) - sin(k phi) sin(phi), sin((k+1) phi) = sin(k phi) cos(phi) + cos(k phi)
    sin(phi), so no atan2 or cos is evaluated; otherwise phi itself is used."""
    c = lambda a: jnp.asarray(a, dtype)  # noqa: E731
    b0, b1, b2 = bonds
    n, k, phase = params.torsion_n, params.torsion_k, params.torsion_phase
    if not (np.all(n == np.round(n)) and np.all((n >= 0) & (n <= 6))):
        phi = _dihedral_from_vectors(b0, b1, b2)
        return jnp.sum(c(k) * (1 + jnp.cos(c(n) * phi - c(phase))), axis=-1)
    n1, n2 = _cross(b0, b1), _cross(b1, b2)
    x, y = _dot(n1, n2), _norm(b1) * _dot(b0, n2)
    rho = _norm((x, y, jnp.zeros_like(x)))
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
    """OBC generalized Born energy from the distance matrices r (B, n, n) (diagonal set to 1; module docstring)."""
    c = lambda a: jnp.asarray(a, dtype)  # noqa: E731
    q, orad, srad = c(gb.charge), c(gb.offset_radius), c(gb.scaled_radius)
    rho = orad + DIELECTRIC_OFFSET
    or_i, sr_j = orad[:, None], srad[None, :]
    upper = r + sr_j
    lower = jnp.maximum(or_i, jnp.abs(r - sr_j))
    inv_u, inv_l = 1 / upper, 1 / lower
    term = 0.5 * (inv_l - inv_u + 0.25 * (r - sr_j**2 / r) * (inv_u**2 - inv_l**2) + 0.5 * jnp.log(lower * inv_u) / r)
    if gb.tinker_interior:
        term = term + jnp.where(or_i < sr_j - r, 1 / or_i - inv_l, 0.0)
    integral = jnp.sum(jnp.where((~eye) & (upper > or_i), term, 0.0), axis=-1)
    psi = integral * orad
    born = 1 / (1 / orad - jnp.tanh(gb.alpha * psi - gb.beta * psi**2 + gb.gamma * psi**3) / rho)
    self_e = -0.5 * gb.prefactor * jnp.sum(q**2 / born, axis=-1)
    bb = born[:, :, None] * born[:, None, :]
    r2 = jnp.where(eye, 0.0, r * r)
    f = jnp.sqrt(r2 + bb * jnp.exp(-r2 / (4 * bb)))
    qq = jnp.asarray(np.triu(np.outer(gb.charge, gb.charge), 1), dtype)  # each pair once
    pair_e = -gb.prefactor * jnp.sum(qq / f, axis=(-2, -1))
    out = self_e + pair_e
    if gb.surface:
        out = out + gb.surface * jnp.sum((rho + PROBE_RADIUS) ** 2 * (rho / born) ** 6, axis=-1)
    return out


def energy_terms(params: ForceFieldParams, pos: jax.Array) -> dict[str, jax.Array]:
    """Each term's energy (kJ/mol) of a batch of conformations ``pos`` (B, n_atoms, 3) in nm, each ``(B,)``; same
    dtype as ``pos``."""
    if pos.ndim != 3 or pos.shape[1:] != (params.n_atoms, 3):
        raise BoltzflowError(f"positions must have shape (B, {params.n_atoms}, 3), got {pos.shape}")
    dtype, n = pos.dtype, params.n_atoms
    c = lambda a: jnp.asarray(a, dtype)  # noqa: E731
    xyz = jnp.moveaxis(pos, -1, 0)  # (3, B, n): elementwise work vectorises along atoms and pairs, not along xyz
    out = {}
    if len(params.bond_k):
        r = _norm(_vectors(_incidence(n, *params.bond_idx.T), xyz))
        out["bond"] = jnp.sum(0.5 * c(params.bond_k) * (r - c(params.bond_r0)) ** 2, axis=-1)
    if len(params.angle_k):
        i, j, k = params.angle_idx.T
        u, v = _vectors(_incidence(n, j, i), xyz), _vectors(_incidence(n, j, k), xyz)
        theta = _angle_from_vectors(u, v)
        out["angle"] = jnp.sum(0.5 * c(params.angle_k) * (theta - c(params.angle_theta0)) ** 2, axis=-1)
    if len(params.torsion_k):
        i, j, k, l = params.torsion_idx.T
        bonds = [_vectors(_incidence(n, a, b), xyz) for a, b in ((i, j), (j, k), (k, l))]
        out["torsion"] = _torsion_energy(params, bonds, dtype)
    if len(params.pair_qq) or params.gb is not None:
        eye = jnp.eye(n, dtype=bool)
        diff = [jnp.where(eye, 1.0, comp[:, :, None] - comp[:, None, :]) for comp in xyz]
        r = jnp.where(eye, 1.0, _norm(diff))  # (B, n, n); the diagonal is 1 and masked in every use
    if len(params.pair_qq):
        qq = c(_pair_matrix(n, params.pair_idx, params.pair_qq))
        sigma = c(_pair_matrix(n, params.pair_idx, params.pair_sigma))
        eps4 = c(_pair_matrix(n, params.pair_idx, params.pair_eps4))
        inv = 1 / r
        s6 = (sigma * inv) ** 6
        out["coulomb"] = jnp.sum(qq * inv, axis=(-2, -1))
        out["lennard_jones"] = jnp.sum(eps4 * (s6 * s6 - s6), axis=(-2, -1))
    if params.gb is not None:
        out["generalized_born"] = _gb_energy(params.gb, r, eye, dtype)
    return out


def batched_energy(params: ForceFieldParams):
    """``x (B, 3 n_atoms) -> (B,)`` kJ/mol: the total potential energy of a flattened batch, in x's dtype."""
    n_atoms = params.n_atoms

    def fn(x):
        terms = energy_terms(params, x.reshape(x.shape[0], n_atoms, 3))
        return sum(terms.values()) if terms else jnp.zeros(x.shape[:1], x.dtype)

    return fn
