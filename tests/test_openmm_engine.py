"""The ``openmm`` engine: a pool of OpenMM worker processes against a direct single-process Context, JAX
(jit, grad, vmap) on top of it, failed conformations, and a clean end (at exit, on Ctrl-C, when the parent dies)."""

import json
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

openmm = pytest.importorskip("openmm", reason="the openmm engine needs OpenMM (pip install openmm)")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from conftest import openmm_reference  # noqa: E402

from boltzflow.errors import BoltzflowError  # noqa: E402
from boltzflow.molecules.openmm_engine import OpenMMEngine, close_all  # noqa: E402
from boltzflow.molecules.system import load_system  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
N_CONFS = 20


@pytest.fixture(scope="module")
def molecule():
    return load_system("aldp_implicit")


@pytest.fixture(scope="module")
def confs(molecule):
    rng = np.random.default_rng(0)
    return molecule.positions[None] + 0.005 * rng.normal(size=(N_CONFS, molecule.n_atoms, 3))


@pytest.fixture(scope="module")
def direct(molecule, confs):
    """Energies and forces from one Reference-platform Context in this process (CMMotionRemover left in)."""
    return openmm_reference(molecule, confs)

@pytest.fixture(scope="module")
def cpu(molecule):
    with OpenMMEngine(molecule, platform="CPU", n_workers=2) as engine:
        yield engine


@pytest.fixture(scope="module")
def ref(molecule):
    with OpenMMEngine(molecule, platform="Reference", n_workers=2) as engine:
        yield engine


def _close_cpu(e, f, direct):
    """The CPU platform computes forces in single precision: energies to 1e-3 kJ/mol, forces to 1e-5 of the
    largest force of the conformation (measured: 1e-4 and 2e-7)."""
    de, df = direct
    np.testing.assert_allclose(e, de, rtol=0, atol=1e-3)
    scale = np.abs(df).max(axis=(1, 2), keepdims=True)
    assert (np.abs(f - df) <= 1e-5 * scale).all()


def test_reference_platform_matches_direct_context(ref, confs, direct):
    e, f = ref.energies_forces(confs)
    assert e.dtype == f.dtype == np.float64 and e.shape == (N_CONFS,) and f.shape == confs.shape
    np.testing.assert_allclose(e, direct[0], rtol=1e-8)
    np.testing.assert_allclose(f, direct[1], rtol=1e-8, atol=1e-8 * np.abs(direct[1]).max())
    assert len(ref.worker_pids()) == 2


def test_cpu_platform_matches_direct_context(cpu, confs, direct):
    e, f = cpu.energies_forces(confs)
    _close_cpu(e, f, direct)
    # flattened input, a single conformation, and a batch smaller than the pool
    e2, f2 = cpu.energies_forces(confs.reshape(N_CONFS, -1))
    np.testing.assert_array_equal(e2, e)
    e1, f1 = cpu.energies_forces(confs[3])
    assert np.ndim(e1) == 0 and f1.shape == confs[3].shape
    np.testing.assert_allclose(e1, e[3], rtol=1e-12)
    assert cpu.energies_forces(confs[:0])[0].shape == (0,)


def test_failed_conformations_do_not_kill_the_batch(cpu, confs, direct):
    bad = confs.copy()
    bad[2, 5, 1] = np.nan
    bad[7, 0, 0] = np.inf
    e, f = cpu.energies_forces(bad)
    assert e[2] == e[7] == np.inf
    assert (f[2] == 0).all() and (f[7] == 0).all()
    ok = np.ones(N_CONFS, bool)
    ok[[2, 7]] = False
    _close_cpu(e[ok], f[ok], (direct[0][ok], direct[1][ok]))
    # the pool is still usable
    _close_cpu(*cpu.energies_forces(confs), direct)


def test_jit_value_and_grad_is_minus_forces_with_one_evaluation(cpu, confs, direct):
    energy = cpu.energy_fn()
    assert cpu.energy_fn() is energy
    x = jnp.asarray(confs.reshape(N_CONFS, -1), jnp.float32)
    e32, f32 = cpu.energies_forces(np.asarray(x, np.float64))  # at the float32-rounded positions
    calls = []
    original = cpu.energies_forces
    cpu.energies_forces = lambda p: (calls.append(len(p)), original(p))[1]
    try:
        e, g = jax.jit(jax.value_and_grad(lambda x: jnp.sum(2.0 * energy(x))))(x)
    finally:
        del cpu.energies_forces
    assert calls == [N_CONFS]  # energy and forces from one host call
    assert e.dtype == g.dtype == jnp.float32 and g.shape == x.shape
    np.testing.assert_allclose(e, 2 * e32.sum(), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(g), -2 * f32.reshape(N_CONFS, -1), rtol=1e-6, atol=1e-6)

    with jax.enable_x64(True):
        x64 = jnp.asarray(confs.reshape(N_CONFS, -1), jnp.float64)
        e64 = jax.jit(energy)(x64)
        g64 = jax.jit(jax.grad(lambda x: energy(x).sum()))(x64)
        assert e64.dtype == g64.dtype == jnp.float64
        _close_cpu(np.asarray(e64), -np.asarray(g64).reshape(confs.shape), direct)


def test_vmap(ref, confs, direct):
    energy = ref.energy_fn()
    with jax.enable_x64(True):
        x = jnp.asarray(confs.reshape(4, 5, -1))
        e = jax.jit(jax.vmap(energy))(x)
        assert e.shape == (4, 5)
        np.testing.assert_allclose(np.asarray(e).ravel(), direct[0], rtol=1e-8)
        # per-conformation gradient, vmapped, under jit
        g = jax.jit(jax.vmap(jax.grad(energy)))(x.reshape(N_CONFS, -1))
        np.testing.assert_allclose(np.asarray(g), -direct[1].reshape(N_CONFS, -1), rtol=1e-8,
                                   atol=1e-8 * np.abs(direct[1]).max())


def test_nan_through_jax(cpu, confs):
    x = np.asarray(confs.reshape(N_CONFS, -1), np.float32)
    x[4, 0] = np.nan
    energy = cpu.energy_fn()
    e, g = jax.jit(jax.vmap(jax.value_and_grad(energy)))(jnp.asarray(x))
    assert not np.isfinite(e[4]) and np.isfinite(np.delete(np.asarray(e), 4)).all()
    assert (np.asarray(g[4]) == 0).all()


def test_pools_are_shared_and_close_restarts(molecule, confs):
    close_all()  # a pool of this System and platform may be left running by another test
    a = OpenMMEngine(molecule.system_xml, platform="Reference", n_workers=1)
    b = OpenMMEngine(molecule, platform="Reference", n_workers=1)
    assert not a.started and a.worker_pids() == []
    a.energies_forces(confs[:2])
    assert b.started and b.worker_pids() == a.worker_pids()
    b.energies_forces(confs[:2])
    pids = a.worker_pids()
    b.close()
    assert not a.started and not _any_alive(pids, timeout=5)
    a.energies_forces(confs[:1])  # starts a new pool
    assert a.started and a.worker_pids() != pids
    a.close()


def test_user_mistakes(molecule, cpu):
    for kwargs in ({"n_workers": 0}, {"threads": 0}, {"platform": ""}, {"groups": 0}):
        with pytest.raises(BoltzflowError):
            OpenMMEngine(molecule, **kwargs)
    with pytest.raises(BoltzflowError):
        OpenMMEngine(42)
    with pytest.raises(BoltzflowError):
        cpu.energies_forces(np.zeros((3, 7)))
    with pytest.raises(BoltzflowError):
        cpu.energy_fn()(jnp.zeros((3, 7)))
    with pytest.raises(BoltzflowError) as err:
        OpenMMEngine(molecule, platform="NoSuchPlatform", n_workers=1).energies_forces(molecule.positions)
    assert "NoSuchPlatform" in str(err.value) and "\n" not in str(err.value)


# ------------------------------------------------------------------------------------------- ending cleanly


def _alive(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie counts as dead)."""
    stat = Path(f"/proc/{pid}/stat")
    if Path("/proc").is_dir():
        try:
            return stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"
        except (FileNotFoundError, ProcessLookupError, IndexError):
            return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _any_alive(pids, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while any(_alive(p) for p in pids):
        if time.monotonic() > deadline:
            return True
        time.sleep(0.05)
    return False


SCRIPT = textwrap.dedent("""
    import json, signal, sys, numpy as np
    # as in an interactive Python: a test run started in the background (nohup ... &) inherits SIGINT ignored,
    # and Python then installs no KeyboardInterrupt handler
    signal.signal(signal.SIGINT, signal.default_int_handler)
    from boltzflow.molecules.openmm_engine import OpenMMEngine
    from boltzflow.molecules.system import load_system
    mode = sys.argv[1]
    m = load_system("aldp_implicit")
    engine = OpenMMEngine(m, platform="Reference", n_workers=2)
    engine.energies_forces(m.positions[None])
    print(json.dumps(engine.worker_pids()), flush=True)
    if mode == "exit":
        sys.exit(0)
    if mode == "hold":
        sys.stdin.read()
    x = m.positions[None] + 0.005 * np.random.default_rng(0).normal(size=(200000, m.n_atoms, 3))
    import time
    try:
        if mode == "jit":
            import jax, jax.numpy as jnp
            energy = jax.jit(engine.energy_fn())
            energy(jnp.asarray(x[:2].reshape(2, -1)))  # compiled
            xj = jnp.asarray(x.reshape(len(x), -1)).block_until_ready()  # ready: the callback runs in this thread
            t = time.monotonic()
            print("go", flush=True)
            energy(xj).block_until_ready()
        else:
            t = time.monotonic()
            print("go", flush=True)
            engine.energies_forces(x)
    finally:
        print(f"stopped after {time.monotonic() - t:.2f} s", file=sys.stderr, flush=True)
    print("finished", flush=True)
""")


def _start(mode: str, stderr=subprocess.PIPE) -> tuple[subprocess.Popen, list[int]]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.Popen([sys.executable, "-c", SCRIPT, mode], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=stderr, text=True, env=env, cwd=ROOT)
    line = proc.stdout.readline()
    if not line:
        proc.kill()
        pytest.fail(f"the script failed: {proc.communicate()[1]}")
    pids = json.loads(line)
    assert len(pids) == 2 and all(_alive(p) for p in pids)
    return proc, pids


def test_exits_promptly_without_leaving_workers():
    proc, pids = _start("exit")
    t = time.monotonic()
    proc.communicate(timeout=20)
    assert proc.returncode == 0
    assert time.monotonic() - t < 5, "the process hung at exit"
    assert not _any_alive(pids, timeout=2)


@pytest.mark.parametrize("mode", ["direct", "jit"])
def test_ctrl_c_during_a_batch(mode):
    """SIGINT to the parent mid-batch: it exits at once and its workers are gone. Called directly, the engine
    raises KeyboardInterrupt; through a jitted function JAX turns the callback's KeyboardInterrupt into a
    JaxRuntimeError that names it."""
    # the child's stderr goes to a file, not a pipe: its workers inherit it, and a pipe would keep communicate()
    # waiting for surviving workers, which is what the last assertion checks separately
    with tempfile.TemporaryFile("w+") as errfile:
        proc, pids = _start(mode, stderr=errfile)
        assert proc.stdout.readline().strip() == "go"
        time.sleep(0.5)
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=600)
        errfile.seek(0)
        err = errfile.read()
    assert "finished" not in out and proc.returncode != 0
    assert "KeyboardInterrupt" in err
    if mode == "direct":
        assert err.rstrip().splitlines()[-1].startswith("KeyboardInterrupt")
    # the batch (200,000 conformations on the Reference platform, 2 workers) takes over 2 minutes. The child stops
    # within seconds of the signal (its own clock: exiting afterwards took up to 100 s on a loaded machine). With
    # its input ready, the jitted call runs its host callback in the main thread, where Python handles the signal
    # (CI once failed when the input was still being copied: the callback then ran on an XLA thread, see the
    # engine's docs).
    stopped = float(err.split("stopped after ")[1].split()[0])
    assert stopped < 30, err[-2000:]
    assert not _any_alive(pids, timeout=5), "workers outlived the interrupted batch"


def test_workers_exit_when_the_parent_is_killed():
    proc, pids = _start("hold")
    proc.kill()
    proc.communicate(timeout=10)
    assert not _any_alive(pids, timeout=5)
