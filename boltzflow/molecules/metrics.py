"""How close a sampler gets to a molecule's Boltzmann distribution, judged on torsion angles (NumPy, outside jit).

Conformations are batches ``(n, 3 N)`` (or ``(n, N, 3)``) of Cartesian positions in nm.

- :func:`dihedral`: the angle of atoms (i, j, k, l) in (-pi, pi], IUPAC sign (as OpenMM and mdtraj), with
  b1 = x_j - x_i, b2 = x_k - x_j, b3 = x_l - x_k: angle = atan2(|b2| b1 . (b2 x b3), (b1 x b2) . (b2 x b3)).
- :func:`named_torsions`: phi, psi, omega, the methyl rotations gamma1, gamma2, ... and every other rotatable
  bond (``torsion C3-C10``), found from the topology, never from fixed indices.
- :func:`histogram_kl`: FAB's histogram KL (Midgley et al. 2023, as fab-torch computes it for the Ramachandran
  plot): densities p (reference), q (model, optionally importance-weighted) from normalised histograms on
  [-pi, pi]^d, KL(p || q) = sum_bins p log((p + eps) / (q + eps)) * bin_area, eps = 1e-10, 100 bins per axis.
- :func:`basin_populations` (alanine dipeptide's phi <= 0 / phi > 0, alpha_R / beta) and :func:`pose_rmsd` (each
  guest's heavy-atom RMSD from its starting pose after superposing the host).

The naming rules, the basins, the poses and the KL's conventions: docs/concepts/free-energies.md.
"""

from __future__ import annotations

from collections import Counter

import jax
import jax.numpy as jnp
import numpy as np

from boltzflow import estimators
from boltzflow.errors import BoltzflowError
from boltzflow.molecules.system import MolecularSystem
from boltzflow.molecules.zmatrix import components, ring_bonds

#: eps of the histogram KL (docs/concepts/free-energies.md), as in FAB's evaluation.
EPS = 1e-10
#: Default bins per axis of the histogram KL.
BINS = 100
#: psi range of the alpha_R basin (phi <= 0), radians: [-120 deg, 50 deg).
ALPHA_R_PSI = (np.deg2rad(-120.0), np.deg2rad(50.0))


# ---------------------------------------------------------------------------------------------------------------
# dihedrals


def _positions(x) -> np.ndarray:
    x = np.asarray(x, np.float64)
    if x.ndim == 1:
        x = x[None]
    if x.ndim == 2:
        if x.shape[1] % 3:
            raise BoltzflowError(f"conformations must have shape (n, 3 n_atoms), got {x.shape}")
        x = x.reshape(x.shape[0], -1, 3)
    if x.ndim != 3 or x.shape[2] != 3:
        raise BoltzflowError(f"conformations must have shape (n, 3 n_atoms) or (n, n_atoms, 3), got {x.shape}")
    return x


def wrap_angle(a) -> np.ndarray:
    """Angles mapped into (-pi, pi] (float64; NaN stays NaN)."""
    a = np.asarray(a, np.float64)
    return np.pi - np.mod(np.pi - a, 2 * np.pi)


def dihedral(x, i: int, j: int, k: int, l: int) -> np.ndarray:  # noqa: E741
    """Dihedral angle of atoms (i, j, k, l) in each conformation of ``x`` ``(n, 3N)``: ``(n,)`` in (-pi, pi].

    NaN where the angle is undefined (three collinear atoms) or the positions are not finite."""
    p = _positions(x)
    n_atoms = p.shape[1]
    if not all(-n_atoms <= a < n_atoms for a in (i, j, k, l)):
        raise BoltzflowError(f"dihedral atoms {(i, j, k, l)} out of range for {n_atoms} atoms")
    b1, b2, b3 = p[:, j] - p[:, i], p[:, k] - p[:, j], p[:, l] - p[:, k]
    n1, n2 = np.cross(b1, b2), np.cross(b2, b3)
    y = np.linalg.norm(b2, axis=1) * np.sum(b1 * n2, axis=1)
    xx = np.sum(n1 * n2, axis=1)
    with np.errstate(invalid="ignore"):
        angle = np.arctan2(y, xx)
        degenerate = (np.linalg.norm(n1, axis=1) == 0) | (np.linalg.norm(n2, axis=1) == 0)
    angle = np.where(degenerate, np.nan, angle)
    return np.where(angle <= -np.pi, np.pi, angle)  # atan2(-0., -1) = -pi belongs to +pi


def torsion_angles(x, torsions: dict) -> dict:
    """``{name: dihedral(x, *atoms)}`` for a dict such as :func:`named_torsions` returns."""
    return {name: dihedral(x, *atoms) for name, atoms in torsions.items()}


def frame_log_jacobian(x, atoms) -> np.ndarray:
    """log(b1^2 b2 sin a) ``(n,)`` (float64) of each conformation of ``x`` ``(n, 3N)``, for the canonical frame of
    ``atoms = (o, a, p)``: o at the origin, a on the +x axis, p in the xy plane (y > 0). With b1 = |x_a - x_o|,
    b2 = |x_p - x_o| and a = angle(a, o, p) (so b2 sin a is p's distance from the o-a axis), it is the Jacobian of

        d^{3N}x = d^3t dR b1^2 b2 sin a d^{3N-6}y,

    x = R Y(y) + t, Y(y) the frame structure from its 3N - 6 free coordinates y (a's x, p's x and y, all of the
    other atoms'), dR the Haar measure normalised to d^3w at the identity (R = exp([w]_x); total 8 pi^2), as
    boltzflow.molecules.zmatrix measures it (derivation: docs/concepts/internal-coordinates.md). A density q(x) in
    boltzflow's convention (q(x) d^{3N}x = q(y) d^{3N-6}y d^3t dR: the Cartesian density of a molecule with uniform
    orientation and unit-density position, :mod:`boltzflow.flows.internal`) is thus, as a density of the frame
    coordinates y (the convention of the FAB paper's alanine dipeptide flow, frame CA, N, C),

        log q_frame(y) = log q(x) + frame_log_jacobian(x, (CA, N, C)),

    with no other constant (with orientations counted as a probability, R ~ Haar / 8 pi^2, log q(x) would be
    lower by log(8 pi^2) = 4.369). Only for a density that is invariant under rigid motions, as that of an
    internal-coordinate flow is; NaN or -inf where the three atoms are collinear or coincide."""
    X = _positions(x)
    o, a, p = atoms
    u, v = X[:, a] - X[:, o], X[:, p] - X[:, o]
    with np.errstate(divide="ignore", invalid="ignore"):
        # log(b1^2 b2 sin a) = log b1 + log |u x v|
        return np.log(np.linalg.norm(u, axis=1)) + np.log(np.linalg.norm(np.cross(u, v), axis=1))


def _angles_of(x, torsions: dict, dim: int, what: str) -> dict:
    """Conformations ``(n, dim)`` as their torsion angles; a dict of angles (one array per torsion) checked."""
    if isinstance(x, dict):
        shapes = {k: np.shape(a) for k, a in x.items()}
        if set(x) != set(torsions) or len(set(shapes.values())) > 1 or any(len(v) != 1 for v in shapes.values()):
            raise BoltzflowError(f"{what}: torsion angles must be one (n,) array for each of {sorted(torsions)}, got "
                                 f"{shapes}")
        return x
    shape = np.shape(x)
    if len(shape) != 2 or shape[1] != dim:
        raise BoltzflowError(f"{what} must have shape (n, {dim}), got {shape}")
    return torsion_angles(x, torsions)


# ---------------------------------------------------------------------------------------------------------------
# named torsions from the topology


def _neighbours(molecule) -> list[set[int]]:
    nb = [set() for _ in range(len(molecule.atom_names))]
    for a, b in np.asarray(molecule.bonds, np.int64).reshape(-1, 2):
        nb[int(a)].add(int(b))
        nb[int(b)].add(int(a))
    return nb


def _numbered(kind: str, quads: list, out: dict) -> None:
    if len(quads) == 1:
        out[kind] = quads[0]
    else:
        for n, q in enumerate(quads, 1):
            out[f"{kind}_{n}"] = q


def residue_suffix(name: str) -> str:
    """The numbering :func:`named_torsions` gives a backbone torsion: ``""`` for the only one (``phi``), ``"_k"`` for
    the k-th (``phi_2``); metrics of residue k carry the same suffix (``phi_positive_2_reweighted``)."""
    number = name.partition("_")[2]
    return f"_{number}" if number else ""


def _backbone(molecule) -> list[tuple[tuple | None, tuple | None]]:
    """(phi, psi) atom quadruples (or None) of each residue that has an N - CA - C backbone, in residue order."""
    names, elements = molecule.atom_names, molecule.elements
    res = np.asarray(molecule.residue_index)
    nb = _neighbours(molecule)
    out = []
    for r in sorted(set(res.tolist())):
        atoms = [a for a in range(len(names)) if res[a] == r]
        n = next((a for a in atoms if names[a] == "N" and elements[a] == "N"), None)
        ca = next((a for a in atoms if names[a] == "CA" and elements[a] == "C"), None)
        if n is None or ca is None or ca not in nb[n]:
            continue
        c = next((a for a in atoms if names[a] == "C" and elements[a] == "C" and a in nb[ca]), None)
        if c is None:
            continue
        c_prev = min((a for a in nb[n] if res[a] != r and elements[a] == "C"), default=None)
        n_next = min((a for a in nb[c] if res[a] != r and elements[a] == "N"), default=None)
        out.append(((c_prev, n, ca, c) if c_prev is not None else None,
                    (n, ca, c, n_next) if n_next is not None else None))
    return out


def _omegas(molecule) -> list[tuple[int, int, int, int]]:
    elements, res = molecule.elements, np.asarray(molecule.residue_index)
    nb = _neighbours(molecule)
    out = []
    for c in range(len(elements)):
        if elements[c] != "C":
            continue
        heavy_o = [a for a in nb[c] if elements[a] == "O" and len(nb[a]) == 1]
        for n in sorted(nb[c]):
            if elements[n] != "N" or res[n] == res[c] or not heavy_o:
                continue
            x = min((a for a in nb[c] if a != n and elements[a] == "C" and res[a] == res[c]), default=None)
            y = min((a for a in nb[n] if a != c and elements[a] == "C" and res[a] == res[n]), default=None)
            if x is not None and y is not None:
                out.append((x, c, n, y))
    return sorted(out, key=lambda q: (q[1], q[2]))


def _methyls(molecule) -> list[tuple[int, int, int, int]]:
    elements = molecule.elements
    nb = _neighbours(molecule)

    def heavy(a):
        return sorted(b for b in nb[a] if elements[b] != "H")

    out = []
    for c in range(len(elements)):
        hs = sorted(b for b in nb[c] if elements[b] == "H")
        if elements[c] != "C" or len(hs) != 3 or len(heavy(c)) != 1:
            continue
        x = heavy(c)[0]
        beyond = [y for y in heavy(x) if y != c]
        inner = [y for y in beyond if any(z != x for z in heavy(y))]
        if beyond:
            out.append((hs[0], c, x, (inner or beyond)[0]))
    return out


def _rotatable(molecule, axes: set[tuple[int, int]]) -> dict[str, tuple[int, int, int, int]]:
    """``torsion <j>-<k>`` of each rotatable bond whose axis is not in ``axes`` (docs/concepts/free-energies.md)."""
    names, elements = molecule.atom_names, molecule.elements
    res = np.asarray(molecule.residue_index).tolist()
    res_names = getattr(molecule, "residue_names", None)
    nb = _neighbours(molecule)
    several = len(set(res)) > 1

    def first(a, other):
        return min((b for b in nb[a] if b != other), key=lambda b: (elements[b] == "H", b))

    number = {r: n for n, r in enumerate(sorted(set(res)), 1)}

    def residue(a):
        return f"{res_names[a] if res_names is not None else ''}{number[res[a]]}"

    rings = ring_bonds(len(molecule.atom_names), molecule.bonds)
    bonds = sorted({(min(j, k), max(j, k)) for j, k in np.asarray(molecule.bonds).tolist()} - rings)
    quads = [(first(j, k), j, k, first(k, j)) for j, k in bonds
             if len(nb[j]) > 1 and len(nb[k]) > 1 and (j, k) not in axes]
    labels = []
    for _, j, k, _ in quads:
        if not several:
            labels.append(f"torsion {names[j]}-{names[k]}")
        elif res[j] == res[k]:
            labels.append(f"torsion {residue(j)}:{names[j]}-{names[k]}")
        else:
            labels.append(f"torsion {residue(j)}:{names[j]}-{residue(k)}:{names[k]}")
    count = Counter(labels)
    return {(f"{lab} [{q[1]}-{q[2]}]" if count[lab] > 1 else lab): q for lab, q in zip(labels, quads)}


def named_torsions(molecule: MolecularSystem) -> dict[str, tuple[int, int, int, int]]:
    """Backbone phi / psi / omega, methyl rotations gamma1, gamma2, ... and the other rotatable bonds' torsions
    (``torsion C3-C10``, ...) found from the topology (the rules: docs/concepts/free-energies.md). Works on anything
    with ``atom_names``, ``elements``, ``residue_index`` and ``bonds`` (and ``residue_names`` for the residues in the
    names)."""
    out: dict[str, tuple[int, int, int, int]] = {}
    bb = _backbone(molecule)
    _numbered("phi", [p for p, _ in bb if p is not None], out)
    _numbered("psi", [s for _, s in bb if s is not None], out)
    _numbered("omega", _omegas(molecule), out)
    for n, q in enumerate(_methyls(molecule), 1):
        out[f"gamma{n}"] = q
    out.update(_rotatable(molecule, {(min(q[1], q[2]), max(q[1], q[2])) for q in out.values()}))
    return {k: tuple(int(a) for a in v) for k, v in out.items()}


def ramachandran_pairs(molecule: MolecularSystem) -> list[tuple[str, str]]:
    """(phi name, psi name) in :func:`named_torsions` for each residue that has both, in residue order."""
    names = named_torsions(molecule)
    by_atoms = {v: k for k, v in names.items()}
    return [(by_atoms[p], by_atoms[s]) for p, s in _backbone(molecule) if p is not None and s is not None]


# ---------------------------------------------------------------------------------------------------------------
# weights and histograms


#: RMSD (nm) within which a molecule is in its starting pose (docs/concepts/free-energies.md).
POSE_RMSD = 0.2


def pose_rmsd(x, molecule: MolecularSystem) -> np.ndarray:
    """``(n, C - 1)`` heavy-atom RMSD (nm) of each molecule but the largest from its starting pose, after the largest
    is superposed on the starting structure (docs/concepts/free-energies.md); ``(n, 0)`` for one molecule.

    Example:
        >>> in_pose = pose_rmsd(x, molecule) <= POSE_RMSD  # doctest: +SKIP
    """
    X = _positions(x)
    comp = components(molecule.n_atoms, molecule.bonds)
    heavy = np.asarray([e != "H" for e in molecule.elements])
    host = int(np.argmax(np.bincount(comp)))
    fit = np.flatnonzero((comp == host) & heavy)
    ref = np.asarray(molecule.positions, np.float64)
    p_mean, q_mean = X[:, fit].mean(axis=1, keepdims=True), ref[fit].mean(axis=0)
    h = np.einsum("nmi,mj->nij", X[:, fit] - p_mean, ref[fit] - q_mean)
    u, _, vt = np.linalg.svd(h)
    flip = np.sign(np.linalg.det(np.einsum("nji,nkj->nik", vt, u)))  # det(V U^T): no reflection
    d = np.ones((len(X), 3))
    d[:, 2] = flip
    rot = np.einsum("nji,nj,nkj->nik", vt, d, u)  # R = V diag(1, 1, det) U^T maps centred X onto the reference
    moved = np.einsum("nij,naj->nai", rot, X - p_mean) + q_mean
    out = [np.sqrt(np.mean(np.sum((moved[:, a] - ref[a]) ** 2, axis=-1), axis=1))
           for a in (np.flatnonzero((comp == c) & heavy) for c in np.unique(comp) if c != host)]
    return np.stack(out, axis=1) if out else np.zeros((len(X), 0))


def normalised_weights(log_w, n: int | None = None) -> np.ndarray | None:
    """Self-normalised weights W (summing to 1) from log weights, non-finite ones as 0, by
    :func:`boltzflow.estimators.normalised_weights` in float64; all zeros if no weight is finite; None if ``log_w``
    is None."""
    if log_w is None:
        return None
    lw = np.asarray(log_w, np.float64).reshape(-1)
    if n is not None and lw.shape[0] != n:
        raise BoltzflowError(f"{lw.shape[0]} log weights for {n} samples")
    with jax.enable_x64(True):  # the estimators' rule, in float64
        return np.asarray(estimators.normalised_weights(jnp.asarray(lw, jnp.float64)), np.float64)


def _angles(a, d: int, what: str) -> np.ndarray:
    a = np.asarray(a, np.float64)
    if d == 1:
        a = a.reshape(-1, 1) if a.ndim <= 1 else a
    if a.ndim != 2 or a.shape[1] != d:
        raise BoltzflowError(f"{what} must have shape {'(n,)' if d == 1 else f'(n, {d})'}, got {a.shape}")
    return a


def angle_density(angles, log_w=None, bins: int = BINS) -> np.ndarray | None:
    """Normalised histogram (a density over [-pi, pi]^d, d = 1 for ``(n,)`` angles, 2 for ``(n, 2)``), weighted by
    exp(log_w) if given; None when there is no sample with positive weight."""
    a = np.asarray(angles, np.float64)
    a = _angles(a, 1 if a.ndim <= 1 else a.shape[1], "angles")
    d = a.shape[1]
    w = normalised_weights(log_w, a.shape[0])
    if w is None:
        w = np.ones(a.shape[0])
    ok = np.all(np.isfinite(a), axis=1) & (w > 0)
    if not ok.any():
        return None
    a, w = wrap_angle(a[ok]), w[ok]
    counts, _ = np.histogramdd(a, bins=[bins] * d, range=[(-np.pi, np.pi)] * d, weights=w)
    return counts / (counts.sum() * (2 * np.pi / bins) ** d)


def histogram_kl(ref_angles, model_angles, model_log_w=None, bins: int = BINS, eps: float = EPS) -> float:
    """The histogram KL (module docstring) between histograms of ``(n,)`` angles (1-D) or ``(n, d)`` angle tuples;
    NaN if either is empty."""
    p = angle_density(ref_angles, None, bins)
    q = angle_density(model_angles, model_log_w, bins)
    if p is None or q is None:
        return float("nan")
    if p.shape != q.shape:
        raise BoltzflowError(f"reference and model angles differ in dimension: {p.ndim} and {q.ndim}")
    return float(np.sum(p * np.log((p + eps) / (q + eps))) * (2 * np.pi / bins) ** p.ndim)


def torsion_kl(ref_angles, model_angles, model_log_w=None, bins: int = BINS) -> float:
    """The histogram KL of a 1-D torsion marginal: reference angles ``(n,)`` against model angles ``(m,)`` (optionally
    weighted by ``model_log_w`` ``(m,)``)."""
    return histogram_kl(_angles(ref_angles, 1, "ref_angles"), _angles(model_angles, 1, "model_angles"),
                        model_log_w, bins)


def ramachandran_kl(ref_phi_psi, model_phi_psi, model_log_w=None, bins: int = BINS) -> float:
    """The histogram KL of the Ramachandran plot: reference ``(n, 2)`` (phi, psi) against model ``(m, 2)`` (optionally
    weighted by ``model_log_w`` ``(m,)``), ``bins`` x ``bins`` bins."""
    return histogram_kl(_angles(ref_phi_psi, 2, "ref_phi_psi"), _angles(model_phi_psi, 2, "model_phi_psi"),
                        model_log_w, bins)


def molecular_metrics(molecule: MolecularSystem, ref_x, model_x, model_log_w=None, bins: int = BINS) -> dict:
    """Histogram KLs (module docstring) of every named torsion's marginal (``kl_<name>``) and of each Ramachandran plot
    (``kl_ramachandran``, or ``kl_ramachandran_1``, ... for several residues) between reference conformations
    ``ref_x`` ``(n, 3N)`` and model conformations ``model_x`` ``(m, 3N)``; with ``model_log_w`` ``(m,)`` also the
    reweighted ones (``..._reweighted``). Floats, NaN where undefined. Either set may instead be given as its
    torsion angles, the dict :func:`torsion_angles` returns for :func:`named_torsions` (how an evaluation keeps
    millions of samples: 7 angles each instead of 3N coordinates)."""
    torsions = named_torsions(molecule)
    ref, model = (_angles_of(x, torsions, 3 * len(molecule.atom_names), what)
                  for what, x in (("ref_x", ref_x), ("model_x", model_x)))
    if model_log_w is not None and model:
        normalised_weights(model_log_w, len(next(iter(model.values()))))  # shape check
    variants = [("", None)] + ([("_reweighted", model_log_w)] if model_log_w is not None else [])
    out = {}
    for name in torsions:
        for suffix, lw in variants:
            out[f"kl_{name}{suffix}"] = torsion_kl(ref[name], model[name], lw, bins)
    pairs = ramachandran_pairs(molecule)
    for n, (phi, psi) in enumerate(pairs, 1):
        key = "kl_ramachandran" if len(pairs) == 1 else f"kl_ramachandran_{n}"
        for suffix, lw in variants:
            out[key + suffix] = ramachandran_kl(np.stack([ref[phi], ref[psi]], 1),
                                                np.stack([model[phi], model[psi]], 1), lw, bins)
    return out


# ---------------------------------------------------------------------------------------------------------------
# basins and block averages


def basin_populations(phi, psi, log_w=None, alpha_r_psi: tuple[float, float] = ALPHA_R_PSI) -> dict:
    """Fractions of (weighted) mass in alanine dipeptide's Ramachandran basins (docs/concepts/free-energies.md):
    ``phi_negative``, ``phi_positive`` (the two sum to 1), ``alpha_R`` and ``beta`` (the two sum to
    ``phi_negative``), each with ``<basin>_se``, the self-normalised standard error sqrt(sum W_i^2 (1_i - p)^2)
    (for independent samples; for a correlated chain use :func:`block_standard_error` on the indicators).
    Samples with a non-finite angle or weight count as weight 0. NaN everywhere if no weight is positive."""
    phi, psi = np.asarray(phi, np.float64).reshape(-1), np.asarray(psi, np.float64).reshape(-1)
    if phi.shape != psi.shape:
        raise BoltzflowError(f"phi and psi differ in length: {phi.shape[0]} and {psi.shape[0]}")
    w = normalised_weights(log_w, phi.shape[0])
    w = np.ones_like(phi) if w is None else w
    w = np.where(np.isfinite(phi) & np.isfinite(psi), w, 0.0)
    total = w.sum()
    phi, psi = wrap_angle(np.nan_to_num(phi)), wrap_angle(np.nan_to_num(psi))
    lo, hi = alpha_r_psi
    neg = phi <= 0
    alpha = neg & (psi >= lo) & (psi < hi)
    regions = {"phi_negative": neg, "phi_positive": ~neg, "alpha_R": alpha, "beta": neg & ~alpha}
    out = {}
    for name, ind in regions.items():
        if total <= 0:
            out[name], out[name + "_se"] = float("nan"), float("nan")
            continue
        W = w / total
        p = float(np.sum(W * ind))
        out[name] = p
        out[name + "_se"] = float(np.sqrt(np.sum(W**2 * (ind - p) ** 2)))
    return out


def block_standard_error(values, n_blocks: int = 20) -> float:
    """Standard error of the mean of a time series (e.g. an MCMC chain) by block averaging: the series is cut into
    ``n_blocks`` contiguous blocks of equal length (the first len % n_blocks values dropped) and

        se = std(block means, ddof=1) / sqrt(n_blocks),

    valid when blocks are longer than the autocorrelation time. Non-finite values are an error; NaN if the series
    has fewer values than blocks or ``n_blocks`` < 2."""
    v = np.asarray(values, np.float64).reshape(-1)
    if not np.all(np.isfinite(v)):
        raise BoltzflowError("block_standard_error: values must be finite")
    n_blocks = int(n_blocks)
    if n_blocks < 2 or v.shape[0] < n_blocks:
        return float("nan")
    size = v.shape[0] // n_blocks
    means = v[v.shape[0] - size * n_blocks:].reshape(n_blocks, size).mean(axis=1)
    return float(np.std(means, ddof=1) / np.sqrt(n_blocks))
