"""Capped alanine peptides Ace-(Ala)n-Nme built from ideal internal coordinates, as a PDB file OpenMM's Amber force
fields type (atom and residue names of their ACE, ALA and NME templates).

Each atom is placed from three placed atoms a, b, c by its bond length |c d|, angle (b, c, d) and dihedral
(a, b, c, d) (the natural extension reference frame construction). Backbone: the bond lengths and angles of
Engh & Huber (1991) (N-CA 0.1458 nm, CA-C 0.1525, C-N 0.1329, C=O 0.1231; N-CA-C 111.2 degrees, CA-C-N 116.2,
C-N-CA 121.7), trans peptide bonds (omega = 180), the residues' (phi, psi) as given; hydrogens at 0.109 nm (C-H)
and 0.101 nm (N-H), tetrahedral angles, methyls staggered. Every alanine is the L-form (N-C-CA-CB dihedral
+122 degrees, as in the shipped alanine dipeptide). The structure is a start for minimisation, not a minimum.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np

from boltzflow.errors import BoltzflowError
from boltzflow.molecules.system import load_system, minimize

#: (bond nm, angle degrees) of the backbone (Engh & Huber 1991) and the hydrogens.
N_CA, CA_C, C_N, C_O, CA_CB = 0.1458, 0.1525, 0.1329, 0.1231, 0.1530
ANGLE_N_CA_C, ANGLE_CA_C_N, ANGLE_C_N_CA, ANGLE_CA_C_O = 111.2, 116.2, 121.7, 120.1
C_H, N_H, TETRAHEDRAL = 0.109, 0.101, 109.47
#: (phi, psi) of an extended (polyproline II) backbone, degrees: the default start.
EXTENDED = (-70.0, 140.0)


def place(a, b, c, bond: float, angle: float, torsion: float) -> np.ndarray:
    """The atom d with |c d| = ``bond``, angle (b, c, d) = ``angle`` and dihedral (a, b, c, d) = ``torsion``
    (degrees)."""
    angle, torsion = np.radians(angle), np.radians(torsion)
    bc = (c - b) / np.linalg.norm(c - b)
    n = np.cross(b - a, bc)
    n /= np.linalg.norm(n)
    m = np.cross(n, bc)
    d = bond * np.array([-np.cos(angle), np.sin(angle) * np.cos(torsion), np.sin(angle) * np.sin(torsion)])
    return c + d[0] * bc + d[1] * m + d[2] * n


def capped_alanine_peptide(n_residues: int, phi_psi=None):
    """Topology and positions of Ace-(Ala)n-Nme.

    Args:
        n_residues: alanines between the caps (1: alanine dipeptide, 3: Ace-Ala3-Nme).
        phi_psi: ``(phi, psi)`` in degrees for every residue, or a list of one pair per residue; default
            :data:`EXTENDED`.

    Returns:
        ``(topology, positions)``: an ``openmm.app.Topology`` with bonds and an ``(N, 3)`` array in nm.

    Example:
        >>> topology, x = capped_alanine_peptide(3)
    """
    from openmm import app

    if int(n_residues) < 1:
        raise BoltzflowError(f"a capped peptide needs at least one residue, got {n_residues}")
    pairs = [EXTENDED] * n_residues if phi_psi is None else phi_psi
    if np.ndim(pairs) == 1:
        pairs = [tuple(pairs)] * n_residues
    if len(pairs) != n_residues or any(len(p) != 2 for p in pairs):
        raise BoltzflowError(f"phi_psi: one (phi, psi) or {n_residues} of them, got {pairs}")
    atoms: list[tuple[int, str, str, np.ndarray]] = []  # residue, name, element, position

    def add(res, name, element, pos):
        atoms.append((res, name, element, pos))
        return pos

    # ACE: its methyl carbon at the origin, its carbonyl carbon on +x, a dummy fixing the plane
    ch3, c_prev = np.zeros(3), np.array([0.1522, 0.0, 0.0])
    dummy = np.array([-0.05, 0.14, 0.0])
    n = place(dummy, ch3, c_prev, C_N, ANGLE_CA_C_N, 180.0)
    ace_o = place(n, ch3, c_prev, C_O, 121.0, 180.0)
    h = [place(ace_o, c_prev, ch3, C_H, TETRAHEDRAL, t) for t in (0.0, 120.0, 240.0)]
    for name, element, pos in (("H1", "H", h[0]), ("CH3", "C", ch3), ("H2", "H", h[1]), ("H3", "H", h[2])):
        add(0, name, element, pos)  # the order of the shipped alanine dipeptide
    add(0, "C", "C", c_prev)
    add(0, "O", "O", ace_o)
    ca_prev = ch3
    for r, (phi, psi) in enumerate(pairs, start=1):
        add(r, "N", "N", n)
        ca = place(ca_prev, c_prev, n, N_CA, ANGLE_C_N_CA, 180.0)
        add(r, "H", "H", place(ca, c_prev, n, N_H, 119.0, 180.0))
        add(r, "CA", "C", ca)
        c = place(c_prev, n, ca, CA_C, ANGLE_N_CA_C, phi)
        add(r, "HA", "H", place(n, c, ca, C_H, TETRAHEDRAL, -120.5))
        cb = add(r, "CB", "C", place(n, c, ca, CA_CB, TETRAHEDRAL, 122.0))
        for k, t in enumerate((60.0, 180.0, 300.0)):
            add(r, f"HB{k + 1}", "H", place(n, ca, cb, C_H, TETRAHEDRAL, t))
        n_next = place(n, ca, c, C_N, ANGLE_CA_C_N, psi)
        add(r, "C", "C", c)
        add(r, "O", "O", place(n_next, ca, c, C_O, ANGLE_CA_C_O, 180.0))
        ca_prev, c_prev, n = ca, c, n_next
    last = n_residues + 1  # NME
    add(last, "N", "N", n)
    ch3 = place(ca_prev, c_prev, n, N_CA, ANGLE_C_N_CA, 180.0)
    add(last, "H", "H", place(ch3, c_prev, n, N_H, 119.0, 180.0))
    add(last, "C", "C", ch3)
    for k, t in enumerate((60.0, 180.0, 300.0)):
        add(last, f"H{k + 1}", "H", place(c_prev, n, ch3, C_H, TETRAHEDRAL, t))
    return _topology(app, atoms, n_residues), np.array([p for *_, p in atoms])


def write_capped_alanine_pdb(path: str | os.PathLike, n_residues: int, forcefield=("amber96.xml", "implicit/obc1.xml"),
                             phi_psi=None) -> Path:
    """Build Ace-(Ala)n-Nme (:func:`capped_alanine_peptide`), minimise it in ``forcefield`` (OpenMM's L-BFGS,
    boltzflow.molecules.system.minimize) and write it as a PDB file.

    Args:
        path: the PDB file to write.
        n_residues: alanines between the caps.
        forcefield: OpenMM force-field XML files typing it for the minimisation.
        phi_psi: the start's backbone torsions (as :func:`capped_alanine_peptide`).

    Returns:
        The path written.

    Example:
        >>> write_capped_alanine_pdb("ace_ala3_nme.pdb", 3)  # doctest: +SKIP
    """
    from openmm import app, unit

    topology, x = capped_alanine_peptide(n_residues, phi_psi)
    with tempfile.TemporaryDirectory() as tmp:
        start = os.path.join(tmp, "start.pdb")
        with open(start, "w") as f:
            app.PDBFile.writeFile(topology, x * 10 * unit.angstrom, f)
        molecule = load_system({"pdb": start, "forcefield": list(forcefield)})
    x_min = minimize(molecule)
    with open(path, "w") as f:
        app.PDBFile.writeFile(topology, x_min * 10 * unit.angstrom, f)
    return Path(path)


def _topology(app, atoms, n_residues: int):
    """The OpenMM topology of ``atoms`` (residue, name, element, position), bonded as a capped peptide."""
    top = app.Topology()
    chain = top.addChain()
    names = ["ACE"] + ["ALA"] * n_residues + ["NME"]
    residues = [top.addResidue(name, chain) for name in names]
    made = [top.addAtom(name, app.Element.getBySymbol(el), residues[r]) for r, name, el, _ in atoms]
    by = {(r, name): a for (r, name, _, _), a in zip(atoms, made)}
    heavy = {"ACE": [("CH3", "C"), ("C", "O")], "ALA": [("N", "CA"), ("CA", "C"), ("C", "O"), ("CA", "CB")],
             "NME": [("N", "C")]}
    for r, res in enumerate(names):
        for a, b in heavy[res]:
            top.addBond(by[r, a], by[r, b])
        if r:
            top.addBond(by[r - 1, "C"], by[r, "N"])
    for (r, name, el, _), atom in zip(atoms, made):  # each hydrogen to its nearest heavy atom of its residue
        if el == "H":
            parent = {"H": "N", "HA": "CA"}.get(name, "CB" if name.startswith("HB") else
                                                 "CH3" if names[r] == "ACE" else "C")
            top.addBond(by[r, parent], atom)
    return top
