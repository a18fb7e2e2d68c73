"""Molecules: OpenMM Systems as energies, in JAX or through OpenMM itself, and the chemistry boltzflow needs.

Nothing here knows about targets, flows or training (this layer sits below ``boltzflow.targets``):

- :mod:`.system`: read a molecule (built-in alanine dipeptide, prmtop, PDB + force field, openmmtools) into a
  :class:`~.system.MolecularSystem`; energy minimisation.
- :mod:`.forcefield`: the System's force field in JAX (bonds, angles, torsions, LJ + Coulomb, OBC GB).
- :mod:`.openmm_engine`: OpenMM in a pool of worker processes, callable from jitted JAX.
- :mod:`.zmatrix`: a Z-matrix from the bond graph; Cartesian <-> internal coordinates and their log-det.
- :mod:`.chirality`: stereocentres and the L/D filter.
- :mod:`.md`: replica-exchange Langevin MD (BAOAB), batched and resumable: reference data.
- :mod:`.reference`: reference sets (writing, loading, the shipped ones), basin populations with block errors.
- :mod:`.metrics`: dihedrals, named torsions, histogram KL of torsion marginals and Ramachandran plots.
"""
