"""Molecules: OpenMM Systems as energies, in JAX or through OpenMM itself, and the chemistry boltzflow needs.

Nothing here knows about targets, flows or training (this layer sits below ``boltzflow.targets``):

- :mod:`.system`: read a molecule (built-in alanine dipeptide, prmtop, PDB + force field, openmmtools) into a
  :class:`MolecularSystem`; energy minimisation.
"""
