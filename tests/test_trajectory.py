"""What a chemist takes away: samples as trajectories with the molecule's topology (boltzflow.molecules.trajectory),
unweighted frames by importance resampling (boltzflow.estimators.resample), and ``boltzflow sample`` / ``boltzflow free-energy``
on a molecular run."""

import jax
import numpy as np
import pytest

from boltzflow.cli import main
from boltzflow.errors import BoltzflowError
from boltzflow.estimators import resample

pytest.importorskip("openmm", reason="OpenMM is not installed (pip install 'boltzflow[molecules]')")
md = pytest.importorskip("mdtraj", reason="mdtraj is not installed (pip install mdtraj)")

from boltzflow.molecules.metrics import dihedral, named_torsions  # noqa: E402
from boltzflow.molecules.reference import builtin_reference, load_reference  # noqa: E402
from boltzflow.molecules.trajectory import mdtraj_topology, write_trajectory  # noqa: E402
from boltzflow.targets import make_target  # noqa: E402


@pytest.fixture(scope="module")
def aldp():
    return make_target("aldp_implicit")


@pytest.fixture(scope="module")
def frames():
    return load_reference(builtin_reference("aldp_implicit", 300.0))["x"][::97][:200].astype(np.float64)


@pytest.mark.parametrize("suffix, atol", [(".pdb", 6e-5), (".dcd", 1e-6), (".xtc", 6e-4)])
def test_a_trajectory_reads_back_with_the_topology_and_its_weights(aldp, frames, tmp_path, suffix, atol):
    x, log_w = frames[:20], np.linspace(-3.0, 1.0, 20)
    path = tmp_path / f"s{suffix}"
    assert write_trajectory(path, aldp.molecule, x, log_w) == [path, tmp_path / f"s{suffix}.log_w.npy"]
    traj = md.load(str(path), top=mdtraj_topology(aldp.molecule))
    assert traj.n_frames == 20 and traj.n_atoms == 22
    np.testing.assert_allclose(traj.xyz.reshape(20, -1), x, atol=atol)  # nm, as boltzflow's x
    np.testing.assert_array_equal(np.load(tmp_path / f"s{suffix}.log_w.npy"), log_w)
    if suffix == ".pdb":  # the file carries the topology itself: names, elements, residues, bonds
        top = md.load(str(path)).topology
        assert [a.name for a in top.atoms] == list(aldp.molecule.atom_names)
        assert [a.element.symbol for a in top.atoms] == list(aldp.molecule.elements)
        assert [r.name for r in top.residues] == ["ACE", "ALA", "NME"]
        assert sorted(tuple(sorted((a.index, b.index))) for a, b in top.bonds) == \
            [tuple(b) for b in aldp.molecule.bonds.tolist()]


def test_mdtraj_finds_the_same_backbone_torsions_on_the_topology(aldp, frames, tmp_path):
    traj = md.Trajectory(frames.reshape(len(frames), -1, 3), mdtraj_topology(aldp.molecule))
    torsions = named_torsions(aldp.molecule)
    for name, compute in (("phi", md.compute_phi), ("psi", md.compute_psi)):
        atoms, angles = compute(traj)
        assert tuple(atoms[0]) == torsions[name]
        np.testing.assert_allclose(angles[:, 0], dihedral(frames, *torsions[name]), atol=1e-5)


def test_trajectory_mistakes_are_one_line_errors(aldp, frames, tmp_path):
    with pytest.raises(BoltzflowError, match="unknown trajectory format"):
        write_trajectory(tmp_path / "s.mol2", aldp.molecule, frames)
    with pytest.raises(BoltzflowError, match=r"shape \(n, 66\)"):
        write_trajectory(tmp_path / "s.dcd", aldp.molecule, frames[:, :60])
    with pytest.raises(BoltzflowError, match="3 log weights for 200"):
        write_trajectory(tmp_path / "s.dcd", aldp.molecule, frames, np.zeros(3))
    try:
        import tables  # noqa: F401
    except ImportError:
        with pytest.raises(BoltzflowError, match="writing .h5 files needs"):
            write_trajectory(tmp_path / "s.h5", aldp.molecule, frames)


def test_resampling_repeats_each_sample_in_proportion_to_its_weight():
    w = np.array([0.37, 0.05, 0.21, 0.3, 0.07])
    x = np.arange(5.0)[:, None] * np.ones((1, 2))
    for m in (3, 5, 12):
        counts = np.array([np.bincount(resample(jax.random.key(r), x, np.log(w) + 9.0, m)[:, 0].astype(int),
                                       minlength=5) for r in range(400)])
        assert np.all(counts.sum(1) == m)
        se = counts.std(0, ddof=1) / np.sqrt(len(counts))
        assert np.all(np.abs(counts.mean(0) - m * w) < 4 * se + 1e-9), (m, counts.mean(0), m * w)


def test_resampled_frames_are_samples_of_p():
    """N(0, 1) samples weighted to N(1, 1): the mean of the resampled frames is 1 within 4 standard errors
    (importance sampling's 1 / n_eff plus at most multinomial resampling's 1 / m)."""
    x = np.random.default_rng(0).standard_normal((20_000, 1))
    log_w = x[:, 0] - 0.5
    frames = resample(jax.random.key(0), x, log_w, 5000)
    w = np.exp(log_w - log_w.max())
    n_eff = w.sum() ** 2 / (w**2).sum()
    assert frames.shape == (5000, 1) and set(frames[:, 0]) <= set(x[:, 0])
    assert abs(frames.mean() - 1.0) < 4 * np.sqrt(1 / n_eff + 1 / 5000)
    with pytest.raises(BoltzflowError, match="nothing to resample"):
        resample(jax.random.key(0), x, np.full(20_000, -np.inf), 10)
    with pytest.raises(BoltzflowError, match="m >= 1"):
        resample(jax.random.key(0), x, log_w, 0)


class _Run:
    """A run as the commands use it (``target``, ``sample``), drawing fixed conformations with fixed log weights."""

    def __init__(self, target, x, log_w):
        self.target, self.x, self.log_w = target, x, log_w

    def sample(self, key, n, paths=1):
        return self.x[:n], self.log_w[:n]


@pytest.fixture()
def run(aldp, frames, monkeypatch):
    fake = _Run(aldp, frames, np.random.default_rng(1).normal(0.0, 0.5, len(frames)))
    monkeypatch.setattr("boltzflow.cli.load", lambda path: fake)
    return fake


def test_sample_writes_a_trajectory_with_weights_or_resampled_frames(run, tmp_path, capsys):
    out = tmp_path / "s.dcd"
    assert main(["sample", "RUN", "--n", "50", "--out", str(out)]) == 0
    assert "s.dcd.log_w.npy" in capsys.readouterr().out
    np.testing.assert_allclose(md.load(str(out), top=mdtraj_topology(run.target.molecule)).xyz.reshape(50, -1),
                               run.x[:50], atol=1e-6)
    np.testing.assert_array_equal(np.load(str(out) + ".log_w.npy"), run.log_w[:50])

    out = tmp_path / "r.pdb"
    assert main(["sample", "RUN", "--n", "50", "--out", str(out), "--resample", "30"]) == 0
    assert "30 unweighted frames" in capsys.readouterr().out
    xyz = md.load(str(out)).xyz.reshape(30, -1)
    assert not (tmp_path / "r.pdb.log_w.npy").exists()
    assert all(np.abs(run.x[:50] - f).max(axis=1).min() < 1e-4 for f in xyz)  # each frame is one of the samples

    assert main(["sample", "RUN", "--n", "50", "--out", str(tmp_path / "s")]) == 0  # .npz as before
    with np.load(tmp_path / "s.npz") as f:
        np.testing.assert_array_equal(f["x"], run.x[:50])
    assert main(["sample", "RUN", "--out", str(tmp_path / "s.npz"), "--resample", "5"]) == 2
    assert "--resample writes a trajectory" in capsys.readouterr().err


def test_a_trajectory_of_a_target_that_is_not_a_molecule_is_a_one_line_error(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr("boltzflow.cli.load", lambda path: _Run(make_target("double_well"), None, None))
    assert main(["sample", "RUN", "--out", str(tmp_path / "s.xtc")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "needs a molecular target" in err and not (tmp_path / "s.xtc").exists()


def test_free_energy_command_writes_the_surface_and_prints_the_states(run, tmp_path, capsys):
    assert main(["free-energy", str(tmp_path), "--n", "200", "--bins", "24", "--bootstrap", "20"]) == 0
    printed = capsys.readouterr().out
    assert all(state in printed for state in ("C7eq", "alpha_R", "C7ax_alpha_L", "kJ/mol"))
    with np.load(tmp_path / "free_energy.npz") as f:
        assert list(f["cv"]) == ["phi", "psi"] and f["free_energy"].shape == (24, 24)
        assert list(f["state"]) == ["C7eq", "alpha_R", "C7ax_alpha_L"] and f["state_difference"].shape == (3, 3)
        assert np.isclose(f["kT"], run.target.kT)
        # beside the model's, the shipped MD reference's, its errors from a bootstrap of time blocks
        assert f["reference_free_energy"].shape == (24, 24) and f["reference_state_difference"].shape == (3, 3)
        np.testing.assert_allclose(f["reference_state_probability"][2], 0.0030, atol=2e-4)  # phi > 0 of 48,000
        assert np.all(f["reference_state_difference_se"][[0, 1], [1, 0]] > 0)
    assert "reference MD" in printed and "time blocks" in printed and printed.count("model - reference") == 3
    assert (tmp_path / "free_energy.png").stat().st_size > 1000

    states = tmp_path / "states.yaml"
    states.write_text("near: {'distance(1,14)': [0, 0.5]}\nfar: {'distance(1,14)': [0.5, 2]}\n")
    assert main(["free-energy", str(tmp_path), "--n", "200", "--cv", "phi", "1,14", "--states", str(states),
                 "--bootstrap", "20"]) == 0
    assert "near" in capsys.readouterr().out
    states.write_text("- just a list\n")
    assert main(["free-energy", str(tmp_path), "--states", str(states)]) == 2
    assert "states must be a mapping" in capsys.readouterr().err
