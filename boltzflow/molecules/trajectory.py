"""Samples of a molecule as a trajectory file that chemists' tools read (VMD, PyMOL, MDAnalysis, mdtraj).

:func:`write_trajectory` writes conformations x ``(n, 3N)`` in nm with the molecule's topology through mdtraj, the
format chosen by the file's suffix (:data:`FORMATS`), and, when given, the importance log weights beside it in
``FILE.log_w.npy`` (float64, one per frame, in frame order): a frame i stands for the Boltzmann distribution with the
self-normalised weight

    W_i = exp(log w_i) / sum_j exp(log w_j),        log w = log p - log q,

so that an average over p is sum_i W_i f(x_i), not the plain mean over frames. A tool that averages frames
plainly needs unweighted frames: :meth:`boltzflow.run.Run.resample` draws them by systematic importance resampling.

The topology is rebuilt from what :class:`~boltzflow.molecules.system.MolecularSystem` keeps: atom names, elements,
residue names and numbers, bonds; all residues in one chain (the System keeps no chains). Coordinates are written
as they are, in nm (mdtraj's unit; a PDB file shows them in angstrom, as the format wants; XTC keeps 1e-3 nm), with no
unit cell (boltzflow's molecules have no periodic box). mdtraj is needed for this module only and is imported
when it is used; HDF5 (``.h5``) also needs PyTables.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from boltzflow.errors import BoltzflowError
from boltzflow.molecules.system import MolecularSystem

#: Trajectory formats by file suffix (mdtraj writes each by its suffix).
FORMATS = (".pdb", ".dcd", ".xtc", ".h5")
#: What :func:`write_trajectory` appends to the trajectory's path for the log weights.
LOG_W_SUFFIX = ".log_w.npy"


def _mdtraj():
    try:
        import mdtraj
    except ImportError:
        raise BoltzflowError("trajectory files need mdtraj: pip install mdtraj") from None
    return mdtraj


def is_trajectory(path: str | os.PathLike) -> bool:
    """Whether ``path`` names a trajectory format :func:`write_trajectory` writes (by its suffix)."""
    return Path(path).suffix.lower() in FORMATS


def mdtraj_topology(molecule: MolecularSystem):
    """The molecule's topology as an ``mdtraj.Topology`` (one chain; module docstring).

    Args:
        molecule: a :class:`MolecularSystem`.

    Returns:
        ``mdtraj.Topology`` with the molecule's atoms (names, elements), residues and bonds, in its atom order.

    Example:
        >>> top = mdtraj_topology(load_system("aldp_implicit"))   # 22 atoms, 3 residues (ACE, ALA, NME), 21 bonds
    """
    md = _mdtraj()
    top = md.Topology()
    chain = top.add_chain()
    residues, atoms = {}, []
    for name, element, res_name, res in zip(molecule.atom_names, molecule.elements, molecule.residue_names,
                                            np.asarray(molecule.residue_index).tolist()):
        if res not in residues:
            residues[res] = top.add_residue(res_name, chain, resSeq=res + 1)
        atoms.append(top.add_atom(name, md.element.get_by_symbol(element) if element else md.element.virtual,
                                  residues[res]))
    for a, b in np.asarray(molecule.bonds, np.int64).reshape(-1, 2).tolist():
        top.add_bond(atoms[a], atoms[b])
    return top


def write_trajectory(path: str | os.PathLike, molecule: MolecularSystem, x, log_w=None) -> list[Path]:
    """Write conformations as a trajectory with the molecule's topology, and their log weights beside it.

    Args:
        path: the trajectory file; its suffix picks the format (``.pdb``, ``.dcd``, ``.xtc``, ``.h5``).
        molecule: the molecule the conformations are of.
        x: conformations ``(n, 3N)`` (or ``(n, N, 3)``) in nm.
        log_w: importance log weights ``(n,)`` (log p - log q), written to ``path + ".log_w.npy"``; None for
            unweighted frames (resampled, or MD), which writes no weights file.

    Returns:
        The files written: the trajectory, then the weights file if any.

    Example:
        >>> x, log_w = run.sample(jax.random.key(1), 10_000)
        >>> write_trajectory("samples.dcd", run.target.molecule, x, log_w)   # samples.dcd, samples.dcd.log_w.npy
    """
    path = Path(path)
    if not is_trajectory(path):
        raise BoltzflowError(f"{path}: unknown trajectory format {path.suffix!r}; expected one of {', '.join(FORMATS)}")
    xyz = np.asarray(x, np.float32)
    n_atoms = molecule.n_atoms
    if xyz.ndim not in (2, 3) or xyz.size != xyz.shape[0] * 3 * n_atoms:
        raise BoltzflowError(f"conformations of {molecule.name} must have shape (n, {3 * n_atoms}), got {xyz.shape}")
    xyz = xyz.reshape(-1, n_atoms, 3)
    weights = None
    if log_w is not None:
        weights = np.asarray(log_w, np.float64).reshape(-1)
        if weights.shape[0] != xyz.shape[0]:
            raise BoltzflowError(f"{weights.shape[0]} log weights for {xyz.shape[0]} conformations")
    md = _mdtraj()
    trajectory = md.Trajectory(xyz, mdtraj_topology(molecule))
    try:
        trajectory.save(str(path), force_overwrite=True)
    except ImportError as e:  # .h5 without PyTables
        raise BoltzflowError(f"writing {path.suffix} files needs a package mdtraj did not find: {e}") from None
    written = [path]
    if weights is not None:
        weights_path = Path(str(path) + LOG_W_SUFFIX)
        np.save(weights_path, weights)
        written.append(weights_path)
    return written
