"""The ``openmm`` engine when a worker process dies: it is restarted and its part of the batch sent again (one line
on stderr each time), within bounds; beyond them one line names the worker, its exit code and how to resume, and
the engine (or the run, resumed) goes on afterwards."""

import json
import os
import re
import signal

import numpy as np
import pytest

pytest.importorskip("openmm", reason="the openmm engine needs OpenMM (pip install openmm)")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

import boltzflow.molecules.openmm_engine as oe  # noqa: E402
from boltzflow.cli import main  # noqa: E402
from boltzflow.errors import BoltzflowError  # noqa: E402
from boltzflow.molecules.openmm_engine import MAX_RESTARTS_PER_BATCH, RESUME_HINT, OpenMMEngine  # noqa: E402
from boltzflow.molecules.system import load_system  # noqa: E402
from test_openmm_engine import _any_alive  # noqa: E402

RESTARTED = re.compile(r"^boltzflow: OpenMM worker (\d) \(pid \d+\) died \(exit code (-?\d+)[^)]*\); restarted it "
                       r"\(restart (\d) of \d in this batch, \d+ of \d+ in all\)$", re.M)


@pytest.fixture(scope="module")
def molecule():
    return load_system("aldp_vacuum")


@pytest.fixture(scope="module")
def confs(molecule):
    return molecule.positions[None] + 0.005 * np.random.default_rng(0).normal(size=(10, molecule.n_atoms, 3))


@pytest.fixture()
def engine(molecule):
    with OpenMMEngine(molecule, platform="Reference", n_workers=2) as engine:
        yield engine


def _kill(pid: int) -> None:
    """SIGKILL ``pid`` and wait until it is gone (a zombie: the pool reaps it)."""
    os.kill(pid, signal.SIGKILL)
    assert not _any_alive([pid], timeout=5)


def _dying_bootstrap() -> str:
    """The workers' bootstrap for a worker that exits (code 3) when asked to evaluate: one that dies on every try."""
    assert "m.main(" in oe._BOOTSTRAP
    return oe._BOOTSTRAP.replace("m.main(", "import os; m.evaluate_batch = lambda *a: os._exit(3); m.main(")


def _one_line_error(text: str, limit: int = MAX_RESTARTS_PER_BATCH) -> None:
    """Whether the last line of ``text`` (an error's message) is the engine's one-line error for a worker that died
    on each of its ``limit`` restarts in one batch."""
    line = text.rstrip().rsplit("\n", 1)[-1]
    assert re.fullmatch(r"(?:BoltzflowError: )?OpenMM worker 1 \(pid \d+\) died \(exit code 3\) and was not restarted "
                        rf"\({limit + 1} restarts in one batch would exceed {limit}\); {RESUME_HINT}", line), line


def test_a_killed_worker_is_restarted_and_the_batch_completed(engine, confs, capfd):
    e, f = engine.energies_forces(confs)
    pids = engine.worker_pids()
    _kill(pids[1])
    e2, f2 = engine.energies_forces(confs)
    np.testing.assert_array_equal(e2, e)
    np.testing.assert_array_equal(f2, f)
    new = engine.worker_pids()
    assert new[0] == pids[0] and new[1] != pids[1]
    assert RESTARTED.findall(capfd.readouterr().err) == [("1", "-9", "1")]
    # under jit, every worker killed between two calls
    energy = jax.jit(engine.energy_fn())
    with jax.enable_x64(True):
        x = jnp.asarray(confs.reshape(len(confs), -1))
        before = np.asarray(energy(x))
        for pid in engine.worker_pids():
            _kill(pid)
        np.testing.assert_array_equal(np.asarray(energy(x)), before)
    np.testing.assert_array_equal(before, e)
    assert RESTARTED.findall(capfd.readouterr().err) == [("0", "-9", "1"), ("1", "-9", "2")]


@pytest.mark.slow  # about 20 s: three restarts and two pool starts; the jitted test below is a shorter one
def test_a_worker_that_always_dies_gives_one_line_and_the_engine_works_again(engine, confs, capfd, monkeypatch):
    e = engine.energies_forces(confs)[0]
    monkeypatch.setattr(oe, "_BOOTSTRAP", _dying_bootstrap())  # for the restarted workers
    _kill(engine.worker_pids()[1])
    with pytest.raises(BoltzflowError) as err:
        engine.energies_forces(confs)
    _one_line_error(str(err.value))
    assert "\n" not in str(err.value)
    assert [r[1:] for r in RESTARTED.findall(capfd.readouterr().err)] == [("-9", "1"), ("3", "2"), ("3", "3")]
    assert not engine.started  # the pool was dropped ...
    monkeypatch.undo()
    np.testing.assert_array_equal(engine.energies_forces(confs)[0], e)  # ... and a fresh one started


def test_through_jit_the_error_ends_with_the_one_line_without_jax_logging_its_traceback(engine, confs, capfd,
                                                                                         monkeypatch):
    e = engine.energies_forces(confs)[0]
    monkeypatch.setattr(oe, "MAX_RESTARTS_PER_BATCH", 1)  # a shorter test: one restart, then the error
    energy = jax.jit(engine.energy_fn())
    with jax.enable_x64(True):
        x = jnp.asarray(confs.reshape(len(confs), -1))
        energy(x)
        monkeypatch.setattr(oe, "_BOOTSTRAP", _dying_bootstrap())
        _kill(engine.worker_pids()[1])
        with pytest.raises(Exception) as err:  # noqa: PT011 -- ValueError or JaxRuntimeError, as JAX wraps it
            energy(x).block_until_ready()
        monkeypatch.undo()
        np.testing.assert_array_equal(np.asarray(energy(x)), e)
    assert not isinstance(err.value, BoltzflowError) and str(err.value).startswith("INTERNAL: CpuCallback error")
    _one_line_error(str(err.value), limit=1)
    assert "jax.pure_callback failed" not in capfd.readouterr().err


def test_restarts_are_bounded_over_the_pools_life(engine, confs, monkeypatch, capfd):
    engine.energies_forces(confs[:2])
    monkeypatch.setattr(oe, "MAX_RESTARTS", 2)
    for _ in range(2):
        _kill(engine.worker_pids()[0])
        engine.energies_forces(confs[:2])
    _kill(engine.worker_pids()[0])
    with pytest.raises(BoltzflowError, match=r"^OpenMM worker 0 \(pid \d+\) died \(exit code -9, SIGKILL\) and was not "
                                             rf"restarted \(3 restarts would exceed 2 in all\); {RESUME_HINT}$"):
        engine.energies_forces(confs[:2])
    assert len(RESTARTED.findall(capfd.readouterr().err)) == 2


FLOW = {"type": "nsf", "coordinates": "internal", "n_layers": 2, "hidden": 16}


@pytest.mark.slow
def test_training_survives_a_killed_worker_and_resumes_after_one_that_always_dies(tmp_path, monkeypatch, capfd):
    """`boltzflow train` with engine openmm: a worker killed (-9) mid-run is restarted and the run finishes; a worker
    that dies on every try ends the run with the one line, and the same command then resumes and finishes."""
    config = tmp_path / "aldp.json"
    config.write_text(json.dumps({
        "name": "aldp_openmm", "target": {"name": "aldp_vacuum", "engine": "openmm", "n_workers": 2},
        "flow": FLOW, "method": {"name": "reverse_kl"},
        "train": {"steps": 4, "batch_size": 16, "checkpoint_every": 1, "eval_every": 2, "eval_samples": 32}}))
    calls, kill_at, dying = [], [], []
    evaluate = oe._Pool.evaluate

    def evaluate_and_kill(pool, positions, groups):
        calls.append(len(positions))
        if len(calls) in kill_at:
            if dying:
                monkeypatch.setattr(oe, "_BOOTSTRAP", _dying_bootstrap())
            _kill(pool.pids[1])
        return evaluate(pool, positions, groups)

    monkeypatch.setattr(oe._Pool, "evaluate", evaluate_and_kill)
    argv = ["train", str(config), "--no-progress", "--eval-samples", "32"]
    kill_at[:] = [3]
    assert main([*argv, "--out", str(tmp_path / "a")]) == 0
    assert len(calls) > 3
    assert [r[:3] for r in RESTARTED.findall(capfd.readouterr().err)] == [("1", "-9", "1")]
    assert json.loads((tmp_path / "a" / "checkpoint.json").read_text())["step"] == 4

    calls.clear()
    kill_at[:], dying[:] = [3], [True]
    assert main([*argv, "--out", str(tmp_path / "b")]) == 2  # JAX wraps the callback's error; main unwraps it
    err = capfd.readouterr().err
    assert "Traceback" not in err and len(RESTARTED.findall(err)) == MAX_RESTARTS_PER_BATCH
    _one_line_error(err.replace("boltzflow: error: ", ""))
    step = json.loads((tmp_path / "b" / "checkpoint.json").read_text())["step"]
    assert 0 < step < 4
    monkeypatch.undo()
    assert main([*argv, "--out", str(tmp_path / "b")]) == 0
    assert json.loads((tmp_path / "b" / "checkpoint.json").read_text())["step"] == 4
