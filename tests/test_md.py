"""Replica-exchange Langevin MD: right distribution at every temperature, resumable, and the `boltzflow md` command."""

import json

import numpy as np
import pytest

from boltzflow.errors import BoltzflowError
from boltzflow.molecules.md import GAS_CONSTANT, geometric_temperatures, run_replica_exchange
from boltzflow.molecules.metrics import block_standard_error

A, K, TILT = 5.0, 10.0, 2.0  # kJ/mol


def _energy(x):
    """A tilted double well along x0 (barrier ~2 kT at 300 K) and a harmonic well along x1, x2."""
    return A * (x[:, 0] ** 2 - 1) ** 2 + TILT * x[:, 0] + 0.5 * K * (x[:, 1] ** 2 + x[:, 2] ** 2)


def _run(out, **kw):
    args = dict(n_chains=32, n_steps=40_000, equilibration=2_000, dt_fs=10.0, friction=5.0, save_every=200,
                exchange_every=20, progress=False)
    args.update(kw)
    return run_replica_exchange(str(out), _energy, np.ones(3), np.array([1.0, 0.0, 0.0]), [300.0, 600.0, 1200.0],
                                **args)


@pytest.mark.slow
def test_samples_follow_the_boltzmann_distribution_at_the_lowest_temperature(tmp_path):
    """P(x0 > 0) and Var(x1) of the saved T0 replica against quadrature / kT/k; tolerances are 4 block standard
    errors over saves (each save averages the 32 chains; p ~ 6e-5 per check for a correct sampler)."""
    rep = _run(tmp_path)
    assert rep["finished"] and rep["samples"] == 32 * 200
    assert all(0.3 < a < 0.9 for a in rep["exchange_acceptance"])
    d = np.load(tmp_path / "samples.npz")
    x = d["x"].astype(np.float64).reshape(200, 32, 3)
    kt = GAS_CONSTANT * 300
    grid = np.linspace(-3, 3, 60001)
    e = A * (grid**2 - 1) ** 2 + TILT * grid
    p = np.exp(-(e - e.min()) / kt)
    exact_right = p[grid > 0].sum() / p.sum()
    right = (x[..., 0] > 0).mean(axis=1)
    assert abs(right.mean() - exact_right) < 4 * block_standard_error(right)
    var = (x[..., 1] ** 2).mean(axis=1)
    assert abs(var.mean() - kt / K) < 4 * block_standard_error(var)


def test_an_interrupted_run_resumes_to_the_same_samples(tmp_path):
    kw = dict(n_chains=4, n_steps=4_000, equilibration=0, checkpoint_every_s=0.0)
    full = _run(tmp_path / "full", **kw)
    part = _run(tmp_path / "part", time_limit_s=0.0, **kw)  # stops after the first block, with a checkpoint
    assert not part["finished"] and part["blocks_done"] < full["blocks_done"]
    partial = np.load(tmp_path / "part" / "samples.npz")  # a stopped run's samples so far are usable
    assert len(partial["x"]) == part["samples"] > 0
    resumed = _run(tmp_path / "part", **kw)
    assert resumed["finished"]
    a, b = np.load(tmp_path / "full" / "samples.npz"), np.load(tmp_path / "part" / "samples.npz")
    np.testing.assert_array_equal(a["x"], b["x"])
    np.testing.assert_array_equal(a["energy"], b["energy"])


def test_changed_settings_are_refused_on_resume(tmp_path):
    _run(tmp_path, n_chains=2, n_steps=400, equilibration=0, time_limit_s=0.0)
    with pytest.raises(BoltzflowError, match="n_chains"):
        _run(tmp_path, n_chains=3, n_steps=400, equilibration=0)


def test_bad_arguments_fail_in_one_line(tmp_path):
    with pytest.raises(BoltzflowError, match="temperatures"):
        run_replica_exchange(str(tmp_path), _energy, np.ones(3), np.zeros(3), [300.0, 200.0], progress=False)
    with pytest.raises(BoltzflowError, match="multiples"):
        _run(tmp_path, n_steps=450)
    with pytest.raises(BoltzflowError):
        geometric_temperatures(300, 200, 4)
    np.testing.assert_allclose(geometric_temperatures(300, 600, 3), [300, 300 * 2**0.5, 600])


@pytest.mark.slow  # 20 s; the same command on a particle target (reduced units) stays in CI
def test_md_command_on_alanine_dipeptide(tmp_path):
    pytest.importorskip("openmm", reason="OpenMM is not installed")
    from boltzflow.cli import main

    out = tmp_path / "md"
    args = ["md", "aldp_vacuum", "--temperature", "1000", "--chains", "2", "--ns", "0.002", "--equilibration-ps",
            "0.5", "--save-ps", "0.5", "--dt-fs", "0.5", "--out", str(out), "--no-progress"]
    assert main(args) == 0
    report = json.loads((out / "md.json").read_text())
    assert report["finished"] and report["samples"] == 2 * 4 and report["ns_per_day_per_replica"] > 0
    ref = np.load(out / "reference.npz")
    assert ref["x"].shape == (8, 66) and ref["torsion_phi"].shape == (8,)
    summary = json.loads((out / "reference.json").read_text())
    assert summary["temperature"] == 1000.0 and summary["torsions"]["phi"] == [4, 6, 8, 14]
    assert main(["md", "double_well", "--out", str(tmp_path / "x")]) == 2  # neither molecule nor particles


def test_md_command_on_a_particle_target_runs_in_reduced_units(tmp_path):
    """`boltzflow md CONFIG` of a config whose target is dw4: replicas at 1 .. t_max times the target's
    temperature, k_B = 1, masses 1, from the lattice start; the saved samples are centre-of-mass-free coordinates
    whose energies are -log p."""
    from boltzflow.cli import main
    from boltzflow.targets.particles import dw4

    out, config = tmp_path / "md", tmp_path / "mine.yaml"
    config.write_text("target: dw4\n")  # a config file's target section (a user's molecule) as the target
    assert main(["md", str(config), "--t-max", "3", "--replicas", "3", "--chains", "2", "--ns", "0.002",
                 "--equilibration-ps", "0.5", "--save-ps", "0.5", "--exchange-ps", "0.05", "--dt-fs", "5",
                 "--out", str(out), "--no-progress"]) == 0
    report = json.loads((out / "md.json").read_text())
    assert report["finished"] and report["samples"] == 2 * 4 and report["settings"]["boltzmann"] == 1.0
    np.testing.assert_allclose(report["settings"]["temperatures"], [1.0, 3**0.5, 3.0])
    d = np.load(out / "samples.npz")
    assert d["x"].shape == (8, 6)
    np.testing.assert_allclose(d["energy"], -np.asarray(dw4().log_prob(d["x"])), rtol=1e-4, atol=1e-3)


def test_freed_memory_is_retained_on_glibc():
    """boltzflow.allocator raises glibc's mmap / trim thresholds (the command calls it at start)."""
    import platform

    from boltzflow.allocator import retain_freed_memory

    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        pytest.skip("mallopt is glibc's")
    assert retain_freed_memory() is True


def test_runs_combine_side_by_side_and_the_compact_form_round_trips(tmp_path):
    from boltzflow.molecules.reference import QUANTUM, combine_runs, load_reference, write_compact

    kw = dict(n_chains=3, n_steps=2_000, equilibration=0)
    _run(tmp_path / "a", seed=0, **kw)
    _run(tmp_path / "b", seed=1, **kw)
    both = combine_runs([str(tmp_path / "a"), str(tmp_path / "b")], thin=2)
    a = np.load(tmp_path / "a" / "samples.npz")
    assert both["x"].shape == (10 // 2 * 6, 3) and both["temperature"] == 300.0
    # save 0 of the combined set: run a's 3 chains then run b's, chains renumbered 3..5
    np.testing.assert_array_equal(both["x"][:3], a["x"][:3])
    assert both["chain"][:6].tolist() == [0, 1, 2, 3, 4, 5]
    np.testing.assert_array_equal(both["x"][6:9], a["x"][6:9])  # thin 2: the next kept save is a's third
    _run(tmp_path / "c", seed=2, n_chains=3, n_steps=1_000, equilibration=0)
    with pytest.raises(BoltzflowError, match="same number of saves"):
        combine_runs([str(tmp_path / "a"), str(tmp_path / "c")])
    np.savez(tmp_path / "ref.npz", x=a["x"] * 0.3, energy=a["energy"], chain=a["chain"], time_ps=a["time_ps"])
    write_compact(str(tmp_path / "ref.npz"), str(tmp_path / "compact.npz"))
    back = load_reference(str(tmp_path / "compact.npz"))
    assert back["x"].dtype == np.float32 and back["x"].shape == a["x"].shape
    assert np.abs(back["x"] - a["x"] * 0.3).max() <= QUANTUM * 0.5 + 1e-6


def test_reduced_units_with_boltzmann_one_are_the_same_dynamics(tmp_path):
    """boltzmann=1, energies u = E / kT0, temperatures T / T0 and masses m / kT0: every force over mass and every
    noise scale is the molecular run's, so the samples are the same up to float rounding; the settings say so."""
    kw = dict(n_chains=4, n_steps=400, equilibration=0)
    molecular = _run(tmp_path / "mol", **kw)
    kt0 = GAS_CONSTANT * 300.0
    reduced = run_replica_exchange(str(tmp_path / "red"), lambda x: _energy(x) / kt0, np.ones(3) / kt0,
                                   np.array([1.0, 0.0, 0.0]), [1.0, 2.0, 4.0], boltzmann=1.0, dt_fs=10.0,
                                   friction=5.0, save_every=200, exchange_every=20, progress=False, **kw)
    a, b = np.load(tmp_path / "mol" / "samples.npz"), np.load(tmp_path / "red" / "samples.npz")
    np.testing.assert_allclose(b["x"], a["x"], atol=1e-4)
    np.testing.assert_allclose(b["energy"] * kt0, a["energy"], atol=1e-3)
    assert reduced["exchange_acceptance"] == pytest.approx(molecular["exchange_acceptance"])
    assert reduced["settings"]["boltzmann"] == 1.0 and "boltzmann" not in molecular["settings"]
