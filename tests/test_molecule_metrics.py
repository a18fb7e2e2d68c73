"""Torsion metrics of molecules: dihedrals agree with mdtraj and with a configuration whose angle is known, named
torsions come out of the topology with alanine dipeptide's known atoms, the histogram KL matches analytic von Mises
KLs (reweighting included), basin populations and block standard errors behave, and the plots are written."""

import importlib.util
import types
import warnings

import matplotlib.figure
import matplotlib.image
import numpy as np
import pytest
from scipy.special import i0e, i1e

from boltzflow.errors import BoltzflowError
from boltzflow.molecules.metrics import (
    basin_populations,
    block_standard_error,
    dihedral,
    molecular_metrics,
    named_torsions,
    pose_rmsd,
    ramachandran_kl,
    ramachandran_pairs,
    torsion_angles,
    torsion_kl,
)
from boltzflow.molecules.system import load_system, openmmtools_data_dir
from boltzflow.plot import plot_molecule_samples, plot_ramachandran, plot_torsion_marginals

ALDP_NAMES = ["H1", "CH3", "H2", "H3", "C", "O", "N", "H", "CA", "HA", "CB", "HB1", "HB2", "HB3", "C", "O", "N", "H",
              "C", "H1", "H2", "H3"]
ALDP_BONDS = [[0, 1], [1, 2], [1, 3], [1, 4], [4, 5], [4, 6], [6, 7], [6, 8], [8, 9], [8, 10], [8, 14], [10, 11],
              [10, 12], [10, 13], [14, 15], [14, 16], [16, 17], [16, 18], [18, 19], [18, 20], [18, 21]]
ALDP_TORSIONS = {"phi": (4, 6, 8, 14), "psi": (6, 8, 14, 16), "omega_1": (1, 4, 6, 8), "omega_2": (8, 14, 16, 18),
                 "gamma1": (0, 1, 4, 6), "gamma2": (11, 10, 8, 6), "gamma3": (19, 18, 16, 14)}


def _peptide(n_ala: int):
    """Topology (no OpenMM) of ACE-(ALA)_n-NME with Amber atom names, in the order of the alanine dipeptide files."""
    names, elements, residue, bonds = [], [], [], []

    def add(name, element, r):
        names.append(name), elements.append(element), residue.append(r)
        return len(names) - 1

    h1, ch3, h2, h3 = add("H1", "H", 0), add("CH3", "C", 0), add("H2", "H", 0), add("H3", "H", 0)
    c, o = add("C", "C", 0), add("O", "O", 0)
    bonds += [(h1, ch3), (ch3, h2), (ch3, h3), (ch3, c), (c, o)]
    for r in range(1, n_ala + 1):
        n, h, ca, ha, cb = add("N", "N", r), add("H", "H", r), add("CA", "C", r), add("HA", "H", r), add("CB", "C", r)
        hb = [add(f"HB{k}", "H", r) for k in (1, 2, 3)]
        c_new, o = add("C", "C", r), add("O", "O", r)
        bonds += [(c, n), (n, h), (n, ca), (ca, ha), (ca, cb), (ca, c_new), (c_new, o)] + [(cb, x) for x in hb]
        c = c_new
    r = n_ala + 1
    n, h, cm = add("N", "N", r), add("H", "H", r), add("C", "C", r)
    bonds += [(c, n), (n, h), (n, cm)] + [(cm, add(f"H{k}", "H", r)) for k in (1, 2, 3)]
    return types.SimpleNamespace(atom_names=tuple(names), elements=tuple(elements), residue_index=np.array(residue),
                                 bonds=np.array(sorted(tuple(sorted(b)) for b in bonds)))


def _chain(names, residues=None, residue_names=None):
    """Topology (no OpenMM) of a saturated chain of heavy atoms named ``names`` (element: the name's first letter),
    each filled up with hydrogens (C: 4 bonds, O: 2, N: 3), heavy atoms first, then each one's hydrogens."""
    elements = [n[0] for n in names]
    bonds = [(a, a + 1) for a in range(len(names) - 1)]
    res = list(residues) if residues is not None else [0] * len(names)
    atom_names, all_elements, all_res = list(names), list(elements), list(res)
    for a, e in enumerate(elements):
        for _ in range({"C": 4, "O": 2, "N": 3}[e] - sum(a in b for b in bonds)):
            bonds.append((a, len(atom_names)))
            atom_names.append(f"H{len(atom_names) - len(names) + 1}"), all_elements.append("H"), all_res.append(res[a])
    rn = residue_names or {r: "MOL" for r in res}
    return types.SimpleNamespace(atom_names=tuple(atom_names), elements=tuple(all_elements),
                                 residue_index=np.array(all_res), residue_names=tuple(rn[r] for r in all_res),
                                 bonds=np.array(sorted(bonds)))


def _openmmtools(name):
    pytest.importorskip("openmm", reason="openmmtools test systems need OpenMM")
    if importlib.util.find_spec("openmmtools") is None:
        pytest.skip("needs openmmtools")
    return load_system({"openmmtools": name})


def _in_no_ring(mol, j, k):
    """Brute force: atoms j and k are no longer connected once the bond j - k is cut."""
    nb = {a: set() for a in range(len(mol.atom_names))}
    for a, b in np.asarray(mol.bonds).tolist():
        if {a, b} != {j, k}:
            nb[a].add(b), nb[b].add(a)
    seen, todo = {j}, [j]
    while todo:
        for b in nb[todo.pop()] - seen:
            seen.add(b), todo.append(b)
    return k not in seen


def _check_paths(mol, torsions):
    bonds = {tuple(sorted(b)) for b in np.asarray(mol.bonds).tolist()}
    for name, (i, j, k, l) in torsions.items():  # noqa: E741
        assert len({i, j, k, l}) == 4, name
        assert {tuple(sorted(p)) for p in ((i, j), (j, k), (k, l))} <= bonds, name


def _aldp():
    """The built-in alanine dipeptide (OpenMM reads openmmtools' files; openmmtools itself is not imported)."""
    pytest.importorskip("openmm", reason="loading alanine dipeptide needs OpenMM")
    if importlib.util.find_spec("openmmtools") is None:
        pytest.skip("the built-in alanine dipeptide files come with openmmtools")
    return load_system("aldp_implicit")


# --------------------------------------------------------------------------------------------------- dihedrals


def test_dihedral_of_a_known_configuration_and_its_range():
    t = np.linspace(-np.pi, np.pi, 181)[1:]  # (-pi, pi]
    x = np.zeros((t.size, 4, 3))
    x[:, 0] = [1, 0, 0]
    x[:, 2] = [0, 0, 1]
    x[:, 3, 0], x[:, 3, 1], x[:, 3, 2] = np.cos(t), np.sin(t), 1  # l turned by t about the j -> k axis
    np.testing.assert_allclose(dihedral(x.reshape(t.size, 12), 0, 1, 2, 3), t, atol=1e-12)
    x[:, 3] = [-1.0, -0.0, 1.0]  # atan2(-0., -1) would say -pi: trans is +pi
    assert np.all(dihedral(x, 0, 1, 2, 3) == np.pi)
    x[:, 3] = [0.0, 0.0, 2.0]  # l on the j -> k axis: undefined
    assert np.all(np.isnan(dihedral(x, 0, 1, 2, 3)))
    with pytest.raises(BoltzflowError):
        dihedral(np.zeros((2, 10)), 0, 1, 2, 3)


def test_dihedral_agrees_with_mdtraj():
    md = pytest.importorskip("mdtraj", reason="mdtraj is the independent implementation")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(500, 6, 3))
    top = md.Topology()
    res = top.add_residue("X", top.add_chain())
    for k in range(6):
        top.add_atom(f"C{k}", md.element.carbon, res)
    quads = np.array([[0, 1, 2, 3], [5, 2, 4, 1], [3, 0, 5, 2]])
    ref = md.compute_dihedrals(md.Trajectory(x, top), quads, periodic=False, opt=False)
    for q, expected in zip(quads, ref.T):
        got = dihedral(x.reshape(500, 18), *q)
        assert np.all((got > -np.pi) & (got <= np.pi))
        np.testing.assert_allclose(got, expected, atol=1e-5)


# ------------------------------------------------------------------------------------------------ named torsions


def test_named_torsions_of_alanine_dipeptide_from_the_topology():
    mol = _peptide(1)
    assert list(mol.atom_names) == ALDP_NAMES and mol.bonds.tolist() == ALDP_BONDS
    assert named_torsions(mol) == ALDP_TORSIONS
    assert ramachandran_pairs(mol) == [("phi", "psi")]


def test_named_torsions_of_a_longer_peptide_are_numbered():
    mol = _peptide(3)  # ACE-ALA-ALA-ALA-NME
    t = named_torsions(mol)
    assert [k for k in t if k.startswith("phi")] == ["phi_1", "phi_2", "phi_3"]
    assert [k for k in t if k.startswith("psi")] == ["psi_1", "psi_2", "psi_3"]
    assert [k for k in t if k.startswith("omega")] == ["omega_1", "omega_2", "omega_3", "omega_4"]
    assert [k for k in t if k.startswith("gamma")] == [f"gamma{k}" for k in range(1, 6)]
    names = mol.atom_names
    for k in (1, 2, 3):
        assert [names[a] for a in t[f"phi_{k}"]] == ["C", "N", "CA", "C"]
        assert [names[a] for a in t[f"psi_{k}"]] == ["N", "CA", "C", "N"]
        assert mol.residue_index[t[f"phi_{k}"][1]] == k and mol.residue_index[t[f"psi_{k}"][1]] == k
    assert ramachandran_pairs(mol) == [("phi_1", "psi_1"), ("phi_2", "psi_2"), ("phi_3", "psi_3")]
    assert len(t) == 3 + 3 + 4 + 5  # no other rotatable bond: the rest end in an H or a carbonyl O


def test_rotatable_bonds_of_chains_are_named_once():
    # butane: the two methyls are gammas, the central bond a torsion C1-C2-C3-C4
    butane = _chain(["C1", "C2", "C3", "C4"])
    t = named_torsions(butane)
    assert t == {"gamma1": (4, 0, 1, 2), "gamma2": (11, 3, 2, 1), "torsion C2-C3": (0, 1, 2, 3)}
    # ethane and methanol: no methyl with a second heavy atom beyond it, so their one rotatable bond is a torsion,
    # its end atoms the lowest-index hydrogens
    assert named_torsions(_chain(["C1", "C2"])) == {"torsion C1-C2": (2, 0, 1, 5)}
    assert named_torsions(_chain(["C1", "O1"])) == {"torsion C1-O1": (2, 0, 1, 5)}
    # propan-1-ol: heavy atoms before hydrogens at each end
    t = named_torsions(_chain(["C1", "C2", "C3", "O1"]))
    assert t == {"gamma1": (4, 0, 1, 2), "torsion C2-C3": (0, 1, 2, 3), "torsion C3-O1": (1, 2, 3, 11)}
    # two residues: the residue (name and number from 1) prefixes the names; a bond between residues names both
    mol = _chain(["C1", "C2", "C3", "C1", "C2", "C3"], [0, 0, 0, 1, 1, 1], {0: "LIG", 1: "ETX"})
    t = named_torsions(mol)
    assert list(t) == ["gamma1", "gamma2", "torsion LIG1:C2-C3", "torsion LIG1:C3-ETX2:C1", "torsion ETX2:C1-C2"]
    assert t["torsion LIG1:C3-ETX2:C1"] == (1, 2, 3, 4)
    # repeated atom names: the atom indices keep the names unique
    hexane = _chain(["C"] * 6)
    assert [k for k in named_torsions(hexane) if k.startswith("torsion")] == [
        "torsion C-C [1-2]", "torsion C-C [2-3]", "torsion C-C [3-4]"]
    for m in (butane, mol, hexane):
        _check_paths(m, named_torsions(m))


def test_named_torsions_of_toluene():
    mol = _openmmtools("TolueneVacuum")
    t = named_torsions(mol)
    # the methyl C7 is gamma1 (H6-C7-C6-C4); the ring bonds are not rotatable, the C-H bonds end in an H
    assert t == {"gamma1": (12, 6, 5, 3)}
    assert [mol.atom_names[a] for a in t["gamma1"]] == ["H6", "C7", "C6", "C4"]
    ring = [b for b in mol.bonds.tolist() if not _in_no_ring(mol, *b)]
    assert len(ring) == 6 and all(mol.elements[a] == "C" and mol.elements[b] == "C" for a, b in ring)


def test_named_torsions_of_host_guest():
    mol = _openmmtools("HostGuestVacuum")  # cucurbit[7]uril (CUC) and a guest (B2) with two CH2-OH arms
    t = named_torsions(mol)
    assert t == {"torsion B22:C3-C10": (127, 128, 136, 137), "torsion B22:C4-C9": (126, 129, 134, 135),
                 "torsion B22:C9-O1": (129, 134, 135, 152), "torsion B22:C10-O2": (128, 136, 137, 155)}
    _check_paths(mol, t)
    assert len(set(t)) == len(t)
    assert all(mol.residue_names[a] == "B2" for q in t.values() for a in q)
    assert [[mol.atom_names[a] for a in q] for q in t.values()] == [
        ["C2", "C3", "C10", "O2"], ["C1", "C4", "C9", "O1"], ["C4", "C9", "O1", "H15"], ["C3", "C10", "O2", "H18"]]
    # every bond between two non-terminal atoms in no ring is one of them (the host's are all in rings)
    nb = np.bincount(mol.bonds.ravel(), minlength=mol.n_atoms)
    rotatable = {tuple(b) for b in mol.bonds.tolist() if nb[b[0]] > 1 and nb[b[1]] > 1 and _in_no_ring(mol, *b)}
    assert rotatable == {tuple(sorted(q[1:3])) for q in t.values()}
    assert ramachandran_pairs(mol) == []


def test_pose_rmsd_is_rigid_motion_invariant_and_sees_the_guest_move():
    mol = _openmmtools("HostGuestVacuum")
    rng = np.random.default_rng(0)
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    rot = q * np.sign(np.diag(r)) * np.sign(np.linalg.det(q * np.sign(np.diag(r))))  # a proper rotation
    x0 = mol.positions
    moved = x0 @ rot.T + rng.normal(size=3)  # the whole complex turned and shifted: still the starting pose
    guest = np.asarray(mol.residue_names) == "B2"
    shifted = x0.copy()
    shifted[guest] += [0.3, 0.0, 0.0]  # the guest pulled 0.3 nm out of the cavity
    rmsd = pose_rmsd(np.stack([x0, moved, shifted @ rot.T]), mol)
    assert rmsd.shape == (3, 1)
    np.testing.assert_allclose(rmsd[:2, 0], 0, atol=1e-9)
    np.testing.assert_allclose(rmsd[2, 0], 0.3, atol=1e-9)
    toluene = _openmmtools("TolueneVacuum")  # one molecule: no pose
    assert pose_rmsd(toluene.positions[None], toluene).shape == (1, 0)


def test_named_torsions_of_the_built_in_alanine_dipeptide():
    md = pytest.importorskip("mdtraj", reason="mdtraj checks phi / psi independently")
    mol = _aldp()
    t = named_torsions(mol)
    assert t == ALDP_TORSIONS
    x = mol.positions.reshape(1, -1)
    values = {k: float(dihedral(x, *q)[0]) for k, q in t.items()}
    assert abs(values["omega_1"]) > np.deg2rad(150) and abs(values["omega_2"]) > np.deg2rad(150)  # trans peptides
    # the built-in structure is the idealised fully extended one: phi = psi = 180 deg, methyls at multiples of 60 deg
    assert abs(values["phi"]) == pytest.approx(np.pi, abs=0.02) and abs(values["psi"]) == pytest.approx(np.pi, abs=0.02)
    for k in ("gamma1", "gamma2", "gamma3"):
        sixths = values[k] / (np.pi / 3)
        assert sixths == pytest.approx(round(sixths), abs=0.05)
    # the same numbers from mdtraj's own phi / psi on the OpenMM topology
    import openmm.app as app
    top = md.Topology.from_openmm(app.AmberPrmtopFile(
        openmmtools_data_dir() + "/alanine-dipeptide-gbsa/alanine-dipeptide.prmtop").topology)
    traj = md.Trajectory(mol.positions[None], top)
    (phi_idx,), (phi,) = md.compute_phi(traj)[0], md.compute_phi(traj)[1][0]
    (psi_idx,), (psi,) = md.compute_psi(traj)[0], md.compute_psi(traj)[1][0]
    assert tuple(phi_idx) == t["phi"] and tuple(psi_idx) == t["psi"]
    assert values["phi"] == pytest.approx(phi, abs=1e-5) and values["psi"] == pytest.approx(psi, abs=1e-5)


# ---------------------------------------------------------------------------------------------------- KL


def _vm_log_pdf(x, mu, kappa):
    return kappa * (np.cos(x - mu) - 1) - np.log(2 * np.pi * i0e(kappa))


def _vm_kl(mu1, k1, mu2, k2):
    """KL(VM(mu1, k1) || VM(mu2, k2)) = log I0(k2) / I0(k1) + A(k1) (k1 - k2 cos(mu1 - mu2)), A = I1 / I0."""
    a1 = i1e(k1) / i0e(k1)
    return np.log(i0e(k2) / i0e(k1)) + (k2 - k1) + a1 * (k1 - k2 * np.cos(mu1 - mu2))


def test_kl_of_a_histogram_with_itself_is_zero():
    rng = np.random.default_rng(1)
    a = rng.vonmises(0.5, 2.0, size=(5000, 2))
    assert torsion_kl(a[:, 0], a[:, 0]) == 0.0
    assert ramachandran_kl(a, a) == 0.0
    assert torsion_kl(a[:, 0], a[:, 0] + 2 * np.pi) == pytest.approx(0.0, abs=1e-12)  # angles are wrapped
    assert torsion_kl(a[:, 0], a[:, 0], model_log_w=np.zeros(5000)) == pytest.approx(0.0, abs=1e-12)


# Tolerances: with B occupied bins and n samples per histogram the plug-in KL is biased by about B / n (reference
# and model each add ~B / 2n) and scatters by ~sqrt(Var[log p/q] / n); binning biases it by O(bin width^2). With
# n = 4e5 (1-D, B = 100) that is ~3e-4; with n = 2e6 (2-D, B = 1e4) ~5e-3.


def test_torsion_kl_matches_the_analytic_von_mises_kl():
    rng = np.random.default_rng(2)
    n = 400_000
    p, q = rng.vonmises(0.5, 2.0, n), rng.vonmises(-0.3, 1.0, n)
    assert torsion_kl(p, q) == pytest.approx(_vm_kl(0.5, 2.0, -0.3, 1.0), abs=5e-3)


def test_ramachandran_kl_matches_the_analytic_von_mises_kl():
    rng = np.random.default_rng(3)
    n = 2_000_000
    p = np.stack([rng.vonmises(0.5, 2.0, n), rng.vonmises(-1.0, 1.5, n)], 1)
    q = np.stack([rng.vonmises(0.0, 1.0, n), rng.vonmises(0.0, 1.0, n)], 1)
    exact = _vm_kl(0.5, 2.0, 0.0, 1.0) + _vm_kl(-1.0, 1.5, 0.0, 1.0)  # independent angles: the KLs add
    assert ramachandran_kl(p, q) == pytest.approx(exact, abs=2e-2)


def test_reweighting_samples_of_a_to_b_gives_the_kl_to_b():
    # B is broader than the reference, so that its histogram has no empty bin where the reference has mass (an
    # empty model bin costs p log(p / eps) with eps = 1e-10: the plug-in estimator's weak spot, not reweighting's)
    rng = np.random.default_rng(4)
    n = 1_000_000
    ref = rng.vonmises(0.5, 3.0, n)
    a = rng.vonmises(0.0, 0.5, n)  # broad proposal A
    b = rng.vonmises(0.8, 2.0, n)  # samples of B itself
    log_w = _vm_log_pdf(a, 0.8, 2.0) - _vm_log_pdf(a, 0.0, 0.5) + 7.0  # A -> B, unnormalised
    exact = _vm_kl(0.5, 3.0, 0.8, 2.0)  # 0.121, against 0.551 to A
    kl_b, kl_rw = torsion_kl(ref, b), torsion_kl(ref, a, model_log_w=log_w)
    assert kl_b == pytest.approx(exact, abs=5e-3)
    assert kl_rw == pytest.approx(kl_b, abs=1e-2)
    assert torsion_kl(ref, a) == pytest.approx(_vm_kl(0.5, 3.0, 0.0, 0.5), abs=5e-3)  # unweighted: the KL to A

    # 2-D: (A, C) reweighted to (B, C), against samples of (B, C); the reference is (ref, C)
    c = [rng.vonmises(0.0, 1.0, n) for _ in range(3)]
    ref2, a2, b2 = np.stack([ref, c[0]], 1), np.stack([a, c[1]], 1), np.stack([b, c[2]], 1)
    kl_b2 = ramachandran_kl(ref2, b2)
    assert kl_b2 == pytest.approx(exact, abs=3e-2)
    assert ramachandran_kl(ref2, a2, log_w) == pytest.approx(kl_b2, abs=3e-2)


def test_non_finite_weights_count_as_zero_and_all_zero_gives_nan():
    rng = np.random.default_rng(5)
    ref, model = rng.vonmises(0.0, 1.0, 3000), rng.vonmises(0.3, 1.0, 3000)
    log_w = rng.normal(size=3000)
    bad = rng.random(3000) < 0.2
    poisoned = log_w.copy()
    poisoned[bad] = rng.choice([np.nan, np.inf, -np.inf], size=bad.sum())
    assert torsion_kl(ref, model, poisoned) == pytest.approx(torsion_kl(ref, model[~bad], log_w[~bad]), abs=1e-12)
    phi_psi_ref, phi_psi_model = np.stack([ref, ref], 1), np.stack([model, model], 1)
    model_nan = model.copy()
    model_nan[:5] = np.nan  # an undefined angle is left out
    assert torsion_kl(ref, model_nan) == pytest.approx(torsion_kl(ref, model[5:]), abs=1e-12)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert np.isnan(torsion_kl(ref, model, np.full(3000, -np.inf)))
        assert np.isnan(ramachandran_kl(phi_psi_ref, phi_psi_model, np.full(3000, np.nan)))
        assert np.isnan(torsion_kl(ref, np.full(3000, np.nan)))
    with pytest.raises(BoltzflowError):
        torsion_kl(ref, model, np.zeros(10))
    with pytest.raises(BoltzflowError):
        ramachandran_kl(ref, phi_psi_model)


def test_molecular_metrics_of_alanine_dipeptide():
    mol = _aldp()
    rng = np.random.default_rng(6)
    x0 = mol.positions.reshape(1, -1)
    ref = x0 + 0.01 * rng.normal(size=(4000, x0.shape[1]))
    model = x0 + 0.01 * rng.normal(size=(4000, x0.shape[1]))
    m = molecular_metrics(mol, ref, model)
    assert set(m) == {f"kl_{k}" for k in ALDP_TORSIONS} | {"kl_ramachandran"}
    assert all(np.isfinite(v) and v >= -1e-9 for v in m.values())
    assert m["kl_phi"] < 0.1  # same distribution: only the sampling noise of 4000 samples in 100 bins
    far = model.reshape(4000, 22, 3).copy()
    u = rng.normal(size=(4000, 3))  # put H1 of NME's methyl anywhere on a sphere around its carbon
    far[:, 19] = far[:, 18] + 0.109 * u / np.linalg.norm(u, axis=1, keepdims=True)
    log_w = rng.normal(size=4000)
    log_w[:10] = np.nan
    m2 = molecular_metrics(mol, ref, far.reshape(4000, -1), log_w)
    assert set(m2) == set(m) | {k + "_reweighted" for k in m}
    assert m2["kl_gamma3"] > 1.0 and m2["kl_phi"] == pytest.approx(m["kl_phi"])
    m3 = molecular_metrics(mol, ref, model, np.full(4000, -np.inf))
    assert np.isnan(m3["kl_ramachandran_reweighted"]) and np.isfinite(m3["kl_ramachandran"])
    with pytest.raises(BoltzflowError):
        molecular_metrics(mol, ref, model[:, :60])
    # the same metrics from the torsion angles alone (what an evaluation of millions of samples keeps)
    torsions = named_torsions(mol)
    angles = torsion_angles(far.reshape(4000, -1), torsions)
    assert molecular_metrics(mol, torsion_angles(ref, torsions), angles, log_w) == m2
    for bad in ({k: v for k, v in angles.items() if k != "phi"}, {**angles, "phi": angles["phi"][:10]}):
        with pytest.raises(BoltzflowError, match="torsion angles must be"):
            molecular_metrics(mol, ref, bad)


@pytest.mark.parametrize("system", ["TolueneVacuum", "HostGuestVacuum"])
def test_molecular_metrics_and_plots_of_a_molecule_without_a_backbone(system, tmp_path, saved):
    from boltzflow.molecules.chirality import Chirality

    mol = _openmmtools(system)
    rng = np.random.default_rng(11)
    x0 = mol.positions.reshape(1, -1)
    ref = x0 + 0.01 * rng.normal(size=(2000, x0.shape[1]))
    model = x0 + 0.01 * rng.normal(size=(2000, x0.shape[1]))
    m = molecular_metrics(mol, ref, model, rng.normal(size=2000))
    torsions = named_torsions(mol)
    assert set(m) == {f"kl_{k}{s}" for k in torsions for s in ("", "_reweighted")}
    assert all(np.isfinite(v) for v in m.values()) and not any("ramachandran" in k for k in m)
    target = types.SimpleNamespace(molecule=mol, chirality=Chirality.from_system(mol))
    paths = plot_molecule_samples(target, model, rng.normal(size=2000), tmp_path, reference_x=ref)
    assert [p.name for p in paths] == ["torsions.png"]
    assert [ax.get_xlabel() for ax in saved[0].axes] == [r"$\gamma_{1}$" if k == "gamma1" else k for k in torsions]


# ------------------------------------------------------------------------------------------- basins, blocks


def test_basin_populations():
    rng = np.random.default_rng(7)
    phi, psi = rng.uniform(-np.pi, np.pi, 200_000), rng.uniform(-np.pi, np.pi, 200_000)
    pop = basin_populations(phi, psi)
    assert pop["phi_negative"] + pop["phi_positive"] == pytest.approx(1.0)
    assert pop["alpha_R"] + pop["beta"] == pytest.approx(pop["phi_negative"])
    assert pop["phi_positive"] == pytest.approx(0.5, abs=4 * pop["phi_positive_se"])
    assert pop["alpha_R"] == pytest.approx(0.5 * 170 / 360, abs=4 * pop["alpha_R_se"])
    assert pop["phi_positive_se"] == pytest.approx(np.sqrt(0.25 / 200_000), rel=0.01)
    # weights that kill the phi > 0 half
    log_w = np.where(phi > 0, -np.inf, 0.0)
    pop_w = basin_populations(phi, psi, log_w)
    assert pop_w["phi_positive"] == 0.0 and pop_w["phi_negative"] == pytest.approx(1.0)
    # reweighting uniform phi to a von Mises around 1.0 gives that distribution's phi > 0 mass
    lw = 2.0 * np.cos(phi - 1.0)
    t = np.linspace(-np.pi, np.pi, 200_001)
    dens = np.exp(2.0 * np.cos(t - 1.0))
    exact = dens[t > 0].sum() / dens.sum()
    assert basin_populations(phi, psi, lw)["phi_positive"] == pytest.approx(exact, abs=0.01)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert np.isnan(basin_populations(phi, psi, np.full(phi.size, np.nan))["phi_positive"])


def test_block_standard_error():
    rng = np.random.default_rng(8)
    white = rng.normal(size=40_000)
    assert block_standard_error(white) == pytest.approx(1 / np.sqrt(40_000), rel=0.5)
    ar = np.empty(40_000)  # AR(1), rho = 0.9: the se of the mean is sqrt((1 + rho) / (1 - rho)) = 4.4 times larger
    ar[0] = 0.0
    noise = rng.normal(size=40_000) * np.sqrt(1 - 0.81)
    for k in range(1, ar.size):
        ar[k] = 0.9 * ar[k - 1] + noise[k]
    assert block_standard_error(ar) > 2.5 / np.sqrt(40_000)
    assert np.isnan(block_standard_error(np.ones(5)))
    assert block_standard_error(np.ones(100)) == 0.0


# ------------------------------------------------------------------------------------------------------ plots



def test_plot_ramachandran_writes_the_panels(tmp_path, saved):
    rng = np.random.default_rng(9)
    phi, psi = rng.vonmises(-1.5, 2.0, 5000), rng.vonmises(2.5, 2.0, 5000)
    panels = [("reference", phi, psi, None), ("model", phi + 0.3, psi, None),
              ("model, reweighted", phi + 0.3, psi, rng.normal(size=5000)), ("dead", phi, psi, np.full(5000, np.nan))]
    out = plot_ramachandran(panels, tmp_path / "rama.png")
    img = matplotlib.image.imread(out)
    assert img.ndim == 3 and img.shape[1] > img.shape[0]
    (fig,) = saved
    assert len(fig.axes) == 5  # four panels and the colour bar
    assert [ax.get_title() for ax in fig.axes[:4]] == [p[0] for p in panels]
    assert fig.axes[0].get_xlabel() == r"$\phi$" and fig.axes[0].get_ylabel() == r"$\psi$"
    assert all(ax.get_xlim() == pytest.approx((-np.pi, np.pi)) for ax in fig.axes[:4])
    assert [len(ax.collections) for ax in fig.axes[:4]] == [1, 1, 1, 0]  # the dead panel has no histogram
    norms = [ax.collections[0].norm for ax in fig.axes[:3]]
    assert all(isinstance(n, matplotlib.colors.LogNorm) for n in norms) and norms[0] is norms[1]


def test_plot_torsion_marginals_writes_one_panel_per_torsion(tmp_path, saved):
    rng = np.random.default_rng(10)
    names = ["phi", "psi", "gamma1", "gamma2", "gamma3", "omega_1"]
    named = {k: [("reference", rng.vonmises(0, 1, 3000), None), ("flow", rng.vonmises(0.2, 1, 3000), None),
                 ("flow, reweighted", rng.vonmises(0.2, 1, 3000), rng.normal(size=3000))] for k in names}
    out = plot_torsion_marginals(named, tmp_path / "marg.png")
    assert matplotlib.image.imread(out).ndim == 3
    (fig,) = saved
    assert len(fig.axes) == 6
    assert [ax.get_xlabel() for ax in fig.axes] == [r"$\phi$", r"$\psi$", r"$\gamma_{1}$", r"$\gamma_{2}$",
                                                    r"$\gamma_{3}$", r"$\omega_{1}$"]
    assert all(ax.get_yscale() == "log" and len(ax.get_lines()) == 3 for ax in fig.axes)
    plot_torsion_marginals({"phi": named["phi"]}, tmp_path / "phi.png", log_scale=False)
    assert len(saved[1].axes) == 1 and saved[1].axes[0].get_yscale() == "linear"
