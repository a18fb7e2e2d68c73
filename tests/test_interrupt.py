"""Interrupting a run: Ctrl-C (SIGINT) ends ``boltzflow`` with status 130 and its one line, never a crash of the
interpreter's teardown under XLA's compiler threads (exit 139); SIGTERM (a batch scheduler's notice before SIGKILL)
ends ``boltzflow train`` with a checkpoint at the step reached and status 143, and the same command then finishes
with the parameters of an uninterrupted run. The library itself installs no signal handlers: ``fit(stop=...)``."""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from test_loop import _leaves, _rows

INTERRUPTED = "boltzflow: interrupted (the last checkpoint is kept; run the same command to resume)"
TERMINATED = "boltzflow: terminated at step {} (checkpoint written; run the same command to resume)"

# FAB with its buffer on the 40-mode mixture (quick_gmm) with a small flow: 0.3 ms a step on a CPU
TINY = """\
target: gmm40
flow: {{type: realnvp, n_layers: 2, hidden: 16, depth: 1}}
method: {{name: fab, alpha: 2.0, buffer: true, buffer_size: 1024, min_buffer_length: 256, n_updates: 2}}
ais: {{kernel: metropolis, n_intermediate: 1, schedule: linear, step_size: 1.0, n_inner_steps: 1}}
explore: {{check: false}}
train: {{steps: {steps}, batch_size: 64, lr: 3.0e-4, warmup_steps: 10, eval_every: {every}, checkpoint_every: {every}}}
"""


def _boltzflow(*args: str) -> subprocess.Popen:
    """The ``boltzflow`` console script (``python -m boltzflow.cli`` where it is not installed) in a subprocess,
    with SIGINT not ignored there (a process started in the background ignores it and passes that on)."""
    script = Path(sys.executable).with_name("boltzflow")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "boltzflow.cli"]
    ignored = signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    if ignored:  # a handler set here is reset to the default in the child by exec; an ignored signal stays ignored
        signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        # without the suite's compilation cache (tests/conftest.py): the interrupts are meant to meet compilations
        env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}
        return subprocess.Popen([*command, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    finally:
        if ignored:
            signal.signal(signal.SIGINT, signal.SIG_IGN)


def _wait_for(condition, proc: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert proc.poll() is None, f"the run ended before it could be interrupted: {proc.communicate()[1]}"
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def _checkpoint_step(out: Path) -> int | None:
    try:
        return json.loads((out / "checkpoint.json").read_text())["step"]
    except (OSError, ValueError):  # not there yet (or being replaced)
        return None


def test_the_console_script_is_the_entry_that_ends_an_interrupted_process():
    from importlib.metadata import entry_points

    (script,) = [e for e in entry_points(group="console_scripts") if e.name == "boltzflow"]
    assert script.value == "boltzflow.cli:entry"


def test_an_interrupt_python_would_drop_is_raised_again(monkeypatch):
    """A KeyboardInterrupt raised inside a garbage-collection callback (JAX has one) is dropped by Python ("Exception
    ignored in ..."); the command's unraisable hook raises it again in the main thread."""
    import functools
    import gc

    from boltzflow.cli import _raise_dropped_interrupt

    dropped = []
    monkeypatch.setattr(sys, "unraisablehook", functools.partial(_raise_dropped_interrupt, dropped.append))
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)  # Python's own (a test worker may ignore it)

    def callback(phase, info):
        gc.callbacks.remove(callback)
        raise KeyboardInterrupt

    gc.callbacks.append(callback)
    try:
        with pytest.raises(KeyboardInterrupt):
            gc.collect()  # the interrupt is dropped here...
            time.sleep(10)  # ...and raised again a moment later
    finally:
        signal.signal(signal.SIGINT, previous)
    assert dropped == []
    other = type("Unraisable", (), {"exc_type": ValueError})()
    _raise_dropped_interrupt(dropped.append, other)  # anything else goes to the previous hook
    assert dropped == [other]


def _ctrl_c_during_the_first_compilation(tmp_path: Path, tries: int) -> None:
    """quick_gmm (FAB with a 10-layer spline flow: filling its buffer and its first step take seconds to trace and
    compile) gets SIGINT at a random moment of its first compilations: each time status 130 with the one line, and
    nothing else."""
    rng = random.Random(0)
    for k in range(tries):
        out = tmp_path / f"run{k}"
        proc = _boltzflow("train", "quick_gmm", "--out", str(out), "--no-progress")
        _wait_for(lambda: (out / "config.yaml").exists(), proc)  # the command has started: compilations follow
        time.sleep(rng.uniform(0.0, 6.0))  # they take 15 s on a busy 2-core CPU
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 130 and err.strip().splitlines() == [INTERRUPTED], (k, proc.returncode, err)


def test_ctrl_c_during_the_first_compilation_exits_130(tmp_path):
    _ctrl_c_during_the_first_compilation(tmp_path, tries=2)


@pytest.mark.slow
def test_ctrl_c_during_the_first_compilation_exits_130_every_time(tmp_path):
    """Before the command ended an interrupted process with os._exit, this segfaulted in about half the tries and
    dropped the interrupt (training on to the end) in some others."""
    _ctrl_c_during_the_first_compilation(tmp_path, tries=10)


@pytest.mark.slow
def test_ctrl_c_with_the_openmm_engine_exits_130_and_stops_its_workers(tmp_path):
    """The OpenMM engine's worker processes (started at the first evaluation, inside the training step) are gone
    once the command has exited."""
    pytest.importorskip("openmm", reason="the openmm engine needs OpenMM")
    from test_openmm_engine import _any_alive

    config = tmp_path / "aldp.json"
    config.write_text(json.dumps({
        "name": "aldp_openmm", "target": {"name": "aldp_vacuum", "engine": "openmm", "n_workers": 2},
        "flow": {"type": "nsf", "coordinates": "internal", "n_layers": 2, "hidden": 16},
        "method": {"name": "reverse_kl"}, "train": {"steps": 100_000, "batch_size": 16}}))
    rng = random.Random(1)
    for k in range(3):
        out = tmp_path / f"run{k}"
        proc = _boltzflow("train", str(config), "--out", str(out), "--no-progress")
        _wait_for(lambda: len(_children(proc.pid)) == 2, proc)
        workers = _children(proc.pid)
        time.sleep(rng.uniform(0.0, 3.0))  # compiling, or training with the workers evaluating
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 130 and err.strip().splitlines() == [INTERRUPTED], (k, proc.returncode, err)
        assert not _any_alive(workers, timeout=5)


def _children(pid: int) -> list[int]:
    """The processes whose parent is ``pid``."""
    children = []
    for p in Path("/proc").iterdir():
        try:
            stat = (p / "stat").read_text()
        except OSError:  # not a process, or gone
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            children.append(int(p.name))
    return children


def test_a_stop_request_checkpoints_at_the_step_reached_and_a_rerun_finishes_as_one_run(tmp_path):
    """fit(stop=...): asked after each compiled call (log_every steps at most); True stops with a checkpoint at the
    step reached; fit on the same directory then ends where an uninterrupted run ends. In memory it just stops."""
    import boltzflow as bf
    from boltzflow.config import config_from_dict

    cfg = config_from_dict({
        "target": "double_well", "flow": {"type": "realnvp", "n_layers": 2, "hidden": 8, "depth": 1},
        "method": {"name": "reverse_kl"},
        "train": {"steps": 25, "batch_size": 32, "lr": 1e-2, "warmup_steps": 2, "eval_every": 20,
                  "eval_samples": 64, "checkpoint_every": 500, "ema_decay": 0.9}})
    asked = []

    def stop():
        asked.append(True)
        return len(asked) >= 3

    whole, stopped = tmp_path / "whole", tmp_path / "stopped"
    bf.fit(None, cfg, out=whole, progress=False, log_every=5)
    run = bf.fit(None, cfg, out=stopped, progress=False, log_every=5, stop=stop)
    assert run.summary["stopped_by_request"] and run.summary["steps"] == 10  # calls end at steps 1, 5, 10
    assert _checkpoint_step(stopped) == 10 and [r["step"] for r in _rows(stopped)] == [1, 5, 10]
    again = bf.fit(None, cfg, out=stopped, progress=False, log_every=5, stop=lambda: False)
    assert again.summary["steps"] == 25 and not again.summary["stopped_by_request"]
    a, b = _leaves(bf.load(whole).state), _leaves(bf.load(stopped).state)
    assert len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b))
    assert [r["step"] for r in _rows(stopped)] == [r["step"] for r in _rows(whole)]

    asked.clear()
    in_memory = bf.fit(None, cfg, progress=False, log_every=5, stop=stop)
    assert in_memory.summary["stopped_by_request"] and int(in_memory.state.step) == 10


def test_sigterm_during_the_evaluation_after_training_exits_143_at_once(tmp_path):
    """Training over (its final checkpoint written), the evaluation of a million samples is cut short."""
    config, out = tmp_path / "tiny.yaml", tmp_path / "run"
    config.write_text(TINY.format(steps=20, every=20))
    proc = _boltzflow("train", str(config), "--out", str(out), "--no-progress", "--eval-samples", "1000000")
    _wait_for(lambda: _checkpoint_step(out) == 20, proc)
    time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    sent = time.monotonic()
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143 and err.strip().splitlines() == [TERMINATED.format(20)], (proc.returncode, err)
    assert time.monotonic() - sent < 5.0
    assert not (out / "report.json").exists()


@pytest.mark.slow
def test_sigterm_checkpoints_at_the_step_reached_and_the_same_command_finishes_as_one_run(tmp_path):
    """SIGTERM at a random moment after the first (periodic) checkpoint: the command finishes the compiled call in
    progress (log_every = 10 steps at most), writes a checkpoint at the step reached -- no logged step lost --, exits
    with 143; the same command again ends with exactly the state of an uninterrupted run, each step logged once."""
    import boltzflow as bf

    steps, every = 40_000, 20_000
    config = tmp_path / "tiny.yaml"
    config.write_text(TINY.format(steps=steps, every=every))
    command = ("train", str(config), "--no-progress", "--eval-samples", "256")
    whole, stopped = tmp_path / "whole", tmp_path / "stopped"
    bf.fit(None, bf.load_config(config), out=whole, progress=False)

    proc = _boltzflow(*command, "--out", str(stopped))
    _wait_for(lambda: _checkpoint_step(stopped) == every, proc)
    time.sleep(random.Random(2).uniform(0.3, 2.0))
    reached = _rows(stopped)[-1]["step"]  # the last step logged before the signal
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    at = _checkpoint_step(stopped)
    assert proc.returncode == 143 and err.strip().splitlines() == [TERMINATED.format(at)], (proc.returncode, err)
    assert every <= reached <= at < steps and at % every != 0  # written at SIGTERM, not the periodic checkpoint
    assert _rows(stopped)[-1]["step"] == at  # nothing was done after the checkpoint: no work lost
    assert not (stopped / "report.json").exists()

    proc = _boltzflow(*command, "--out", str(stopped))
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    a, b = _leaves(bf.load(whole).state), _leaves(bf.load(stopped).state)
    assert len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b))
    logged = [r["step"] for r in _rows(stopped)]
    assert logged == [r["step"] for r in _rows(whole)] and len(logged) == len(set(logged))
