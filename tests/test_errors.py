"""A user's exception keeps its traceback (the ``__cause__`` of our one-line error, or itself); the command line shows
the user's own frames (``--debug``: the full traceback); the library leaves ``sys.path`` alone."""

import functools
import sys

import jax
import jax.numpy as jnp
import pytest
import yaml

from boltzflow.cli import main, user_frames
from boltzflow.errors import BoltzflowError
from boltzflow.run import fit
from boltzflow.targets import FunctionTarget, make_target

USER_MODULE = '''
import jax.numpy as jnp


def bad_log_prob(x):
    raise ValueError("bad thing")


def make():
    return bad_log_prob, 2


def fails_in_training(x):
    if x.shape[0] != 8:  # passes the validation on a probe batch of 8, fails on a training batch
        raise KeyError("batch of " + str(x.shape[0]))
    return -0.5 * jnp.sum(x**2, axis=1)


def make_late():
    return fails_in_training, 2


def good():
    return (lambda x: -0.5 * jnp.sum(x**2, axis=1)), 2
'''

LATE_CONFIG = """
target: {function: 'bf_err_user:make_late'}
flow: {type: realnvp, n_layers: 2, hidden: 8, depth: 1}
method: {name: reverse_kl}
train: {steps: 2, batch_size: 16, warmup_steps: 1, eval_every: 100, checkpoint_every: 100}
explore: {check: false}
"""


def _line(snippet: str) -> int:
    """The line number of ``snippet`` in USER_MODULE."""
    return next(i for i, line in enumerate(USER_MODULE.splitlines(), 1) if snippet in line)


@pytest.fixture()
def user_dir(tmp_path, monkeypatch):
    """The working directory holds the user's module ``bf_err_user.py`` and is not on sys.path (the command line adds
    it: sys.path is restored afterwards)."""
    (tmp_path / "bf_err_user.py").write_text(USER_MODULE)
    (tmp_path / "late.yaml").write_text(LATE_CONFIG)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    sys.modules.pop("bf_err_user", None)
    yield tmp_path
    sys.modules.pop("bf_err_user", None)


def _raise_key_error(x):
    return {}["missing"]


def test_function_target_chains_the_users_exception():
    with pytest.raises(BoltzflowError, match="log_prob raised KeyError") as info:
        FunctionTarget(_raise_key_error, 2)
    cause = info.value.__cause__
    assert isinstance(cause, KeyError)
    assert [f.name for f in user_frames(cause)] == ["_raise_key_error"]  # a test file counts as user code


def test_a_user_module_error_is_the_cause_and_sys_path_is_untouched(user_dir):
    before = list(sys.path)
    with pytest.raises(BoltzflowError, match="log_prob raised ValueError.*bad thing") as info:
        make_target("bf_err_user.py:make")  # a file path: no sys.path needed
    cause = info.value.__cause__
    assert isinstance(cause, ValueError) and str(cause) == "bad thing"
    assert (str(user_dir / "bf_err_user.py"), _line("bad thing")) in [(f.filename, f.lineno) for f in
                                                                       user_frames(cause)]
    # a dotted module name is looked up on sys.path only: the library does not add the working directory
    with pytest.raises(BoltzflowError, match="cannot import module 'bf_err_user'.*not on sys.path") as info:
        make_target("bf_err_user:good")
    assert info.value.__cause__ is None and "\n" not in str(info.value)
    assert make_target("bf_err_user.py:good").dim == 2
    assert sys.path == before
    sys.path.insert(0, str(user_dir))  # the caller arranges it (as the command line does)
    assert make_target("bf_err_user:good").dim == 2
    # our own checks stay one line without a cause
    with pytest.raises(BoltzflowError, match="bad arguments") as info:
        make_target({"function": "bf_err_user:good", "colour": 1})
    assert info.value.__cause__ is None


def test_an_error_raised_later_by_the_users_log_prob_propagates_as_itself(user_dir):
    target = make_target("bf_err_user.py:make_late")  # validation passes on the probe batch of 8
    for log_prob in (target.log_prob, jax.jit(target.log_prob)):
        with pytest.raises(KeyError, match="batch of 16") as info:
            log_prob(jnp.zeros((16, 2)))
        assert "fails_in_training" in [f.name for f in user_frames(info.value)]
    with pytest.raises(KeyError, match="batch of 16") as info:  # training from Python: the user's own exception
        fit(target, yaml.safe_load(LATE_CONFIG), progress=False)
    assert "fails_in_training" in [f.name for f in user_frames(info.value)]


def _train(args, capsys):
    rc = main(["train", *args, "--no-progress", "--eval-samples", "64", "--out", "run"])
    return rc, capsys.readouterr().err


def test_cli_shows_the_users_frames_of_a_failed_validation(user_dir, capsys):
    rc, err = _train(["quick_gmm", "--target", "bf_err_user:make", "--steps", "1"], capsys)
    assert rc == 2 and "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert lines[0].startswith("boltzflow: error: target bf_err_user:make: log_prob raised ValueError"), err
    assert sum(line.startswith("boltzflow: error:") for line in lines) == 1
    assert f"  bf_err_user.py:{_line('bad thing')} in bad_log_prob" in lines
    assert "ValueError: bad thing" in lines and lines[-1] == "(--debug for the full traceback)"
    assert str(user_dir) in sys.path  # the command line adds its working directory (the fixture restores sys.path)

    for debug in (["--debug", "train"], ["train", "--debug"]):  # before or after the command
        rc = main([*debug, "quick_gmm", "--target", "bf_err_user:make", "--steps", "1", "--out", "run"])
        err = capsys.readouterr().err
        assert rc == 2 and "Traceback (most recent call last)" in err and 'raise ValueError("bad thing")' in err
        assert "boltzflow/targets/function.py" in err and err.strip().splitlines()[-1].startswith("boltzflow: error:")


def test_cli_shows_the_users_frames_of_an_error_in_training(user_dir, capsys):
    rc, err = _train(["late.yaml"], capsys)
    assert rc == 1 and "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert lines[0] == "boltzflow: error: KeyError: 'batch of 16'", err
    assert f"  bf_err_user.py:{_line('raise KeyError')} in fails_in_training" in lines
    assert len(lines) < 10 and lines[-1] == "(--debug for the full traceback)"
    rc = main(["--debug", "train", "late.yaml", "--no-progress", "--out", "run"])
    err = capsys.readouterr().err
    assert rc == 1 and "Traceback (most recent call last)" in err and "KeyError: 'batch of 16'" in err


def test_cli_keeps_the_traceback_of_a_bug(monkeypatch, capsys):
    """An exception without a frame of user code is a bug in boltzflow: it propagates with its traceback."""
    import boltzflow.cli as cli

    monkeypatch.setattr(cli, "targets_table", functools.partial(int, "a bug"))  # no Python frame outside boltzflow
    monkeypatch.setattr(sys, "path", list(sys.path))
    with pytest.raises(ValueError, match="a bug"):
        main(["targets"])
