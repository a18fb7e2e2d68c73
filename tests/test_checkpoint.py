"""boltzflow.checkpoint: a file is replaced all or nothing, and a checkpoint is read back only when complete."""

import json

import numpy as np
import pytest

from boltzflow.checkpoint import read_checkpoint, write_atomic, write_json


def test_an_atomic_write_replaces_the_file(tmp_path):
    path = tmp_path / "state.bin"
    path.write_bytes(b"old")
    write_atomic(path, lambda f: f.write(b"new contents"))
    assert path.read_bytes() == b"new contents"
    assert [p.name for p in tmp_path.iterdir()] == ["state.bin"]
    write_atomic(tmp_path / "fresh.bin", lambda f: f.write(b"x"))  # no previous file
    assert (tmp_path / "fresh.bin").read_bytes() == b"x"


def test_a_write_that_fails_midway_leaves_the_previous_file_and_no_temporary(tmp_path):
    path = tmp_path / "checkpoint.npz"
    np.savez(path, a=np.arange(5))
    before = path.read_bytes()

    def full_disk(f):
        f.write(b"part of a new checkpoint")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space left on device") as err:
        write_atomic(path, full_disk)
    assert err.value.errno == 28
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.npz"]


def test_a_checkpoint_is_read_only_when_both_of_its_files_are_there(tmp_path):
    state, info = tmp_path / "state.npz", tmp_path / "info.json"
    load = lambda p: dict(np.load(p))  # noqa: E731
    assert read_checkpoint(state, info, load) is None
    write_atomic(state, lambda f: np.savez(f, x=np.arange(3.0)))
    assert read_checkpoint(state, info, load) is None  # killed before its info was written: start afresh
    write_json(info, {"step": 3, "evals": []})
    assert json.loads(info.read_text()) == {"step": 3, "evals": []}
    arrays, got = read_checkpoint(state, info, load)
    np.testing.assert_array_equal(arrays["x"], np.arange(3.0))
    assert got == {"step": 3, "evals": []}
