"""Internal coordinates of a molecule, or of several: a Z-matrix built from the bond graph, and the maps both ways.
The choices in full, and the derivation of the Jacobian: docs/concepts/internal-coordinates.md.

Building the Z-matrix (:func:`build_zmatrix`). Atoms are placed in breadth-first order over the bond graph from a
root (the heavy-atom graph centre), visiting an atom's neighbours of its own molecule first, then heavy atoms, then
larger branches, then by index (for alanine dipeptide: root CA, frame CA-N-C, first torsions phi, psi and the
omegas). Atom i at placement position p >= 1 is placed by its bond to j (its BFS parent); from p = 2 on also by the
angle i-j-k (k: j's parent, or the second atom when j is the root); from p = 3 on also by the dihedral i-j-k-l.
Later atoms on an axis (j, k) already used get the dihedral from the first one (nearly constant, not circular); a
proper torsion is *circular* when j-k is a rotatable bond (both atoms of degree > 1, the bond in no ring). N atoms
have 3N - 6 internal coordinates: N - 1 bonds, N - 2 angles, N - 3 dihedrals, each in placement order.

Several molecules: each extra component of the bond graph is joined by one *link* between the closest heavy atoms,
which adds the 6 coordinates of its relative position (link length, angle, dihedral) and orientation (an angle and
two dihedrals) to its own 3 N_c - 6; coordinates whose atoms lie in more than one component are *intermolecular*
(:attr:`ZMatrix.intermolecular_mask`) and never circular.

Cartesian -> internal (:func:`cartesian_to_internal`). With r_ab = x_a - x_b: bond |r_ij|; angle
theta = atan2(|r_ij x r_kj|, r_ij . r_kj) in [0, pi]; dihedral (i, j, k, l) with b1 = unit(x_k - x_j),
v = r_ij - (r_ij . b1) b1, w = (x_l - x_k) - ((x_l - x_k) . b1) b1: phi = atan2((b1 x v) . w, v . w) in (-pi, pi],
the IUPAC dihedral i-j-k-l.

Internal -> Cartesian (:func:`internal_to_cartesian`, NeRF: Parsons et al., J. Comput. Chem. 26, 1063 (2005)). The
first atom at the origin, the second at (b, 0, 0), the third in the xy plane with y > 0; every later atom, from
A = x_l, B = x_k, C = x_j, with bc = unit(C - B), n = unit((B - A) x bc), m = n x bc, at

    x_i = C + b (-cos theta) bc + b sin theta cos phi m + b sin theta sin phi n.

Jacobian (:func:`log_det_jacobian`). With x = R X(q) + t (X(q) the canonical-frame structure, R a rotation, t a
translation), d^{3N}x = d^3t dR J(q) dq, dR the Haar measure on SO(3) normalised to d^3w at the identity
(R = exp([w]_x)), and

    log J(q) = 2 sum(log bonds) + sum(log sin angles),

so the density of internal coordinates is p(q) = J(q) * integral of p(x) over rigid motions, the physically right
one. All functions are pure JAX and batched over a leading axis.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import jax
import jax.numpy as jnp
import numpy as np

from boltzflow.errors import BoltzflowError


@dataclass(frozen=True, eq=False)
class ZMatrix:
    """A Z-matrix: how each atom is placed from atoms placed before it.

    Arrays are indexed by placement position p = 0 .. N-1 (``order[p]`` is the atom placed at p); ``-1`` marks
    references an atom does not have (the first atom has none, the second only j, the third j and k).

    Attributes:
        order: ``(N,)`` atom index at each placement position.
        j: ``(N,)`` bond partner (``-1`` for p = 0).
        k: ``(N,)`` third atom of the angle i-j-k (``-1`` for p < 2).
        l: ``(N,)`` fourth atom of the dihedral i-j-k-l (``-1`` for p < 3).
        circular: ``(N - 3,)`` bool: dihedral p = 3 .. N-1 is a free torsion about a rotatable bond.
        relative: ``(N - 3,)`` bool: dihedral measured from a sibling on the same axis (l bonded to j, not k).
        atom_labels: one label per atom (``"CA:8"``), used in :attr:`names`.
        component: ``(N,)`` connected component (molecule) of each atom, by atom index; all 0 for one molecule.
        links: ``(m, 2)`` the Z-matrix bonds that join components (no chemical bond), one per extra component.
    """

    order: np.ndarray
    j: np.ndarray
    k: np.ndarray
    l: np.ndarray  # noqa: E741
    circular: np.ndarray
    relative: np.ndarray
    atom_labels: tuple[str, ...] = field(repr=False)
    component: np.ndarray | None = field(default=None, repr=False)
    links: np.ndarray | None = field(default=None, repr=False)

    _ARRAYS = ("order", "j", "k", "l", "circular", "relative", "component", "links")

    def __post_init__(self):
        if self.component is None:
            object.__setattr__(self, "component", np.zeros(len(self.order), np.int64))
        if self.links is None:
            object.__setattr__(self, "links", np.zeros((0, 2), np.int64))
        for name in self._ARRAYS:
            arr = np.array(getattr(self, name))
            arr.setflags(write=False)
            object.__setattr__(self, name, arr)

    # value semantics, so that a ZMatrix can be a static field of a jitted module
    def _key(self):
        return tuple(getattr(self, n).tobytes() for n in self._ARRAYS) + (self.atom_labels,)

    def __eq__(self, other):
        return isinstance(other, ZMatrix) and self._key() == other._key()

    def __hash__(self):
        return hash(self._key())

    @property
    def n_atoms(self) -> int:
        return int(self.order.shape[0])

    @property
    def n_bonds(self) -> int:
        return self.n_atoms - 1

    @property
    def n_angles(self) -> int:
        return self.n_atoms - 2

    @property
    def n_dihedrals(self) -> int:
        return self.n_atoms - 3

    @property
    def dim(self) -> int:
        """Number of internal coordinates, 3N - 6."""
        return 3 * self.n_atoms - 6

    @property
    def bond_atoms(self) -> np.ndarray:
        """``(N - 1, 2)`` atoms (i, j) of each bond, in placement order."""
        return np.stack([self.order[1:], self.j[1:]], axis=1)

    @property
    def angle_atoms(self) -> np.ndarray:
        """``(N - 2, 3)`` atoms (i, j, k) of each angle."""
        return np.stack([self.order[2:], self.j[2:], self.k[2:]], axis=1)

    @property
    def dihedral_atoms(self) -> np.ndarray:
        """``(N - 3, 4)`` atoms (i, j, k, l) of each dihedral."""
        return np.stack([self.order[3:], self.j[3:], self.k[3:], self.l[3:]], axis=1)

    @property
    def intermolecular_mask(self) -> np.ndarray:
        """``(3N - 6,)`` bool over the coordinate vector: coordinates whose atoms lie in more than one component."""
        c = self.component

        def spans(atoms):
            return np.asarray([len(set(c[row].tolist())) > 1 for row in atoms], bool).reshape(-1)

        return np.concatenate([spans(self.bond_atoms), spans(self.angle_atoms), spans(self.dihedral_atoms)])

    @property
    def circular_mask(self) -> np.ndarray:
        """``(3N - 6,)`` bool over the coordinate vector (bonds, angles, dihedrals): the circular dihedrals."""
        return np.concatenate([np.zeros(self.n_bonds + self.n_angles, bool), self.circular])

    @property
    def names(self) -> tuple[str, ...]:
        """One name per internal coordinate, in the order (bonds, angles, dihedrals)."""
        lab = self.atom_labels

        def name(kind, atoms):
            return f"{kind} " + "-".join(lab[a] for a in atoms)

        return (tuple(name("bond", r) for r in self.bond_atoms) + tuple(name("angle", r) for r in self.angle_atoms)
                + tuple(name("dihedral", r) for r in self.dihedral_atoms))

    def split(self, q):
        """``(..., 3N - 6)`` -> (bonds, angles, dihedrals)."""
        nb, na = self.n_bonds, self.n_angles
        return q[..., :nb], q[..., nb:nb + na], q[..., nb + na:]

    @staticmethod
    def join(bonds, angles, dihedrals):
        """(bonds, angles, dihedrals) -> ``(..., 3N - 6)``."""
        return jnp.concatenate([bonds, angles, dihedrals], axis=-1)

    def cartesian_to_internal(self, x):
        return cartesian_to_internal(self, x)

    def internal_to_cartesian(self, bonds, angles, dihedrals):
        return internal_to_cartesian(self, bonds, angles, dihedrals)

    @classmethod
    def from_system(cls, molecule, root: int | None = None) -> "ZMatrix":
        """The Z-matrix of a :class:`~boltzflow.molecules.system.MolecularSystem` (its bonds and elements; its
        starting positions choose the links between molecules, if it holds several)."""
        return build_zmatrix(molecule.n_atoms, molecule.bonds, molecule.elements, molecule.atom_names, root=root,
                             positions=molecule.positions)


def _adjacency(n_atoms: int, bonds) -> list[list[int]]:
    bonds = np.asarray(bonds, np.int64).reshape(-1, 2)
    if bonds.size and (bonds.min() < 0 or bonds.max() >= n_atoms):
        raise BoltzflowError(f"bond atom index out of range for {n_atoms} atoms")
    if np.any(bonds[:, 0] == bonds[:, 1]):
        raise BoltzflowError("a bond joins an atom to itself")
    adj = [set() for _ in range(n_atoms)]
    for a, b in bonds.tolist():
        adj[a].add(b)
        adj[b].add(a)
    return [sorted(s) for s in adj]


def _reach(adj, start: int, blocked: int) -> int:
    """Number of atoms reachable from ``start`` without passing ``blocked``."""
    seen, stack = {start, blocked}, [start]
    while stack:
        for v in adj[stack.pop()]:
            if v not in seen:
                seen.add(v)
                stack.append(v)
    return len(seen) - 1


def _distances(adj, start: int) -> list[int]:
    dist = [-1] * len(adj)
    dist[start] = 0
    queue = deque([start])
    while queue:
        u = queue.popleft()
        for v in adj[u]:
            if dist[v] < 0:
                dist[v] = dist[u] + 1
                queue.append(v)
    return dist


def _bridges(nb) -> set[tuple[int, int]]:
    """Bonds (j < k) in no ring: the bridges of the bond graph (Tarjan's low-link, iterative, O(atoms + bonds))."""
    n = len(nb)
    order, low = [-1] * n, [0] * n
    out, t = set(), 0
    for root in range(n):
        if order[root] >= 0:
            continue
        order[root] = low[root] = t
        t += 1
        stack = [(root, -1, iter(sorted(nb[root])))]
        while stack:
            a, parent, it = stack[-1]
            b = next(it, None)
            if b is None:
                stack.pop()
                if parent >= 0:
                    low[parent] = min(low[parent], low[a])
                    if low[a] > order[parent]:
                        out.add((min(a, parent), max(a, parent)))
            elif b == parent:
                continue
            elif order[b] >= 0:
                low[a] = min(low[a], order[b])
            else:
                order[b] = low[b] = t
                t += 1
                stack.append((b, a, iter(sorted(nb[b]))))
    return out


def ring_bonds(n_atoms: int, bonds) -> set[tuple[int, int]]:
    """Bonds (sorted pairs) that lie in a ring: every bond that is not a bridge of the bond graph."""
    adj = _adjacency(n_atoms, bonds)
    return {(a, b) for a in range(n_atoms) for b in adj[a] if a < b} - _bridges(adj)


def components(n_atoms: int, bonds) -> np.ndarray:
    """``(N,)`` connected component (molecule) of each atom of a bond graph, numbered by their lowest atom index."""
    return _components(_adjacency(n_atoms, bonds))


def _components(adj) -> np.ndarray:
    comp = np.full(len(adj), -1, np.int64)
    count = 0
    for a in range(len(adj)):
        if comp[a] < 0:
            comp[np.asarray(_distances(adj, a)) >= 0] = count
            count += 1
    return comp


def _links(comp: np.ndarray, start: int, is_h, positions) -> list[tuple[int, int]]:
    """One link per extra component (module docstring): repeatedly the closest heavy-atom pair between the joined
    components and an unjoined one."""
    x = np.asarray(positions, np.float64).reshape(len(comp), 3)
    heavy = np.asarray([not h for h in is_h])
    joined, links = {start}, []
    while len(joined) < comp.max() + 1:
        inside = np.isin(comp, list(joined))
        a_set = np.flatnonzero(inside & heavy) if np.any(inside & heavy) else np.flatnonzero(inside)
        b_set = np.flatnonzero(~inside & heavy) if np.any(~inside & heavy) else np.flatnonzero(~inside)
        d = np.linalg.norm(x[a_set][:, None] - x[b_set][None], axis=-1)
        ia, ib = np.unravel_index(np.argmin(d), d.shape)
        links.append((int(a_set[ia]), int(b_set[ib])))
        joined.add(int(comp[b_set[ib]]))
    return links


def build_zmatrix(n_atoms: int, bonds, elements=None, atom_names=None, root: int | None = None,
                  positions=None) -> ZMatrix:
    """A Z-matrix for a molecule, or several, from the bond graph (choices: module docstring and
    docs/concepts/internal-coordinates.md).

    Args:
        n_atoms: number of atoms N (>= 3).
        bonds: ``(m, 2)`` bonded atom pairs.
        elements: element symbols (hydrogens are "H"); default: all heavy.
        atom_names: names for the labels (default: the element or "A"); labels are ``"name:index"``.
        root: the first atom (default: the heavy-atom graph centre of the largest molecule).
        positions: ``(N, 3)`` a structure; needed only when the bond graph has several components (it chooses the
            links between them).

    Example:
        >>> build_zmatrix(4, [[0, 1], [1, 2], [2, 3]]).dim
        6
    """
    n_atoms = int(n_atoms)
    if n_atoms < 3:
        raise BoltzflowError(f"internal coordinates need at least 3 atoms, got {n_atoms}")
    adj = _adjacency(n_atoms, bonds)
    elements = tuple(elements) if elements is not None else ("",) * n_atoms
    if len(elements) != n_atoms:
        raise BoltzflowError(f"{len(elements)} elements for {n_atoms} atoms")
    names = tuple(atom_names) if atom_names is not None else tuple(e or "A" for e in elements)
    if len(names) != n_atoms:
        raise BoltzflowError(f"{len(names)} atom names for {n_atoms} atoms")
    is_h = [str(e).upper() in ("H", "D") for e in elements]
    comp = _components(adj)
    if root is not None and not 0 <= int(root) < n_atoms:
        raise BoltzflowError(f"root atom {root} out of range for {n_atoms} atoms")
    links = []
    if comp.max() > 0:
        if positions is None:
            raise BoltzflowError(f"the bond graph has {comp.max() + 1} components (molecules); joining them needs "
                                 "a structure (positions)")
        sizes = np.bincount(comp)
        start = int(comp[root]) if root is not None else int(np.argmax(sizes))
        if root is None:  # the graph centre of the largest component (before the links join the others)
            members = [a for a in range(n_atoms) if comp[a] == start]
            heavy = [a for a in members if not is_h[a]] or members
            root = min(heavy, key=lambda a: (max(_distances(adj, a)), a))
        links = _links(comp, start, is_h, positions)
        for a, b in links:
            adj[a] = sorted(adj[a] + [b])
            adj[b] = sorted(adj[b] + [a])
    branch = {(u, v): _reach(adj, v, u) for u in range(n_atoms) for v in adj[u]}

    if root is None:
        heavy = [a for a in range(n_atoms) if not is_h[a]] or list(range(n_atoms))
        root = min(heavy, key=lambda a: (max(_distances(adj, a)), max(branch[(a, v)] for v in adj[a]), a))
    root = int(root)

    # breadth-first placement order, visiting heavy atoms, then bigger branches, first
    parent = {root: -1}
    order, queue = [root], deque([root])
    while queue:
        u = queue.popleft()
        for v in sorted(adj[u], key=lambda v: (comp[v] != comp[u], is_h[v], -branch[(u, v)], v)):
            if v not in parent:
                parent[v] = u
                order.append(v)
                queue.append(v)
    pos = {a: p for p, a in enumerate(order)}
    first_child = {}
    for a in order[1:]:
        first_child.setdefault(parent[a], a)
    rings = ring_bonds(n_atoms, bonds)

    def rotatable(a, b):  # a chemical bond (not a link) in no ring between two atoms of degree > 1
        return len(adj[a]) > 1 and len(adj[b]) > 1 and comp[a] == comp[b] and (min(a, b), max(a, b)) not in rings

    J, K, L = [-1] * n_atoms, [-1] * n_atoms, [-1] * n_atoms
    circ, rel = [], []
    first_on_axis: dict[tuple[int, int], int] = {}
    for p, i in enumerate(order):
        if p == 0:
            continue
        j = parent[i]
        J[p] = j
        if p == 1:
            continue
        if parent[j] < 0 or comp[parent[j]] != comp[j]:  # j starts its molecule (the root, or a link's far end):
            k = first_child[j] if i != first_child[j] else parent[j]  # its later children hang off its first one
        else:
            k = parent[j]
        K[p] = k
        axis = (j, k)
        if axis in first_on_axis:  # a later sibling on this axis: dihedral from the first one
            if p == 2:
                raise AssertionError("the third atom opens a new axis")
            L[p] = first_on_axis[axis]
            circ.append(False)
            rel.append(True)
            continue
        first_on_axis[axis] = i
        if p == 2:
            continue
        cands = [a for a in adj[k] if a != j and pos[a] < p]
        if cands:  # proper torsion i-j-k-l: k's parent if it has one, else the earliest placed heavy atom
            L[p] = min(cands, key=lambda a: (comp[a] != comp[i], a != parent[k], is_h[a], pos[a]))
            circ.append(rotatable(j, k) and len({int(comp[a]) for a in (i, j, k, L[p])}) == 1)
            rel.append(False)
        else:  # a second child of a link's far end (its orientation's third angle), else an improper reference
            cands = [a for a in adj[j] if a not in (i, k) and pos[a] < p]
            if not cands:
                raise BoltzflowError(f"no dihedral reference for atom {i}")
            L[p] = min(cands, key=lambda a: pos[a])
            circ.append(False)
            rel.append(True)

    return ZMatrix(order=np.asarray(order, np.int64), j=np.asarray(J, np.int64), k=np.asarray(K, np.int64),
                   l=np.asarray(L, np.int64), circular=np.asarray(circ, bool).reshape(-1),
                   relative=np.asarray(rel, bool).reshape(-1),
                   atom_labels=tuple(f"{names[a]}:{a}" for a in range(n_atoms)), component=comp,
                   links=np.asarray(links, np.int64).reshape(-1, 2))


# ---------------------------------------------------------------------------------------------------------------
# geometry (batched over leading axes; the last axis holds xyz)


def _norm(v):
    return jnp.sqrt(jnp.sum(v * v, axis=-1))


def bond_length(xi, xj):
    return _norm(xi - xj)


def bond_angle(xi, xj, xk):
    """Angle i-j-k in [0, pi] (atan2 form: accurate and differentiable near 0 and pi)."""
    u, v = xi - xj, xk - xj
    return jnp.arctan2(_norm(jnp.cross(u, v)), jnp.sum(u * v, axis=-1))


def dihedral_angle(xi, xj, xk, xl):
    """Dihedral i-j-k-l in (-pi, pi] (IUPAC sign: positive for a clockwise turn looking along j -> k)."""
    b0 = xi - xj
    b1 = xk - xj
    b1 = b1 / _norm(b1)[..., None]
    b2 = xl - xk
    v = b0 - jnp.sum(b0 * b1, axis=-1, keepdims=True) * b1
    w = b2 - jnp.sum(b2 * b1, axis=-1, keepdims=True) * b1
    return jnp.arctan2(jnp.sum(jnp.cross(b1, v) * w, axis=-1), jnp.sum(v * w, axis=-1))


def _as_positions(zm: ZMatrix, x):
    x = jnp.asarray(x)
    if x.ndim < 1 or x.shape[-1] != 3 * zm.n_atoms:
        raise BoltzflowError(f"positions must have shape (n, {3 * zm.n_atoms}), got {x.shape}")
    return x.reshape(*x.shape[:-1], zm.n_atoms, 3)


def cartesian_to_internal(zm: ZMatrix, x):
    """``x (..., 3N)`` (nm) -> (bonds ``(..., N-1)``, angles ``(..., N-2)`` in [0, pi], dihedrals ``(..., N-3)`` in
    (-pi, pi]); independent of the orientation and position of x."""
    X = _as_positions(zm, x)
    ba, aa, da = zm.bond_atoms, zm.angle_atoms, zm.dihedral_atoms

    def at(idx):
        return X[..., idx, :]

    bonds = bond_length(at(ba[:, 0]), at(ba[:, 1]))
    angles = bond_angle(at(aa[:, 0]), at(aa[:, 1]), at(aa[:, 2]))
    dihedrals = dihedral_angle(at(da[:, 0]), at(da[:, 1]), at(da[:, 2]), at(da[:, 3]))
    return bonds, angles, dihedrals


def _nerf(a, b, c, bond, angle, torsion):
    """The point d with |d - c| = bond, angle(d, c, b) = angle, dihedral(d, c, b, a) = torsion."""
    bc = c - b
    bc = bc / _norm(bc)[..., None]
    n = jnp.cross(b - a, bc)
    n = n / _norm(n)[..., None]
    m = jnp.cross(n, bc)
    sa = bond * jnp.sin(angle)
    d = (-bond * jnp.cos(angle))[..., None] * bc + (sa * jnp.cos(torsion))[..., None] * m \
        + (sa * jnp.sin(torsion))[..., None] * n
    return c + d


def internal_to_cartesian(zm: ZMatrix, bonds, angles, dihedrals):
    """(bonds, angles, dihedrals), each batched ``(..., ·)`` -> positions ``(..., 3N)`` in the canonical frame:
    first atom at the origin, second on +x, third in the xy plane with y > 0 (NeRF; module docstring).

    Atoms from the fourth on are placed by ``jax.lax.scan`` over placement positions (an unrolled loop compiles
    ~20x slower under ``jax.grad`` already for alanine dipeptide, and runs no faster)."""
    bonds, angles, dihedrals = jnp.asarray(bonds), jnp.asarray(angles), jnp.asarray(dihedrals)
    shapes = (bonds.shape[-1], angles.shape[-1], dihedrals.shape[-1])
    if shapes != (zm.n_bonds, zm.n_angles, zm.n_dihedrals):
        raise BoltzflowError(f"internal coordinates of {zm.n_atoms} atoms need ({zm.n_bonds}, {zm.n_angles}, "
                             f"{zm.n_dihedrals}) bonds, angles, dihedrals; got {shapes}")
    dtype = jnp.result_type(bonds, angles, dihedrals)
    batch = jnp.broadcast_shapes(bonds.shape[:-1], angles.shape[:-1], dihedrals.shape[:-1])
    bonds, angles, dihedrals = (jnp.broadcast_to(v, (*batch, v.shape[-1])).astype(dtype)
                                for v in (bonds, angles, dihedrals))
    n = zm.n_atoms
    pos = np.empty(n, np.int64)
    pos[zm.order] = np.arange(n)  # atom -> placement position
    zero = jnp.zeros(batch, dtype)
    # P[p] = position of the atom placed at p
    P = jnp.zeros((n, *batch, 3), dtype)
    P = P.at[1].set(jnp.stack([bonds[..., 0], zero, zero], axis=-1))
    b, t = bonds[..., 1], angles[..., 0]
    sign = 1.0 if zm.j[2] == zm.order[0] else -1.0  # angle measured from the +x direction (j = first) or -x
    P = P.at[2].set(P[pos[zm.j[2]]] + jnp.stack([sign * b * jnp.cos(t), b * jnp.sin(t), zero], axis=-1))
    if n > 3:
        def place(P, inp):
            p, j, k, l, bond, angle, torsion = inp
            x = _nerf(P[l], P[k], P[j], bond, angle, torsion)
            return jax.lax.dynamic_update_index_in_dim(P, x, p, 0), None

        xs = (jnp.arange(3, n), jnp.asarray(pos[zm.j[3:]]), jnp.asarray(pos[zm.k[3:]]), jnp.asarray(pos[zm.l[3:]]),
              jnp.moveaxis(bonds[..., 2:], -1, 0), jnp.moveaxis(angles[..., 1:], -1, 0),
              jnp.moveaxis(dihedrals, -1, 0))
        P, _ = jax.lax.scan(place, P, xs)
    X = jnp.moveaxis(P[pos], 0, -2)  # back to atom order
    return X.reshape(*batch, 3 * n)


def log_det_jacobian(bonds, angles):
    """log J(q) = 2 sum log b + sum log sin theta (module docstring): the Cartesian volume per unit volume of
    internal coordinates, with rigid motions measured by d^3t and the Haar measure. Absolute values keep it finite
    (and the local log|det| of the map) outside b > 0, 0 < theta < pi."""
    return 2 * jnp.sum(jnp.log(jnp.abs(bonds)), axis=-1) + jnp.sum(jnp.log(jnp.abs(jnp.sin(angles))), axis=-1)
