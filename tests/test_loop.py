"""The training loop: parameter average (train.ema_decay), and several steps per compiled call."""

import jax.numpy as jnp
import numpy as np
import pytest

from boltzflow.errors import BoltzflowError
from boltzflow.train.state import TrainSettings, update_average


def test_update_average_is_the_warmed_up_exponential_moving_average():
    avg = {"w": jnp.zeros(3), "n": 4}  # non-array leaves pass through untouched
    model = {"w": jnp.ones(3), "n": 4}
    expected = np.zeros(3)
    for t in range(200):
        avg = update_average(avg, model, jnp.asarray(t, jnp.int32), 0.99)
        d = min(0.99, (1 + t) / (10 + t))
        expected = d * expected + (1 - d) * 1.0
        assert avg["n"] == 4
    np.testing.assert_allclose(np.asarray(avg["w"]), expected, rtol=1e-5)
    assert 0.0 < expected[0] < 1.0  # the decay is still visible after 200 steps: the test can tell it apart


@pytest.mark.parametrize("bad", [0.0, 1.0, -0.5, 2.0])
def test_ema_decay_outside_the_unit_interval_is_refused(bad):
    with pytest.raises(BoltzflowError, match="ema_decay"):
        TrainSettings(ema_decay=bad)


def test_steps_between_logged_ones_run_as_one_call_with_the_same_result(tmp_path):
    """Logged steps are step 1, multiples of log_every / eval_every / checkpoint_every and the last; running the
    steps in between as one compiled call gives the same parameters as logging (calling) every step."""
    import json

    import equinox as eqx
    import jax

    from boltzflow.config import config_from_dict
    from boltzflow.experiment import load_run, train

    cfg = config_from_dict({
        "target": "double_well", "flow": {"type": "realnvp", "n_layers": 2, "hidden": 8, "depth": 1},
        "method": {"name": "reverse_kl"},
        "train": {"steps": 25, "batch_size": 32, "lr": 1e-2, "warmup_steps": 2, "eval_every": 7,
                  "eval_samples": 64, "checkpoint_every": 500, "ema_decay": 0.9}})
    train(cfg, tmp_path / "chunked", progress=False, log_every=10)
    train(cfg, tmp_path / "stepwise", progress=False, log_every=1)
    rows = [json.loads(line) for line in (tmp_path / "chunked" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 7, 10, 14, 20, 21, 25]
    def params(run):
        state = load_run(run)[1]
        return [np.asarray(a) for m in (state.model, state.averaged)
                for a in jax.tree_util.tree_leaves(eqx.filter(m, eqx.is_inexact_array))]

    chunked, stepwise = params(tmp_path / "chunked"), params(tmp_path / "stepwise")
    assert all(np.allclose(a, b, rtol=1e-5, atol=1e-6) for a, b in zip(chunked, stepwise))
    half = len(chunked) // 2  # model, then average: they differ, so the comparison above sees trained values
    assert not all(np.array_equal(a, b) for a, b in zip(chunked[:half], chunked[half:]))
