"""Free energies from importance-weighted samples of a molecule: a surface over two collective variables, and
differences between states, each with bootstrap standard errors (NumPy, outside jit).

**Collective variables** (CVs) of conformations x ``(n, 3N)`` in nm, by atom indices (0-based):

- 4 atoms (i, j, k, l): the dihedral angle of :mod:`boltzflow.molecules.metrics`, in degrees in (-180, 180],
  periodic;
- 2 atoms (i, j): the distance |x_j - x_i| in nm.

A CV is named by one of the molecule's named torsions (``phi``, ``psi``, ...: metrics.named_torsions) or given by
its atoms (``(4, 6, 8, 14)``, or the string ``"4,6,8,14"``).

**Weights.** Samples x_i with log weights log w_i = log p(x_i) - log q(x_i) + c (any constant c; non-finite: weight
0), and those with a non-finite CV value left out (weight 0), are self-normalised:

    W_i = w_i / sum_j w_j.

**Probabilities and free energies** of a region A of CV space (a histogram bin, a state), kT in kJ/mol:

    P(A) = sum_i W_i 1[cv(x_i) in A],
    F(A) = -kT log P(A),
    Delta F_ij = F(A_i) - F(A_j) = -kT log(P(A_i) / P(A_j)).

The surface is F over the bins of a regular grid in two CVs (torsions: [-180, 180]; distances: the range of the
weighted samples), shifted so that its minimum is 0 (+inf in an empty bin). States are boxes, one interval
(lo, hi] per CV (a CV not named: all of it); for a torsion, lo >= hi wraps through 180 (psi in (50, -120] is psi > 50
or psi <= -120).

**Standard errors** by the bootstrap: replicate r = 1..B draws n indices uniformly with replacement (from an
explicit key: replicate r uses ``jax.random.fold_in(key, r)``), recomputes W, P, F and Delta F on the weighted
samples so drawn, and

    se = std_r(estimate_r)  (ddof = 1).

It includes the variance of the weights (to first order se(F) = kT se(P) / P, with se(P) = sqrt(sum_i W_i^2
(1_i - P)^2) the delta-method error of the ratio P: boltzflow.estimators) and of the normalisation, and assumes
independent samples, as a flow's are. Correlated ones (MD) take a block bootstrap: each replicate draws G blocks of
samples (contiguous stretches of time, :func:`time_blocks`) with replacement instead of n samples, which holds
while blocks are longer than the correlation time. The surface's se is that of -kT log P(bin), F before the shift
(the shift's own uncertainty is not in it); it is +inf where some replicate leaves the bin empty (too few samples
there for an error bar) and NaN in an empty bin. The same key gives the same replicates to the surface and the
states. Derivations: docs/concepts/free-energies.md.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

import jax
import numpy as np

from boltzflow.errors import BoltzflowError
from boltzflow.molecules.metrics import dihedral, named_torsions, normalised_weights, residue_suffix, wrap_angle
from boltzflow.molecules.system import MolecularSystem

#: Bootstrap replicates by default: the standard error itself is then known to about 1 / sqrt(2 B) = 5 %.
N_BOOTSTRAP = 200
#: Blocks of the block bootstrap of MD samples (:func:`time_blocks`), as metrics.block_standard_error's.
N_BLOCKS = 20
#: Bins per CV of the surface by default (6 degrees for a torsion).
BINS = 60
#: Alanine dipeptide's conformational states in (phi, psi), degrees, as boxes (lo, hi]: C7eq (with beta and PII)
#: and alpha_R split phi <= 0 at psi = -120 and 50 (the low-density gaps, as metrics.basin_populations), and
#: phi > 0 as one state, C7ax with alpha_L (0.3 % of the 300 K reference, too few samples to split).
ALANINE_DIPEPTIDE_STATES = {
    "C7eq": {"phi": (-180.0, 0.0), "psi": (50.0, -120.0)},
    "alpha_R": {"phi": (-180.0, 0.0), "psi": (-120.0, 50.0)},
    "C7ax_alpha_L": {"phi": (0.0, 180.0)},
}


def backbone_states(names: Sequence[str]) -> dict:
    """:data:`ALANINE_DIPEPTIDE_STATES` for a residue's backbone torsions ``(phi_k, psi_k)`` (or ``(phi, psi)``),
    the same boxes with the CVs renamed; ``{}`` for any other pair of CVs."""
    if len(names) != 2:
        return {}
    phi, psi = names
    if not (phi.partition("_")[0] == "phi" and psi.partition("_")[0] == "psi"
            and residue_suffix(phi) == residue_suffix(psi)):
        return {}
    rename = {"phi": phi, "psi": psi}
    return {state: {rename[cv]: box for cv, box in boxes.items()} for state, boxes in ALANINE_DIPEPTIDE_STATES.items()}


def collective_variables(molecule: MolecularSystem, specs: Sequence) -> dict[str, tuple[int, ...]]:
    """CVs by name or atoms (module docstring) as ``{name: atoms}``.

    Args:
        molecule: the molecule (for its named torsions and atom count).
        specs: each a named torsion (``"phi"``), a tuple of 2 or 4 atom indices, or such indices as ``"4,6,8,14"``.

    Returns:
        ``{name: atoms}`` in the order given; CVs given by atoms are named ``torsion(i,j,k,l)`` or
        ``distance(i,j)``.

    Example:
        >>> collective_variables(target.molecule, ["phi", "psi", "1,14"])     # target: bf.make_target("aldp_implicit")
        {'phi': (4, 6, 8, 14), 'psi': (6, 8, 14, 16), 'distance(1,14)': (1, 14)}
    """
    named = named_torsions(molecule)
    out = {}
    for spec in specs:
        if isinstance(spec, str) and spec in named:
            out[spec] = named[spec]
            continue
        try:
            atoms = tuple(int(a) for a in (spec.split(",") if isinstance(spec, str) else spec))
        except (TypeError, ValueError):
            raise BoltzflowError(f"collective variable {spec!r}: not a named torsion of {molecule.name} "
                                 f"({', '.join(named) or 'none'}) nor 2 or 4 atom indices") from None
        if len(atoms) not in (2, 4) or not all(0 <= a < molecule.n_atoms for a in atoms):
            raise BoltzflowError(f"collective variable {spec!r}: need 2 (distance) or 4 (torsion) atom indices in "
                                 f"0..{molecule.n_atoms - 1}")
        out[f"{'torsion' if len(atoms) == 4 else 'distance'}({','.join(map(str, atoms))})"] = atoms
    return out


def cv_values(x, cvs: Mapping[str, tuple[int, ...]]) -> dict[str, np.ndarray]:
    """Each CV of each conformation (module docstring): ``{name: (n,)}``, torsions in degrees, distances in nm.

    Args:
        x: conformations ``(n, 3N)`` in nm.
        cvs: ``{name: atoms}`` as :func:`collective_variables` gives.

    Returns:
        ``{name: values (n,)}`` (float64).

    Example:
        >>> v = cv_values(x, {"phi": (4, 6, 8, 14)})     # v["phi"] in (-180, 180]
    """
    out = {}
    for name, atoms in cvs.items():
        if len(atoms) == 4:
            out[name] = np.degrees(dihedral(x, *atoms))
        else:
            p = np.asarray(x, np.float64).reshape(len(x), -1, 3)
            out[name] = np.linalg.norm(p[:, atoms[1]] - p[:, atoms[0]], axis=1)
    return out


def periodic_cvs(cvs: Mapping[str, tuple[int, ...]]) -> list[str]:
    """The names of the periodic CVs (torsions) of ``cvs``."""
    return [name for name, atoms in cvs.items() if len(atoms) == 4]


@dataclass(frozen=True)
class FreeEnergySurface:
    """The free energy F = -kT log P on a grid of two CVs (module docstring).

    Attributes:
        names: the two CVs.
        edges: bin edges of each, ``(bins + 1,)`` (degrees or nm).
        free_energy: ``(bins, bins)`` kJ/mol, minimum 0, +inf in empty bins; ``[i, j]`` is bin i of the first CV,
            bin j of the second.
        free_energy_se: its bootstrap standard error, of -kT log P (inf / NaN as the module docstring says).
        probability: P of each bin, summing to 1.
        kT: kJ/mol.
        n_effective: Kish's effective sample size 1 / sum_i W_i^2 of the weights.
    """

    names: tuple[str, str]
    edges: tuple[np.ndarray, np.ndarray]
    free_energy: np.ndarray
    free_energy_se: np.ndarray
    probability: np.ndarray
    kT: float
    n_effective: float


@dataclass(frozen=True)
class StateFreeEnergies:
    """Free energies F and differences Delta F of states (module docstring), with bootstrap standard errors.

    Attributes:
        names: the states.
        probability, probability_se: P of each state ``(S,)``.
        free_energy, free_energy_se: -kT log P of each state ``(S,)``, kJ/mol.
        difference, difference_se: ``(S, S)`` Delta F_ij = F_i - F_j, kJ/mol.
        kT: kJ/mol.
        n_effective: Kish's effective sample size 1 / sum_i W_i^2 of the weights.
    """

    names: tuple[str, ...]
    probability: np.ndarray
    probability_se: np.ndarray
    free_energy: np.ndarray
    free_energy_se: np.ndarray
    difference: np.ndarray
    difference_se: np.ndarray
    kT: float
    n_effective: float


def _columns(values: Mapping[str, np.ndarray], names: Sequence[str], periodic: Collection[str]) -> np.ndarray:
    """The CVs ``names`` as columns ``(n, d)``, periodic ones wrapped into (-180, 180]."""
    missing = [k for k in names if k not in values]
    if missing:
        raise BoltzflowError(f"no values of the collective variable(s) {missing}; have {sorted(values)}")
    cols = [np.asarray(values[k], np.float64).reshape(-1) for k in names]
    if len({c.shape[0] for c in cols}) > 1:
        raise BoltzflowError(f"collective variables differ in length: {[c.shape[0] for c in cols]}")
    return np.stack([np.degrees(wrap_angle(np.radians(c))) if k in periodic else c for k, c in zip(names, cols)], 1)


def _weights(columns: np.ndarray, log_w, kT: float) -> np.ndarray:
    """The normalised weights W (module docstring), with samples of a non-finite CV left out; one line if no weight
    is left."""
    if not (np.isfinite(kT) and kT > 0):
        raise BoltzflowError(f"kT must be a positive number of kJ/mol, got {kT}")
    n = columns.shape[0]
    w = np.ones(n) / n if log_w is None else normalised_weights(log_w, n)
    w = np.where(np.all(np.isfinite(columns), axis=1), w, 0.0)
    if not w.sum() > 0:
        raise BoltzflowError("no sample has a positive weight and finite collective variables")
    return w / w.sum()


def time_blocks(chain, n_blocks: int = N_BLOCKS) -> np.ndarray:
    """Block labels ``(n,)`` for the block bootstrap of MD samples laid out as ``boltzflow md`` saves them (all
    chains at each save, save after save; ``chain`` ``(n,)`` the chain of each sample): ``n_blocks`` contiguous
    stretches of saves, every chain's samples of a stretch in one block."""
    chain = np.asarray(chain).reshape(-1)
    n_chains = int(chain.max()) + 1
    if chain.shape[0] % n_chains or np.any(chain != np.arange(chain.shape[0]) % n_chains):
        raise BoltzflowError(f"chain numbers are not {n_chains} chains side by side, save after save")
    saves = chain.shape[0] // n_chains
    return np.repeat(np.arange(saves) * n_blocks // saves, n_chains)


def _bootstrap(key: jax.Array, w: np.ndarray, masses, n_bootstrap: int, blocks=None) -> np.ndarray:
    """P of each bootstrap replicate: ``(B, K)`` from ``masses`` (replicate weights (n,) -> (K,)); with
    ``blocks`` (a label 0..G-1 per sample) each replicate draws G blocks, not n samples."""
    if n_bootstrap < 2:
        raise BoltzflowError(f"the bootstrap needs at least 2 replicates, got {n_bootstrap}")
    n = w.shape[0]
    labels = np.arange(n) if blocks is None else np.asarray(blocks).reshape(-1)
    if labels.shape[0] != n:
        raise BoltzflowError(f"{labels.shape[0]} block labels for {n} samples")
    g = int(labels.max()) + 1
    out = []
    for r in range(n_bootstrap):
        idx = np.asarray(jax.random.randint(jax.random.fold_in(key, r), (g,), 0, g))
        wr = np.bincount(idx, minlength=g)[labels] * w
        m, total = masses(wr), wr.sum()
        out.append(m / total if total > 0 else np.full(m.shape, np.nan))
    return np.asarray(out)


def _spread(replicates: np.ndarray, estimate: np.ndarray) -> np.ndarray:
    """The bootstrap se: std over the replicates (axis 0); inf where a replicate is not finite (a state or bin it
    left empty), NaN where the estimate is not."""
    finite = np.isfinite(replicates)
    se = np.where(np.all(finite, axis=0), np.std(np.where(finite, replicates, 0.0), axis=0, ddof=1), np.inf)
    return np.where(np.isfinite(estimate), se, np.nan)


def _free_energy(p: np.ndarray, kT: float) -> np.ndarray:
    """F = -kT log P, +inf where P = 0."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return -kT * np.log(p)


def free_energy_surface(key: jax.Array, values: Mapping[str, np.ndarray], log_w, kT: float, *,
                        names: Sequence[str] | None = None, periodic: Collection[str] = (), bins: int = BINS,
                        n_bootstrap: int = N_BOOTSTRAP, blocks=None) -> FreeEnergySurface:
    """The free-energy surface of two CVs from weighted samples, with bootstrap errors.

    Args:
        key: a JAX key for the bootstrap.
        values: ``{name: (n,)}`` CV values (:func:`cv_values`: torsions in degrees, distances in nm).
        log_w: log importance weights ``(n,)`` (any constant offset), or None for equal weights (MD samples).
        kT: kJ/mol (0.0083144626 T for T in kelvin).
        names: the two CVs of ``values`` (default: its two keys).
        periodic: names of the periodic CVs (torsions): binned over [-180, 180]; the others over their range.
        bins: bins per CV.
        n_bootstrap: bootstrap replicates.
        blocks: for correlated samples (MD), a block label per sample (:func:`time_blocks`): the bootstrap
            resamples blocks; None: independent samples (a flow's).

    Returns:
        :class:`FreeEnergySurface`.

    Example:
        >>> s = free_energy_surface(jax.random.key(0), cv_values(x, cvs), log_w, target.kT, periodic=["phi", "psi"])
    """
    names = tuple(values if names is None else names)
    if len(names) != 2:
        raise BoltzflowError(f"a free-energy surface needs 2 collective variables, got {len(names)}: {names}")
    cols = _columns(values, names, periodic)
    w = _weights(cols, log_w, kT)
    edges, index = [], []
    for k, name in enumerate(names):
        lo, hi = (-180.0, 180.0) if name in periodic else (cols[w > 0, k].min(), cols[w > 0, k].max())
        e = np.linspace(lo, hi if hi > lo else lo + 1.0, bins + 1)
        edges.append(e)
        v = np.where(np.isfinite(cols[:, k]), cols[:, k], lo)
        index.append(np.clip(np.searchsorted(e, v, side="left") - 1, 0, bins - 1))  # bin (e_b, e_b+1]
    labels = index[0] * bins + index[1]
    masses = lambda v: np.bincount(labels, weights=v, minlength=bins * bins)  # noqa: E731
    p = masses(w)
    f = _free_energy(p, kT)
    se = _spread(_free_energy(_bootstrap(key, w, masses, n_bootstrap, blocks), kT), f)
    return FreeEnergySurface(names, (edges[0], edges[1]), (f - f.min()).reshape(bins, bins),
                             se.reshape(bins, bins), p.reshape(bins, bins), float(kT), float(1 / np.sum(w**2)))


def state_indicators(values: Mapping[str, np.ndarray], states: Mapping[str, Mapping[str, Sequence[float]]],
                     periodic: Collection[str] = ()) -> np.ndarray:
    """Which samples lie in which state: ``(n, S)`` booleans, the states as boxes (lo, hi] per CV (module
    docstring; a periodic CV's interval with lo >= hi wraps through 180)."""
    if not states:
        raise BoltzflowError("no states given")
    named = sorted({cv for box in states.values() for cv in box})
    cols = _columns(values, named, periodic)
    out = []
    for state, box in states.items():
        inside = np.ones(cols.shape[0], bool)
        for cv, interval in box.items():
            if len(interval) != 2:
                raise BoltzflowError(f"state {state!r}: {cv} needs an interval [lo, hi], got {list(interval)}")
            lo, hi = map(float, interval)
            v = cols[:, named.index(cv)]
            if cv in periodic and lo >= hi:
                inside &= (v > lo) | (v <= hi)
            elif lo < hi:
                inside &= (v > lo) & (v <= hi)
            else:
                raise BoltzflowError(f"state {state!r}: {cv} interval [{lo}, {hi}] is empty (lo >= hi wraps only for a "
                                     "torsion)")
        out.append(inside)
    return np.stack(out, 1)


def state_free_energies(key: jax.Array, values: Mapping[str, np.ndarray], log_w, kT: float,
                        states: Mapping[str, Mapping[str, Sequence[float]]], *, periodic: Collection[str] = (),
                        n_bootstrap: int = N_BOOTSTRAP, blocks=None) -> StateFreeEnergies:
    """Free energies of states and their differences, with bootstrap errors.

    Args:
        key: a JAX key for the bootstrap.
        values: ``{name: (n,)}`` CV values (:func:`cv_values`).
        log_w: log importance weights ``(n,)`` (any constant offset), or None for equal weights.
        kT: kJ/mol.
        states: ``{state: {cv: (lo, hi)}}``, boxes (lo, hi] in the CVs' units (degrees, nm), e.g.
            :data:`ALANINE_DIPEPTIDE_STATES`; they may overlap.
        periodic: names of the periodic CVs (torsions).
        n_bootstrap: bootstrap replicates.
        blocks: a block label per sample for correlated samples (as :func:`free_energy_surface`'s).

    Returns:
        :class:`StateFreeEnergies`.

    Example:
        >>> s = state_free_energies(jax.random.key(0), cv_values(x, cvs), log_w, target.kT,
        ...                         ALANINE_DIPEPTIDE_STATES, periodic=["phi", "psi"])
        >>> delta, se = s.difference[0, 1], s.difference_se[0, 1]    # F(C7eq) - F(alpha_R), kJ/mol
    """
    inside = state_indicators(values, states, periodic).astype(np.float64)
    w = _weights(_columns(values, sorted(values), periodic), log_w, kT)
    masses = lambda v: v @ inside  # noqa: E731
    p = masses(w)
    reps = _bootstrap(key, w, masses, n_bootstrap, blocks)
    f, f_reps = _free_energy(p, kT), _free_energy(reps, kT)
    with np.errstate(invalid="ignore"):  # inf - inf: a state without mass
        diff, diff_reps = f[:, None] - f[None, :], f_reps[:, :, None] - f_reps[:, None, :]
    return StateFreeEnergies(tuple(states), p, np.std(reps, axis=0, ddof=1), f, _spread(f_reps, f), diff,
                             _spread(diff_reps, diff), float(kT), float(1 / np.sum(w**2)))
