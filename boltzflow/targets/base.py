"""The target contract: a batched log density, its dimension, and where known log Z and exact samples.

A target is a plain Python object (hashed by identity, so it can be closed over or be a static field of an
equinox module). Subclasses implement ``_log_prob`` on a checked ``(n, dim)`` batch; the public ``log_prob``
checks shapes at trace time, so the check costs nothing inside ``jax.jit``.

What a target adds to the report on a model q of it (:meth:`Target.metrics`; boltzflow.evaluate gives the
importance-sampling metrics around them) and to its pictures (:meth:`Target.draw`); a new kind of target overrides
these. Here, from what the target knows:

- where it can sample: ``mean_log_q_exact`` = E_p[log q] on n exact samples, ``forward_kl`` = E_p[log p - log Z -
  log q] where log Z is known, and ``expectation_rel_error_pct`` = 100 |E_hat[f] - E_p[f]| / |E_p[f]| for FAB's
  quadratic test function f (boltzflow.targets.report), E_hat[f] by self-normalised importance sampling of the
  model's samples, E_p[f] (``expectation_true``) from 2^20 exact samples;
- where it knows its modes: ``modes_covered`` (modes with at least one model sample; rule in the target's
  docstring) of ``n_modes``, and beyond 2-D (FAB's Many Well metric) ``mean_log_q_modes``, ``min_log_q_modes``: the
  mean and the minimum of log q over its mode points.
"""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from boltzflow.errors import BoltzflowError, check_batch
from boltzflow.estimators import stream_sums
from boltzflow.sharding import shard_batch
from boltzflow.targets.report import Evaluation, ModelSamples, Pictures, quadratic_test_function

#: exact samples of E_p[f] (module docstring), and per chunk
TRUTH_SAMPLES, TRUTH_CHUNK = 2**20, 2**16


class Target:
    """Unnormalised density p(x) = exp(-u(x)) / Z on R^dim.

    Attributes:
        name: short name used in reports.
        dim: dimension of x.
        log_z: exact log normaliser of exp(-u) when known, else ``None``.
    """

    name: str = "target"
    dim: int
    log_z: float | None = None

    def log_prob(self, x: jax.Array) -> jax.Array:
        """Unnormalised log density, ``(n, dim) -> (n,)``."""
        check_batch(x, self.dim)
        out = self._log_prob(x)
        assert out.shape == x.shape[:1], (out.shape, x.shape)
        return out

    def _log_prob(self, x: jax.Array) -> jax.Array:
        raise NotImplementedError

    @property
    def can_sample(self) -> bool:
        """Whether the target draws exact samples (it overrides :meth:`sample`)."""
        return type(self).sample is not Target.sample

    @property
    def has_modes(self) -> bool:
        """Whether the target knows its modes (``mode_points`` and ``modes_covered`` work)."""
        return type(self).mode_points is not Target.mode_points

    def mode_points(self) -> jax.Array:
        """One point on every mode, ``(n_modes, dim)``; only targets with a known mode set override this."""
        raise BoltzflowError(f"target {self.name!r} has no known mode set")

    def modes_covered(self, samples) -> int:
        """How many modes the samples ``(n, dim)`` visit (each target documents its rule)."""
        raise BoltzflowError(f"target {self.name!r} has no known mode set")

    def sample(self, key: jax.Array, n: int) -> jax.Array:
        """Exact samples ``(n, dim)``; only targets that can sample override this."""
        raise BoltzflowError(f"target {self.name!r} has no exact sampler")

    def energy(self, x: jax.Array) -> jax.Array:
        """u(x) = -log p(x) (unnormalised)."""
        return -self.log_prob(x)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(dim={self.dim})"

    # What the target adds to a report and to the pictures (module docstring) -------------------------------------
    def report(self, ev: Evaluation) -> dict:
        """The report on a model of this target: its importance-weighted samples, with :meth:`metrics`."""
        return ev.sampled(self)

    def metrics(self, s: ModelSamples) -> dict:
        """This target's entries of the report on a model's samples ``s``: exact-sample metrics where it can
        sample, mode metrics where it knows its modes (module docstring). A new kind adds its own to these."""
        return ((self._exact_sample_metrics(s) if self.can_sample else {})
                | (self._mode_metrics(s) if self.has_modes else {}))

    def test_values(self, x: jax.Array) -> jax.Array | None:
        """f(x) of the test function whose importance-sampling estimate :meth:`metrics` checks (traced): FAB's
        quadratic function where the target can sample, else None."""
        return quadratic_test_function(self.dim)(x) if self.can_sample else None

    def sample_rows(self, x: jax.Array, log_w: jax.Array) -> dict[str, jax.Array]:
        """What :meth:`metrics` needs of each model sample x (n, dim) with log weight log w (n,), traced: x where
        the target knows its modes."""
        return {"x": x} if self.has_modes else {}

    def keep_rows(self, rows: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """What is kept in host memory of one chunk's :meth:`sample_rows`: as they are."""
        return rows

    def draw(self, pictures: Pictures) -> list[Path]:
        """``samples.png``: 3000 model samples over the target's contours, beside exact samples where it has them.

        Returns:
            The paths written.
        """
        x = pictures.model.sample(pictures.key, 3000)
        exact = self.sample(pictures.key, 3000) if self.can_sample else None
        return [pictures.plot_samples(self, x, pictures.out_dir / "samples.png",
                                      title=f"{pictures.name}: model samples", exact=exact)]

    def _exact_sample_metrics(self, s: ModelSamples) -> dict:
        def exact(k, valid):  # E_p[log q] and E_p[log p - log Z - log q] on exact samples
            xs = shard_batch(self.sample(k, s.chunk))
            log_q = s.log_q(xs)
            kl = self.log_prob(xs) - (self.log_z or 0.0) - log_q
            return {"log_q": jnp.sum(jnp.where(valid, log_q, 0.0)), "kl": jnp.sum(jnp.where(valid, kl, 0.0))}, {}

        out = {}
        if s.log_q is not None:
            sums = stream_sums(exact, s.key, s.n, s.chunk)[0]
            out["mean_log_q_exact"] = float(sums["log_q"]) / s.n
            if self.log_z is not None:
                out["forward_kl"] = float(sums["kl"]) / s.n
        f = quadratic_test_function(self.dim)
        truth = stream_sums(lambda k, valid: (jnp.sum(f(shard_batch(self.sample(k, TRUTH_CHUNK)))), {}),
                            s.reference_key, TRUTH_SAMPLES, TRUTH_CHUNK)[0]
        out["expectation_true"] = truth = float(truth) / TRUTH_SAMPLES
        out["expectation_rel_error_pct"] = float(100 * abs(float(s.weights.expectation()) - truth) / abs(truth))
        return out

    def _mode_metrics(self, s: ModelSamples) -> dict:
        modes = self.mode_points()
        out = {}
        if self.dim > 2 and s.log_q is not None:
            log_q_modes = s.log_q(modes)
            out["mean_log_q_modes"] = float(jnp.mean(log_q_modes))
            out["min_log_q_modes"] = float(jnp.min(log_q_modes))
        return out | {"modes_covered": int(self.modes_covered(s.kept["x"])), "n_modes": int(modes.shape[0])}

