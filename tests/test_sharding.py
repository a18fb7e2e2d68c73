"""Data parallelism (boltzflow.sharding): on 4 forced host devices, training and evaluation split the batch over
the devices and give the one-device numbers up to the order of floating-point sums.

XLA_FLAGS must be set before jax is imported, so the 4-device runs are subprocesses; each compares a 4-device run
with a one-device run of the same seed in the same process (``use_devices(1)`` sets no mesh: the old program)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from boltzflow.cli import main
from boltzflow.errors import BoltzflowError
from boltzflow.sharding import batch_devices, shard_batch, use_devices

ROOT = Path(__file__).resolve().parents[1]

FAB_TINY = {
    "target": "gmm4", "flow": {"type": "realnvp", "n_layers": 2, "hidden": 16, "depth": 1},
    "method": {"name": "fab", "buffer": True, "min_buffer_length": 128, "buffer_size": 512, "n_updates": 2},
    "ais": {"kernel": "hmc", "n_intermediate": 1, "step_size": 0.3, "n_leapfrog": 1},
    "train": {"steps": 5, "batch_size": 64, "lr": 1e-3, "warmup_steps": 2, "eval_every": 100, "eval_samples": 128,
              "checkpoint_every": 100}}

TRAIN = """
import json, sys
import equinox as eqx, jax, numpy as np
import boltzflow as bf
from boltzflow.config import config_from_dict
from boltzflow.sharding import use_devices
cfg, out = config_from_dict(json.loads(sys.argv[1])), sys.argv[2]
result = {}
for n in (1, 4):
    with use_devices(n):
        bf.fit(None, cfg, out=f"{out}/d{n}", progress=False, log_every=1)
    rows = [json.loads(line) for line in open(f"{out}/d{n}/metrics.jsonl")]
    state = bf.load(f"{out}/d{n}").state
    result[n] = {"loss": [r["loss"] for r in rows], "buffer_ess": [r["buffer_ess"] for r in rows],
                 "params": [np.asarray(a).ravel().tolist()
                            for a in jax.tree_util.tree_leaves(eqx.filter(state.model, eqx.is_inexact_array))]}
# a checkpoint of the 4-device run resumes on one device (the device count is not part of the run)
bf.fit(None, config_from_dict({**cfg.to_dict(), "train": {**cfg.to_dict()["train"], "steps": 6}}), out=f"{out}/d4",
       progress=False)
result["resumed_steps"] = [json.loads(line)["step"] for line in open(f"{out}/d4/metrics.jsonl")]
try:
    with use_devices(4):
        bf.fit(None, config_from_dict({**cfg.to_dict(), "train": {**cfg.to_dict()["train"], "batch_size": 66}}),
               out=f"{out}/odd", progress=False)
except Exception as e:
    result["odd_batch"] = f"{type(e).__name__}: {e}"
print(json.dumps(result))
"""

EVALUATE = """
import json, sys
import jax, numpy as np
import boltzflow.evaluate as ev
from boltzflow.config import config_from_dict
from boltzflow.experiment import build_experiment
from boltzflow.sharding import use_devices
seen = []
def path_weights(*args):  # records how each chunk's samples are laid out where they are reduced
    x, log_w, infos = original(*args)
    jax.debug.inspect_array_sharding(log_w, callback=lambda s: seen.append(
        (s.is_fully_replicated, len(s.device_set), s.shard_shape(log_w.shape))))
    return x, log_w, infos
original, ev.path_weights = ev.path_weights, path_weights
exp = build_experiment(config_from_dict({"target": {"name": "many_well", "dim": 4},
                                         "flow": {"type": "realnvp", "n_layers": 2, "hidden": 8, "depth": 1}}))
out = {}
for n in (1, 4):
    with use_devices(n):
        out[n] = ev.evaluate(exp, jax.random.key(0), n_samples=10_000, chunk=4096, with_ais=True)
print(json.dumps({"metrics": out, "seen": seen}))
"""


def _device_flags(n: int) -> str:
    """XLA_FLAGS giving a process ``n`` CPU devices, beside the suite's own compile settings (tests/conftest.py)."""
    return f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={n}".strip()


def _run_on_4_devices(script: str, *args: str) -> dict:
    env = {**os.environ, "XLA_FLAGS": _device_flags(4),
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.slow  # ~45 s (two trainings compiled in a subprocess); the sharded evaluation below stays in CI
def test_fab_on_4_devices_equals_one_device_and_resumes_on_one(tmp_path):
    """FAB with its buffer, 5 steps: same losses, buffer ESS and parameters as on one device (rtol 1e-5: only the
    order of the all-reduced sums differs; the random draws are the same bits), and the 4-device checkpoint
    continues on one device."""
    r = _run_on_4_devices(TRAIN, json.dumps(FAB_TINY), str(tmp_path))
    one, four = r["1"], r["4"]
    assert len(one["loss"]) == 5 and len(set(one["loss"])) == 5  # the losses move: the comparison can fail
    for key in ("loss", "buffer_ess"):
        assert all(abs(a - b) <= 1e-5 * abs(a) + 1e-6 for a, b in zip(one[key], four[key])), (key, one[key], four[key])
    for a, b in zip(one["params"], four["params"]):
        assert all(abs(u - v) <= 1e-5 * abs(u) + 1e-6 for u, v in zip(a, b))
    assert r["resumed_steps"] == [1, 2, 3, 4, 5, 6]
    assert r["odd_batch"].startswith("BoltzflowError: train.batch_size (66) must be a multiple of the 4")


def test_evaluation_on_4_devices_is_sharded_and_equals_one_device():
    """Each chunk's samples reach their reduction split over the 4 devices (1024 rows each of a 4096 chunk: no
    device holds a chunk, let alone the 10 000 samples), and every metric equals the one-device one."""
    r = _run_on_4_devices(EVALUATE)
    one, four = r["metrics"]["1"], r["metrics"]["4"]
    assert [False, 4, [1024]] in r["seen"]  # the flow's chunks; with_ais adds AIS's own (same layout)
    assert all(s == [True, 1, [4096]] or s == [False, 4, [1024]] for s in r["seen"]), r["seen"]
    assert set(one) == set(four) and one["n_samples"] == 10_000
    for k, v in one.items():
        if isinstance(v, float):
            assert abs(v - four[k]) <= 1e-5 * abs(v) + 1e-6, (k, v, four[k])
        else:
            assert v == four[k], k
    assert 0 < one["ess"] < 1 and 0 < one["ais_ess"] < 1


def test_more_devices_than_visible_is_a_one_line_error(capsys, tmp_path):
    with pytest.raises(BoltzflowError, match="devices 2: 1 device"):
        with use_devices(2):
            pass
    assert main(["train", "quick_gmm", "--devices", "2", "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--devices 2" in err[0]


def test_one_device_sets_no_mesh_and_constrains_nothing():
    import jax.numpy as jnp

    x = jnp.ones((6, 2))
    with use_devices(1) as mesh:
        assert mesh is None and batch_devices() == 1 and shard_batch(x) is x


def _cli(args: list[str], log: Path, n_devices: int = 1) -> subprocess.Popen:
    """``boltzflow ARGS`` in a process of its own with ``n_devices`` CPU devices, its output to the file ``log`` (not a
    pipe: a process blocked on a full pipe would stall the other host in a collective)."""
    env = {**os.environ, "XLA_FLAGS": _device_flags(n_devices),
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    with open(log, "w") as f:
        return subprocess.Popen([sys.executable, "-c", "from boltzflow.cli import main; main()", *args], env=env,
                                stdout=f, stderr=subprocess.STDOUT)


@pytest.mark.slow  # ~110 s on the 2-core machine: three processes compile a training and an evaluation each
def test_two_hosts_train_and_evaluate_as_one_host_with_two_devices_and_write_once(tmp_path):
    """Two processes joined by jax.distributed (the documented multi-host command, here on one machine over
    localhost, one CPU device each) train and evaluate one run directory: the losses, the report and eval.json
    equal those of one process with two devices (up to the order of all-reduced sums), and metrics.jsonl has each
    step once (only host 0 writes)."""
    import socket

    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(json.dumps({**FAB_TINY, "train": {**FAB_TINY["train"], "steps": 6, "eval_every": 3},
                               "explore": {"check": False}}))

    def free_port() -> int:
        with socket.socket() as s:
            s.bind(("localhost", 0))
            return s.getsockname()[1]

    def command(name: str, run: str) -> list[str]:
        out = str(tmp_path / run)
        return (["train", str(cfg), "--out", out, "--no-progress", "--eval-samples", "512"] if name == "train" else
                ["evaluate", out, "--samples", "2048"])

    for name in ("train", "evaluate"):
        port = free_port()
        logs = [tmp_path / f"{name}-{who}.log" for who in ("host0", "host1", "one")]
        procs = [_cli([*command(name, "hosts"), "--coordinator", f"localhost:{port}", "--num-hosts", "2",
                       "--host-id", str(i)], logs[i]) for i in (0, 1)]
        procs.append(_cli([*command(name, "one"), "--devices", "2"], logs[2], n_devices=2))
        for p, log in zip(procs, logs):
            assert p.wait(timeout=600) == 0, log.read_text()[-3000:]
    rows = {d: [json.loads(line) for line in (tmp_path / d / "metrics.jsonl").read_text().splitlines()]
            for d in ("hosts", "one")}
    assert [r["step"] for r in rows["hosts"]] == [r["step"] for r in rows["one"]]
    steps = [r["step"] for r in rows["hosts"] if "loss" in r]
    assert steps == sorted(set(steps)) and steps[-1] == 6  # each logged step once
    close = lambda a, b: abs(a - b) <= 1e-5 * abs(a) + 1e-6  # noqa: E731
    assert all(close(a["loss"], b["loss"]) for a, b in zip(rows["one"], rows["hosts"]) if "loss" in a)
    for name, part in (("report.json", "eval"), ("eval.json", None)):
        a, b = (json.loads((tmp_path / d / name).read_text()) for d in ("one", "hosts"))
        a, b = (a[part], b[part]) if part else (a, b)
        assert set(a) == set(b)
        assert all(close(v, b[k]) for k, v in a.items() if isinstance(v, float) and "time" not in k), (a, b)
