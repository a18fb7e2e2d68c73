"""Runs that never lose work: a run directory that cannot be resumed is refused and left as it is (``train
--restart`` starts over deliberately); bad files (a checkpoint cut short or of another model, a PDB that is not one)
and I/O errors (a place that cannot be written, a full disk) are one line naming the file, before any work where
they can be, and after it with the results kept."""

import errno
import json
import os
import shutil
from pathlib import Path
from unittest import mock

import equinox as eqx
import jax
import numpy as np
import pytest

import boltzflow as bf
import boltzflow.checkpoint
from boltzflow.cli import main
from boltzflow.errors import BoltzflowError
from boltzflow.targets import make_target

TINY = ("target: gmm4\n"
        "flow: {type: realnvp, n_layers: 2, hidden: 16, depth: 1}\n"
        "method: {name: reverse_kl}\n"
        "train: {steps: 6, batch_size: 64, lr: 1.0e-3, warmup_steps: 1, eval_every: 3, eval_samples: 128,"
        " checkpoint_every: 3}\n"
        "explore: {check: false}\n")
FLAGS = ["--no-progress", "--eval-samples", "256"]
#: what a full disk raises; a Mock raises it from the standard library, as an OS call would (no user frames)
FULL = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A finished tiny run (6 steps, checkpoints at 3 and 6) and its config file; tests work on copies."""
    base = tmp_path_factory.mktemp("trained")
    (base / "tiny.yaml").write_text(TINY)
    assert main(["train", str(base / "tiny.yaml"), "--out", str(base / "run"), *FLAGS]) == 0
    return base / "tiny.yaml", base / "run"


def _copy(trained, tmp_path, files=None) -> Path:
    """The trained run (or only ``files`` of it) in a fresh directory."""
    out = tmp_path / "run"
    if files is None:
        shutil.copytree(trained[1], out)
    else:
        out.mkdir()
        for name in files:
            shutil.copy2(trained[1] / name, out / name)
    return out


def _snapshot(d: Path) -> dict:
    """Every file's bytes and modification time."""
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(d.iterdir())}


def _run(args, capsys):
    rc = main([str(a) for a in args])
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def _one_error(err: str) -> str:
    """The one ``boltzflow: error:`` line of stderr (which holds no traceback)."""
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("boltzflow: error:")]
    assert len(lines) == 1 and err.splitlines()[0] == lines[0], err
    return lines[0]


# item 1: a run directory that cannot be resumed is refused, never trained over


@pytest.mark.parametrize("files, damage, says", [
    (["config.yaml", "checkpoint.eqx"], None, "holds config.yaml and checkpoint.eqx but no checkpoint.json"),
    (["config.yaml", "checkpoint.json", "metrics.jsonl"], None,
     "holds config.yaml and checkpoint.json but no checkpoint.eqx"),
    (["checkpoint.eqx", "checkpoint.json"], None, "holds checkpoint.eqx and checkpoint.json but no config.yaml"),
    (["config.yaml", "checkpoint.eqx", "checkpoint.json"], b'{\n "time_s": 4.5,\n "ev',
     "checkpoint.json is unreadable"),
    (["config.yaml", "checkpoint.eqx", "checkpoint.json"], b"[]", "checkpoint.json is corrupt"),
])
def test_a_run_that_cannot_be_resumed_is_refused_and_left_as_it_is(trained, tmp_path, capsys, files, damage, says):
    out = _copy(trained, tmp_path, files)
    if damage is not None:
        (out / "checkpoint.json").write_bytes(damage)
    before = _snapshot(out)
    rc, stdout, err = _run(["train", trained[0], "--out", out, *FLAGS], capsys)
    line = _one_error(err)
    assert rc == 2 and stdout == "" and says in line, line
    assert "--restart" in line and "another --out" in line
    assert _snapshot(out) == before


def test_restart_starts_over_deliberately(trained, tmp_path, capsys):
    out = _copy(trained, tmp_path, ["config.yaml", "checkpoint.eqx"])
    (out / "notes.txt").write_text("mine")
    rc, stdout, err = _run(["train", trained[0], "--out", out, "--restart", "--steps", "3", *FLAGS], capsys)
    assert rc == 0, err
    assert json.loads((out / "checkpoint.json").read_text())["step"] == 3
    assert [json.loads(r)["step"] for r in (out / "metrics.jsonl").read_text().splitlines()] == [1, 3]
    assert (out / "notes.txt").read_text() == "mine"  # only the run's own files are deleted
    # the API: a run of another config (seed) is replaced too, its reports deleted
    run = bf.fit(None, str(trained[0]), key=jax.random.key(3), out=out, restart=True, progress=False)
    assert run.summary["steps"] == 6 and not (out / "report.json").exists()
    assert bf.load(out).summary["steps"] == 6


def test_another_config_names_the_keys_that_differ(trained, tmp_path, capsys):
    out = _copy(trained, tmp_path)
    before = _snapshot(out)
    rc, _, err = _run(["train", trained[0], "--out", out, "--seed", "5", *FLAGS], capsys)
    line = _one_error(err)
    assert rc == 2 and "different config (train.seed differs)" in line and "--restart" in line
    assert _snapshot(out) == before


def test_a_failed_build_leaves_no_directory_behind_and_other_files_are_no_run(tmp_path, capsys):
    out = tmp_path / "new" / "deeper" / "run"
    rc, _, err = _run(["train", "quick_gmm", "--target", "user_targets:nan_density", "--out", out], capsys)
    assert rc == 2 and "no finite value" in _one_error(err)
    assert not (tmp_path / "new").exists()
    # a directory that holds other files but no run: kept on failure, and trained into
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    rc, _, err = _run(["train", "quick_gmm", "--target", "user_targets:nan_density", "--out", other], capsys)
    assert rc == 2 and sorted(p.name for p in other.iterdir()) == ["notes.txt"]
    (tmp_path / "tiny.yaml").write_text(TINY)
    rc, _, err = _run(["train", tmp_path / "tiny.yaml", "--out", other, "--steps", "3", *FLAGS], capsys)
    assert rc == 0, err
    assert {"notes.txt", "config.yaml", "checkpoint.eqx", "checkpoint.json"} <= {p.name for p in other.iterdir()}


# item 5: bad files are one line naming the file


@pytest.mark.parametrize("damage, says", [
    ("truncate", "checkpoint.eqx is truncated: it ends inside array"),
    ("garbage", "checkpoint.eqx is corrupt"),
    ("shape", "checkpoint.eqx holds a model of another shape than config.yaml's flow: .model"),
])
def test_a_bad_checkpoint_is_one_line_naming_it(trained, tmp_path, capsys, damage, says):
    out = _copy(trained, tmp_path)
    ckpt, config = out / "checkpoint.eqx", out / "config.yaml"
    if damage == "truncate":
        ckpt.write_bytes(ckpt.read_bytes()[:-100])
    elif damage == "garbage":  # the header of the fifth array overwritten
        data = ckpt.read_bytes()
        at = [i for i in range(len(data)) if data.startswith(b"\x93NUMPY", i)][4]
        ckpt.write_bytes(data[:at] + b"x" * 100 + data[at + 100:])
    else:  # config.yaml edited after training: the checkpoint holds a smaller flow
        config.write_text(config.read_text().replace("hidden: 16", "hidden: 32"))
    before = _snapshot(out)
    rc, stdout, err = _run(["evaluate", out, "--samples", "256"], capsys)
    line = _one_error(err)
    assert rc == 2 and stdout == "" and str(ckpt) in line and says in line, line
    # training on it (its own config) is refused before anything is written, with the way out
    rc, _, err = _run(["train", config, "--out", out, *FLAGS], capsys)
    line = _one_error(err)
    assert rc == 2 and says in line and "--restart" in line, line
    assert _snapshot(out) == before
    with pytest.raises(BoltzflowError, match="checkpoint.eqx") as e:
        bf.load(out)
    assert e.value.__cause__ is not None  # the deserialisation's own error, for --debug


def test_load_refuses_an_unreadable_checkpoint_json(trained, tmp_path):
    out = _copy(trained, tmp_path)
    (out / "checkpoint.json").write_text('{"time_s": 1.0, "ev')
    with pytest.raises(BoltzflowError, match="checkpoint.json is unreadable") as e:
        bf.load(out)
    assert "\n" not in str(e.value) and isinstance(e.value.__cause__, json.JSONDecodeError)


def test_a_file_that_is_not_a_pdb_is_one_line_naming_it(tmp_path):
    pytest.importorskip("openmm")
    for text in ("hello\nthis is not a PDB file\n", "ATOM  1 garbage\nEND\n"):
        path = tmp_path / "bad.pdb"
        path.write_text(text)
        with pytest.raises(BoltzflowError, match="is not a PDB file") as e:
            make_target({"name": "molecule", "molecule": {"pdb": str(path), "forcefield": ["amber99sb.xml"]}})
        assert str(path) in str(e.value) and "\n" not in str(e.value)


def test_an_unknown_openmmtools_keyword_is_refused():
    pytest.importorskip("openmmtools")
    with pytest.raises(BoltzflowError, match=r"AlanineDipeptideVacuum: unknown keyword\(s\) \['hydrogen_mass'\]"):
        make_target({"name": "molecule", "molecule": {"openmmtools": "AlanineDipeptideVacuum", "hydrogen_mass": 2}})


# item 6: I/O errors: checked before the work where they can be; after it, the results are kept


def _read_only(monkeypatch, directory: Path) -> None:
    """Writing files into ``directory`` fails as in a read-only directory (also for root, whom chmod does not stop)."""
    real = open

    def fake_open(file, mode="r", *args, **kwargs):
        if "w" in mode and Path(file).parent == directory:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(file))
        return real(file, mode, *args, **kwargs)

    monkeypatch.setattr(boltzflow.checkpoint, "open", fake_open, raising=False)


def test_evaluate_checks_that_it_can_write_before_computing(trained, tmp_path, capsys, monkeypatch):
    out = _copy(trained, tmp_path)
    before = _snapshot(out)
    _read_only(monkeypatch, out)
    rc, stdout, err = _run(["evaluate", out, "--samples", "256"], capsys)
    line = _one_error(err)
    assert rc == 2 and stdout == "" and f"cannot write {out / 'eval.json'}: [Errno 13]" in line, line
    assert _snapshot(out) == before


def test_evaluate_on_a_full_disk_prints_its_results_and_says_where_it_could_not_write(trained, tmp_path, capsys,
                                                                                     monkeypatch):
    out = _copy(trained, tmp_path)
    monkeypatch.setattr(boltzflow.checkpoint.os, "fsync", mock.Mock(side_effect=FULL))
    rc, stdout, err = _run(["evaluate", out, "--samples", "256"], capsys)
    line = _one_error(err)
    assert rc == 2 and f"could not write {out / 'eval.json'}: [Errno 28]" in line and "printed above" in line
    assert "ess" in stdout and "log_z" in stdout  # the results
    assert not (out / "eval.json").exists() and not (out / "eval.json.tmp").exists()


def test_sample_checks_its_out_before_sampling_and_keeps_no_partial_file(trained, tmp_path, capsys, monkeypatch):
    run = _copy(trained, tmp_path)
    (tmp_path / "a_file").write_text("")
    rc, stdout, err = _run(["sample", run, "--n", "100", "--out", tmp_path / "a_file" / "s.npz"], capsys)
    assert rc == 2 and stdout == "" and f"cannot write {tmp_path / 'a_file' / 's.npz'}" in _one_error(err)
    with monkeypatch.context() as m:
        m.setattr(boltzflow.checkpoint.os, "fsync", mock.Mock(side_effect=FULL))
        rc, _, err = _run(["sample", run, "--n", "100", "--out", tmp_path / "s.npz"], capsys)
    assert rc == 2 and "[Errno 28]" in _one_error(err)
    assert not (tmp_path / "s.npz").exists() and not (tmp_path / "s.npz.tmp").exists()
    rc, stdout, err = _run(["sample", run, "--n", "100", "--out", tmp_path / "sub" / "s"], capsys)
    assert rc == 0, err
    assert np.load(tmp_path / "sub" / "s.npz")["x"].shape == (100, 2) and str(tmp_path / "sub" / "s.npz") in stdout


def test_train_checks_its_out_before_any_work(tmp_path, capsys, monkeypatch):
    (tmp_path / "tiny.yaml").write_text(TINY)
    (tmp_path / "a_file").write_text("")
    rc, _, err = _run(["train", tmp_path / "tiny.yaml", "--out", tmp_path / "a_file" / "run", *FLAGS], capsys)
    assert rc == 2 and f"cannot write the run directory {tmp_path / 'a_file' / 'run'}" in _one_error(err)
    out = tmp_path / "run"
    _read_only(monkeypatch, out)
    rc, _, err = _run(["train", tmp_path / "tiny.yaml", "--out", out, *FLAGS], capsys)
    assert rc == 2 and "[Errno 13] Permission denied" in _one_error(err)
    assert not out.exists()  # created by this call, empty: removed


def test_a_full_disk_at_a_checkpoint_keeps_the_previous_one(trained, tmp_path, capsys, monkeypatch):
    out = _copy(trained, tmp_path)
    before = _snapshot(out)
    with monkeypatch.context() as m:
        m.setattr(eqx, "tree_serialise_leaves", mock.Mock(side_effect=FULL))
        rc, stdout, err = _run(["train", trained[0], "--out", out, "--steps", "9", *FLAGS], capsys)
    line = _one_error(err)
    assert rc == 2 and stdout == ""
    assert line == (f"boltzflow: error: could not write the checkpoint to {out}: [Errno 28] No space left on "
                    f"device (the previous checkpoint at step 6 is intact)")
    assert not list(out.glob("*.tmp"))
    for name in ("checkpoint.eqx", "checkpoint.json"):
        assert (out / name).read_bytes() == before[name][0]
    # it resumes; a report that cannot be written after training: the results are printed, one line says so
    with monkeypatch.context() as m:
        m.setattr("boltzflow.cli.write_json", mock.Mock(side_effect=FULL))
        rc, stdout, err = _run(["train", trained[0], "--out", out, "--steps", "9", *FLAGS], capsys)
    line = _one_error(err)
    assert rc == 2 and "9 steps" in stdout and "ess" in stdout
    assert f"could not write the report and plots to {out}: [Errno 28]" in line and "printed above" in line
    assert json.loads((out / "checkpoint.json").read_text())["step"] == 9
    assert [json.loads(r)["step"] for r in (out / "metrics.jsonl").read_text().splitlines()] == [1, 3, 6, 9]


def test_a_full_disk_at_the_run_files_or_the_metrics_log_is_one_line(trained, tmp_path, capsys, monkeypatch):
    out = _copy(trained, tmp_path)
    before = _snapshot(out)
    with monkeypatch.context() as m:  # config.yaml, rewritten when a run continues
        m.setattr("boltzflow.experiment.write_atomic", mock.Mock(side_effect=FULL))
        rc, stdout, err = _run(["train", trained[0], "--out", out, "--steps", "9", *FLAGS], capsys)
    assert rc == 2 and _one_error(err) == (f"boltzflow: error: could not write the run's files to {out}: "
                                           f"[Errno 28] No space left on device")
    assert _snapshot(out) == before and not list(out.glob("*.tmp"))

    class FullLog:  # metrics.jsonl: the appended line cannot be written
        def __init__(self, *args):
            pass

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        write = mock.Mock(side_effect=FULL)

    with monkeypatch.context() as m:
        m.setattr("boltzflow.train.loop.open", FullLog, raising=False)
        rc, stdout, err = _run(["train", trained[0], "--out", out, "--steps", "9", *FLAGS], capsys)
    assert rc == 2 and _one_error(err) == (f"boltzflow: error: could not write {out / 'metrics.jsonl'}: [Errno 28] "
                                           f"No space left on device (the checkpoint at step 6 is intact)")
    assert (out / "checkpoint.eqx").read_bytes() == before["checkpoint.eqx"][0]
    assert main(["train", str(trained[0]), "--out", str(out), "--steps", "9", *FLAGS]) == 0  # and it resumes
