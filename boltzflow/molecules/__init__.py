"""Molecules: OpenMM Systems as energies, in JAX or through OpenMM itself, and the chemistry boltzflow needs.

Nothing here knows about targets, flows or training (this layer sits below ``boltzflow.targets``):

- :mod:`.system`: read a molecule (built-in alanine dipeptide, prmtop, PDB + force field, openmmtools) into a
  :class:`~.system.MolecularSystem`; energy minimisation.
- :mod:`.forcefield`: the System's force field in JAX (bonds, angles, torsions, LJ + Coulomb, GBSAOBCForce, and
  through :mod:`.custom_forces` / :mod:`.cmap` every Custom*Force and CMAP map openmm.app builds, compiled from
  OpenMM's own expressions by :mod:`.expression` and :mod:`.tabulated`; :mod:`.geometry` the shared geometry).
- :mod:`.openmm_engine`: OpenMM in a pool of worker processes, callable from jitted JAX.
- :mod:`.zmatrix`: a Z-matrix from the bond graph (several molecules joined by links); Cartesian <-> internal
  coordinates and their log-det.
- :mod:`.chirality`: stereocentres and the L/D filter.
- :mod:`.md`: replica-exchange Langevin MD (BAOAB), batched and resumable: reference data.
- :mod:`.reference`: reference sets (writing, loading, the shipped ones), basin populations with block errors.
- :mod:`.metrics`: dihedrals, named torsions (backbone, methyls, every rotatable bond), histogram KL of torsion
  marginals and Ramachandran plots, poses of several molecules.
- :mod:`.trajectory`: samples as a trajectory file (PDB, DCD, XTC, HDF5) with the topology, log weights beside it.
- :mod:`.free_energy`: free-energy surfaces of two collective variables and state free energies from weighted
  samples, with bootstrap errors (:mod:`.free_energy_plot` draws a surface; imported on its own: matplotlib).
"""

from boltzflow.molecules.chirality import Chirality, find_stereocentres
from boltzflow.molecules.free_energy import (ALANINE_DIPEPTIDE_STATES, FreeEnergySurface, StateFreeEnergies,
                                             collective_variables, cv_values, free_energy_surface,
                                             state_free_energies)
from boltzflow.molecules.forcefield import ForceFieldParams, batched_energy, energy_terms, read_forcefield
from boltzflow.molecules.md import geometric_temperatures, run_replica_exchange
from boltzflow.molecules.metrics import (basin_populations, dihedral, histogram_kl, molecular_metrics, named_torsions,
                                         pose_rmsd, ramachandran_kl, ramachandran_pairs, torsion_angles, torsion_kl)
from boltzflow.molecules.openmm_engine import OpenMMEngine
from boltzflow.molecules.reference import load_reference, write_compact, write_reference
from boltzflow.molecules.system import MolecularSystem, as_one_residue, load_system, minimize
from boltzflow.molecules.trajectory import mdtraj_topology, write_trajectory
from boltzflow.molecules.zmatrix import ZMatrix, build_zmatrix, cartesian_to_internal, internal_to_cartesian

__all__ = ["Chirality", "find_stereocentres", "ForceFieldParams", "batched_energy", "energy_terms",
           "read_forcefield", "geometric_temperatures", "run_replica_exchange", "basin_populations", "dihedral",
           "histogram_kl", "molecular_metrics", "named_torsions", "pose_rmsd", "ramachandran_kl", "ramachandran_pairs",
           "torsion_angles", "torsion_kl", "OpenMMEngine", "load_reference", "write_compact", "write_reference",
           "MolecularSystem", "as_one_residue", "load_system", "minimize", "ZMatrix", "build_zmatrix", "cartesian_to_internal",
           "internal_to_cartesian", "ALANINE_DIPEPTIDE_STATES", "FreeEnergySurface", "StateFreeEnergies",
           "collective_variables", "cv_values", "free_energy_surface", "state_free_energies", "mdtraj_topology",
           "write_trajectory"]
