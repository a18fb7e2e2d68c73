"""OpenMM's Custom*Forces in JAX, compiled from their own expression strings (boltzflow.molecules.expression).

Each force is read into a :class:`CustomForce`: its parsed expressions, per-term parameters (NumPy float64), global
parameters at their default values and tabulated functions (boltzflow.molecules.tabulated). Its energy (kJ/mol) is,
as OpenMM defines it, with E the force's expression:

- ``CustomBondForce``:     sum_b E(r_b, params_b)                 r: distance of the bond's two particles (nm)
- ``CustomAngleForce``:    sum_a E(theta_a, params_a)             theta in [0, pi]
- ``CustomTorsionForce``:  sum_t E(theta_t, params_t)             theta: IUPAC dihedral in (-pi, pi]
- ``CustomExternalForce``: sum_i E(x_i, y_i, z_i, params_i)       over the particles the force lists
- ``CustomNonbondedForce`` (NoCutoff): sum_{i<j} E(r_ij, p_i as name1, p_j as name2) over the pairs that are not
  exclusions (or, with interaction groups, over the distinct pairs of each group); computed values (per-particle
  expressions of the parameters) are named like parameters.
- ``CustomGBForce`` (NoCutoff): per-particle values computed in order, each from the parameters and the values
  before it:
      SingleParticle:  v_i = F(p_i, v_i, x_i, y_i, z_i)
      ParticlePair:    v_i = sum_{j != i} F(r_ij, p_i / v_i as name1, p_j / v_j as name2)   (ordered pairs)
  then energy terms, SingleParticle sum_i G(p_i, v_i, x_i, y_i, z_i) and ParticlePair
  sum_{i<j} G(r_ij, p_i, v_i as 1, p_j, v_j as 2). "ParticlePair" skips the force's exclusions, "NoExclusions" does
  not. Every generalized Born model openmm.app builds (HCT, OBC1, OBC2, GBn, GBn2, with or without the ACE surface
  term and salt) is such a force.

Pair terms are evaluated on the dense n x n matrices of distances and parameters (parameter-only subexpressions,
e.g. a table looked up at per-particle indices, are folded to constant matrices in float64 once), masked where a pair
does not count. A force that uses periodic boundary conditions or a cutoff is refused in one line.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import jax
import jax.numpy as jnp
import numpy as np

from boltzflow.errors import BoltzflowError
from boltzflow.molecules.expression import Node, evaluate, parse
from boltzflow.molecules.geometry import Geometry
from boltzflow.molecules.tabulated import read_tabulated

SINGLE, PAIR, PAIR_NO_EXCLUSIONS = 0, 1, 2  # OpenMM's CustomGBForce computation types
_BONDED = {  # force class -> (atoms per term, OpenMM's word for a term, for its getters: getBondParameters, ...)
    "CustomBondForce": (2, "Bond"), "CustomAngleForce": (3, "Angle"), "CustomTorsionForce": (4, "Torsion"),
    "CustomExternalForce": (1, "Particle"),
}
SUPPORTED = (*_BONDED, "CustomNonbondedForce", "CustomGBForce")


@dataclass(frozen=True, eq=False)
class CustomForce:
    """One Custom*Force, read (module docstring).

    Attributes:
        kind: the OpenMM class name.
        atoms: (m, k) atom indices of the bonded kinds' terms; (0, 0) for pair kinds.
        params: parameter name -> values, per term (bonded) or per particle (pair kinds), float64.
        globals: global parameter name -> default value.
        functions: tabulated function name -> callable (boltzflow.molecules.tabulated).
        expressions: the parsed expression(s): one for every kind but ``CustomGBForce``, whose computed values come
            first, then its energy terms.
        names: the computed values' names (pair kinds), in order.
        types: the computation type of each expression of a ``CustomGBForce`` (SINGLE, PAIR, PAIR_NO_EXCLUSIONS).
        pair_mask: (n, n) boolean, the pairs i < j that interact (CustomNonbondedForce) or that are not exclusions
            (CustomGBForce); None for the bonded kinds.
    """

    kind: str
    atoms: np.ndarray = field(repr=False)
    params: dict[str, np.ndarray] = field(repr=False)
    globals: dict[str, float]
    functions: dict[str, Callable] = field(repr=False)
    expressions: tuple[Node, ...] = field(repr=False)
    names: tuple[str, ...] = ()
    types: tuple[int, ...] = ()
    pair_mask: np.ndarray | None = field(default=None, repr=False)


def _globals(f) -> dict[str, float]:
    return {f.getGlobalParameterName(i): float(f.getGlobalParameterDefaultValue(i))
            for i in range(f.getNumGlobalParameters())}


def _functions(f) -> dict[str, Callable]:
    if not hasattr(f, "getNumTabulatedFunctions"):
        return {}
    return {f.getTabulatedFunctionName(i): read_tabulated(f.getTabulatedFunction(i))
            for i in range(f.getNumTabulatedFunctions())}


def _table(rows, names) -> dict[str, np.ndarray]:
    rows = np.asarray(rows, np.float64).reshape(len(rows), len(names))
    return {name: rows[:, k] for k, name in enumerate(names)}


def _refuse_periodic(f, kind: str) -> None:
    if f.usesPeriodicBoundaryConditions():
        raise BoltzflowError(f"{kind} uses periodic boundary conditions, which boltzflow's jax engine does not "
                             "support (use engine: openmm)")


def read_custom(f, n_atoms: int) -> CustomForce:
    """Read a supported Custom*Force of an OpenMM System (module docstring); anything else is one line naming it."""
    kind = type(f).__name__
    if kind in _BONDED:
        k, word = _BONDED[kind]
        _refuse_periodic(f, kind)
        names = [getattr(f, f"getPer{word}ParameterName")(i) for i in range(getattr(f, f"getNumPer{word}Parameters")())]
        rows = [getattr(f, f"get{word}Parameters")(t) for t in range(getattr(f, f"getNum{word}s")())]
        atoms = np.asarray([r[:k] for r in rows], np.int64).reshape(len(rows), k)
        return CustomForce(kind, atoms, _table([r[k] for r in rows], names), _globals(f), _functions(f),
                           (parse(f.getEnergyFunction()),))
    if kind == "CustomNonbondedForce":
        return _nonbonded(f, n_atoms)
    if kind == "CustomGBForce":
        return _gb(f, n_atoms)
    raise BoltzflowError(f"the jax engine does not support {kind} (use engine: openmm)")


def _particle_params(f, n_atoms: int) -> dict[str, np.ndarray]:
    names = [f.getPerParticleParameterName(i) for i in range(f.getNumPerParticleParameters())]
    return _table([f.getParticleParameters(i) for i in range(n_atoms)], names)


def _exclusions(f, n_atoms: int) -> np.ndarray:
    """(n, n) boolean, symmetric: the force's excluded pairs."""
    ex = np.zeros((n_atoms, n_atoms), bool)
    for e in range(f.getNumExclusions()):
        i, j = f.getExclusionParticles(e)
        ex[i, j] = ex[j, i] = True
    return ex


def _nonbonded(f, n_atoms: int) -> CustomForce:
    if f.getNonbondedMethod() != f.NoCutoff:
        raise BoltzflowError("CustomNonbondedForce with a cutoff or a periodic box is not supported by boltzflow's "
                             "jax engine (use engine: openmm, or nonbondedMethod=NoCutoff)")
    upper = np.triu(np.ones((n_atoms, n_atoms), bool), 1)
    if f.getNumInteractionGroups():
        allowed = np.zeros((n_atoms, n_atoms), bool)
        for g in range(f.getNumInteractionGroups()):
            a, b = (np.asarray(sorted(s), np.int64) for s in f.getInteractionGroupParameters(g))
            allowed[np.ix_(a, b)] = allowed[np.ix_(b, a)] = True
    else:
        allowed = np.ones((n_atoms, n_atoms), bool)
    computed = [f.getComputedValueParameters(i) for i in range(f.getNumComputedValues())]
    return CustomForce("CustomNonbondedForce", np.zeros((0, 0), np.int64), _particle_params(f, n_atoms), _globals(f),
                       _functions(f), (*(parse(e) for _, e in computed), parse(f.getEnergyFunction())),
                       names=tuple(n for n, _ in computed), pair_mask=upper & allowed & ~_exclusions(f, n_atoms))


def _gb(f, n_atoms: int) -> CustomForce:
    if f.getNonbondedMethod() != f.NoCutoff:
        raise BoltzflowError("CustomGBForce with a cutoff or a periodic box is not supported by boltzflow's jax "
                             "engine (use engine: openmm, or nonbondedMethod=NoCutoff)")
    values = [f.getComputedValueParameters(i) for i in range(f.getNumComputedValues())]
    terms = [f.getEnergyTermParameters(i) for i in range(f.getNumEnergyTerms())]
    return CustomForce("CustomGBForce", np.zeros((0, 0), np.int64), _particle_params(f, n_atoms), _globals(f),
                       _functions(f), tuple(parse(e) for e in [v[1] for v in values] + [t[0] for t in terms]),
                       names=tuple(v[0] for v in values), types=tuple(int(t) for t in [v[2] for v in values]
                                                                      + [t[1] for t in terms]),
                       pair_mask=~_exclusions(f, n_atoms))


# ----------------------------------------------------------------------------------------------------- energies


def _batch_sum(value, geo: Geometry, axes) -> jax.Array:
    """Sum a term's values over ``axes``; a value that does not depend on the positions is broadcast to the batch."""
    if not isinstance(value, jax.Array):
        value = jnp.asarray(value, geo.dtype)[None]
    total = jnp.sum(value, axis=axes)
    return jnp.broadcast_to(total, geo.xyz.shape[1:2]) if total.ndim == 1 else total


def _masked_sum(value, mask: np.ndarray, geo: Geometry, axes):
    """sum over ``axes`` of value where mask (n, n), else 0; value is a (B, n, n) term or a constant."""
    r, _ = geo.pair_distances()
    value = jnp.broadcast_to(jnp.asarray(value, geo.dtype), r.shape) if not isinstance(value, jax.Array) else value
    return jnp.sum(jnp.where(jnp.asarray(mask), value, 0.0), axis=axes)


def custom_energy(force: CustomForce, geo: Geometry) -> jax.Array:
    """Energy (kJ/mol) of one Custom*Force on a batch of conformations, shape (B,), in the positions' dtype."""
    kind, atoms = force.kind, force.atoms
    env = dict(force.globals)
    if kind in _BONDED:
        if not len(atoms):
            return jnp.zeros(geo.xyz.shape[1:2], geo.dtype)
        env.update(force.params)
        if kind == "CustomBondForce":
            env["r"] = geo.distances(atoms[:, 0], atoms[:, 1])
        elif kind == "CustomAngleForce":
            env["theta"] = geo.angles(*atoms.T)
        elif kind == "CustomTorsionForce":
            env["theta"] = geo.dihedrals(*atoms.T)
        else:
            env.update({c: geo.xyz[k][:, atoms[:, 0]] for k, c in enumerate("xyz")})
        return _batch_sum(evaluate(force.expressions[0], env, force.functions), geo, -1)
    r, _ = geo.pair_distances()
    per_particle = dict(force.params)  # name -> (n,) constants or (B, n) values
    if kind == "CustomNonbondedForce":
        for name, node in zip(force.names, force.expressions[:-1]):
            per_particle[name] = evaluate(node, {**env, **per_particle}, force.functions)
        return _masked_sum(evaluate(force.expressions[-1], {**env, **_pair_env(per_particle), "r": r},
                                    force.functions), force.pair_mask, geo, (-2, -1))
    xyz = {c: geo.xyz[k] for k, c in enumerate("xyz")}
    off_diagonal = force.pair_mask & ~np.eye(geo.n_atoms, dtype=bool)
    n_values = len(force.names)
    total = jnp.zeros(geo.xyz.shape[1:2], geo.dtype)
    for k, (node, kind_k) in enumerate(zip(force.expressions, force.types)):
        if kind_k == SINGLE:
            value = evaluate(node, {**env, **per_particle, **xyz}, force.functions)
        else:
            mask = off_diagonal if kind_k == PAIR else ~np.eye(geo.n_atoms, dtype=bool)
            pair = evaluate(node, {**env, **_pair_env(per_particle), "r": r}, force.functions)
        if k < n_values:
            per_particle[force.names[k]] = value if kind_k == SINGLE else _masked_sum(pair, mask, geo, -1)
        elif kind_k == SINGLE:
            total = total + _batch_sum(value, geo, -1)
        else:
            total = total + _masked_sum(pair, np.triu(mask, 1), geo, (-2, -1))
    return total


def _pair_env(per_particle: dict) -> dict:
    """name1 (the row particle i) and name2 (the column particle j) of every per-particle quantity, for (B, n, n)
    pair expressions."""
    env = {}
    for name, v in per_particle.items():
        if isinstance(v, jax.Array):  # (B, n)
            env[name + "1"], env[name + "2"] = v[:, :, None], v[:, None, :]
        else:  # (n,)
            env[name + "1"], env[name + "2"] = v[:, None], v[None, :]
    return env
