"""The training loop's parameter average (train.ema_decay)."""

import jax.numpy as jnp
import numpy as np
import pytest

from boltzflow.config import TrainSettings
from boltzflow.errors import BoltzflowError
from boltzflow.train.loop import update_average


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
