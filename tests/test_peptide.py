"""Capped alanine peptides from ideal internal coordinates (boltzflow.molecules.peptide): the built dipeptide is
the shipped alanine dipeptide's molecule (atoms, bonds, handedness, force field), the geometry is what was asked
for, and the shipped Ace-(Ala)3-Nme is a minimum of its force field."""

import numpy as np
import pytest

pytest.importorskip("openmm", reason="molecular tests need OpenMM (pip install 'boltzflow[molecules]')")

from boltzflow.errors import BoltzflowError  # noqa: E402
from boltzflow.molecules.chirality import Chirality  # noqa: E402
from boltzflow.molecules.metrics import dihedral, named_torsions  # noqa: E402
from boltzflow.molecules.peptide import capped_alanine_peptide, place, write_capped_alanine_pdb  # noqa: E402
from boltzflow.molecules.system import load_system  # noqa: E402

FF = ["amber96.xml", "implicit/obc1.xml"]


def _openmm_energy(molecule, x):
    import openmm
    from openmm import unit

    context = openmm.Context(molecule.openmm_system(), openmm.VerletIntegrator(0.001),
                             openmm.Platform.getPlatformByName("Reference"))
    context.setPositions(np.asarray(x, np.float64).reshape(-1, 3))
    return context.getState(getEnergy=True).getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)


def test_place_puts_the_atom_at_its_bond_angle_and_dihedral():
    rng = np.random.default_rng(0)
    for _ in range(20):
        a, b, c = rng.normal(size=(3, 3))
        bond, angle, torsion = rng.uniform(0.1, 0.2), rng.uniform(60, 170), rng.uniform(-179, 179)
        d = place(a, b, c, bond, angle, torsion)
        u, v = b - c, d - c
        assert np.isclose(np.linalg.norm(v), bond)
        assert np.isclose(np.degrees(np.arccos(u @ v / np.linalg.norm(u) / np.linalg.norm(v))), angle)
        assert np.isclose(np.degrees(dihedral(np.concatenate([a, b, c, d])[None], 0, 1, 2, 3)[0]), torsion)


def test_the_built_dipeptide_is_the_shipped_alanine_dipeptide(tmp_path):
    """Same atoms in the same order, same bonds, same handedness; typed by amber96 + implicit/obc1 it has the
    energies of the shipped prmtop (Amber ff96 + OBC1) on the shipped conformation and on the built one."""
    shipped = load_system("aldp_implicit")
    topology, x = capped_alanine_peptide(1, (-80.0, 150.0))
    assert [a.name for a in topology.atoms()] == list(shipped.atom_names)
    assert [a.element.symbol for a in topology.atoms()] == list(shipped.elements)
    bonds = sorted(tuple(sorted((a.index, b.index))) for a, b in topology.bonds())
    assert bonds == sorted(tuple(b) for b in shipped.bonds.tolist())
    chirality = Chirality.from_system(shipped)
    assert bool(chirality.mask(x.reshape(1, -1))[0])  # L-alanine, as the shipped structure
    built = load_system({"pdb": str(write_capped_alanine_pdb(tmp_path / "aldp.pdb", 1, FF)), "forcefield": FF})
    for conformation in (shipped.positions, built.positions):
        assert abs(_openmm_energy(built, conformation) - _openmm_energy(shipped, conformation)) < 1e-3


def test_geometry_is_as_asked():
    pairs = [(-60.0, -45.0), (-150.0, 150.0), (60.0, 40.0)]
    topology, x = capped_alanine_peptide(3, pairs)
    names = [(a.residue.index, a.name) for a in topology.atoms()]
    at = {k: i for i, k in enumerate(names)}
    flat = x.reshape(1, -1)
    for r, (phi, psi) in enumerate(pairs, start=1):
        got_phi = dihedral(flat, at[r - 1, "C"], at[r, "N"], at[r, "CA"], at[r, "C"])[0]
        got_psi = dihedral(flat, at[r, "N"], at[r, "CA"], at[r, "C"], at[r + 1, "N"])[0]
        np.testing.assert_allclose(np.degrees([got_phi, got_psi]), [phi, psi], atol=1e-8)
        omega = dihedral(flat, at[r, "CA"], at[r, "C"], at[r + 1, "N"], at[r + 1, "CA" if r < 3 else "C"])[0]
        assert abs(abs(np.degrees(omega)) - 180) < 1e-8
        assert np.isclose(np.linalg.norm(x[at[r, "N"]] - x[at[r, "CA"]]), 0.1458)
    lengths = [np.linalg.norm(x[a.index] - x[b.index]) for a, b in topology.bonds()]
    assert 0.1 < min(lengths) and max(lengths) < 0.16  # every bond a covalent bond
    distances = np.linalg.norm(x[:, None] - x[None], axis=-1)[np.triu_indices(len(x), 1)]
    assert distances.min() > 0.09  # no two atoms on top of each other


def test_the_shipped_tetrapeptide_is_a_minimum_with_named_torsions():
    molecule = load_system("ace_ala3_nme_implicit")
    assert molecule.name == "ace_ala3_nme_implicit" and molecule.dim == 126
    residues = dict(zip(molecule.residue_index, molecule.residue_names))
    assert [residues[i] for i in sorted(residues)] == ["ACE", "ALA", "ALA", "ALA", "NME"]
    torsions = named_torsions(molecule)
    assert {f"{k}_{i}" for k in ("phi", "psi") for i in (1, 2, 3)} <= set(torsions)
    x = molecule.positions
    e0 = _openmm_energy(molecule, x)
    rng = np.random.default_rng(1)
    assert all(_openmm_energy(molecule, x + rng.normal(0, 2e-3, x.shape)) > e0 for _ in range(5))


def test_mistakes_are_one_line_errors():
    with pytest.raises(BoltzflowError, match="at least one residue"):
        capped_alanine_peptide(0)
    with pytest.raises(BoltzflowError, match="phi_psi"):
        capped_alanine_peptide(2, [(-60.0, -45.0)])
