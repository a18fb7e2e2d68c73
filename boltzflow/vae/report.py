"""A data set as the target of a VAE (method ``vae``), with the VAE's report and pictures (SNF paper Table 3).

Report, with the method's ``nll_samples`` K: ``test_jkl`` (J_KL, SNF eq. 13, the negative ELBO: minus the mean
log path weight of 16 posterior paths per test image, averaged over the test set), ``test_nll`` (-log p(x) by
importance sampling with K other posterior paths per test image, boltzflow.vae.bound) with ``test_nll_stderr``
(the standard error of the test mean, from each image's importance-sampling error), ``train_jkl`` on as many
training images, and ``bound_below_nll_batches``, the fraction of test batches whose mean bound is below their mean
estimated log-likelihood. Pictures: ``reconstructions.png`` (test images over their posterior reconstructions
E[x | z], z ~ q(z | x)) and ``samples.png`` (E[x | z] for z ~ p(z)).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from boltzflow.data import Dataset, DataSettings, load_dataset
from boltzflow.targets.report import Evaluation, Pictures
from boltzflow.vae.bound import generate, log_likelihood, path_bound, reconstruct
from boltzflow.vae.model import VAE, VAESettings


@dataclass(frozen=True)
class VAEData(Dataset):
    """The images a VAE models (a :class:`Dataset`), owning the VAE's report and pictures (module docstring)."""

    nll_samples: int = 1000  # importance samples per test image for log p(x)

    @classmethod
    def load(cls, data: DataSettings, vae: VAESettings) -> "VAEData":
        """The data set of a config's ``target`` section, for the VAE of its ``method`` section."""
        d = load_dataset(data)
        return cls(d.name, d.train, d.test, d.shape, vae.nll_samples)

    def report(self, ev: Evaluation) -> dict:
        """The VAE's metrics on this data set (module docstring)."""
        return vae_evaluation(ev.model, self, ev.key, self.nll_samples)

    def draw(self, pictures: Pictures, n: int = 12) -> list[Path]:
        """``reconstructions.png`` of ``n`` test images and ``samples.png``, four rows of ``n`` (module docstring).

        Returns:
            The paths written.
        """
        model, title = pictures.model, pictures.name
        k_rec, k_gen = jax.random.split(pictures.key)
        x = self.test[:: max(self.test.shape[0] // n, 1)][:n]
        rec = jax.jit(lambda x: reconstruct(model, x, k_rec))(x)
        samples = np.asarray(jax.jit(lambda k: generate(model, k, 4 * n))(k_gen))
        return [pictures.plot_image_grid([("test", x), ("reconstructed", rec)], self.shape,
                                         pictures.out_dir / "reconstructions.png", title=f"{title}: reconstructions"),
                pictures.plot_image_grid([("", samples[i * n:(i + 1) * n]) for i in range(4)], self.shape,
                                         pictures.out_dir / "samples.png", title=f"{title}: samples of the decoder")]


def vae_evaluation(model: VAE, data: Dataset, key: jax.Array, k: int, k_bound: int = 16, batch: int = 24) -> dict:
    """The VAE's metrics (module docstring) on batches of ``batch`` images.

    Args:
        model, data: the VAE and its data set.
        key: for the posterior paths.
        k: paths per image for log p(x).
        k_bound: paths per image for J_KL.

    Returns:
        The metrics by name.
    """
    bound_fn = jax.jit(lambda x, kk: path_bound(model, x, kk, k_bound))
    nll_fn = jax.jit(lambda x, kk: log_likelihood(model, x, kk, k))

    def over(images, key):
        m = images.shape[0]
        padded = np.resize(images, (-(-m // batch) * batch, images.shape[1]))  # the last batch filled from the start
        keys = jax.random.split(key, 2 * (padded.shape[0] // batch))
        bounds, logps, ses = [], [], []
        for i in range(0, padded.shape[0], batch):
            x = jnp.asarray(padded[i:i + batch])
            bounds.append(bound_fn(x, keys[2 * (i // batch)]))
            lp, se = nll_fn(x, keys[2 * (i // batch) + 1])
            logps.append(lp)
            ses.append(se)
        cut = lambda a: np.concatenate([np.asarray(v) for v in a])[:m]  # noqa: E731
        return cut(bounds), cut(logps), cut(ses), [float(np.mean(b) <= np.mean(lp)) for b, lp in zip(bounds, logps)]

    k_test, k_train = jax.random.split(key)
    bound, logp, se, below = over(data.test, k_test)
    train_bound = over(data.train[: data.test.shape[0]], k_train)[0]
    return {"test_jkl": float(-np.mean(bound)), "test_nll": float(-np.mean(logp)),
            "test_nll_stderr": float(np.sqrt(np.sum(se**2)) / se.shape[0]), "train_jkl": float(-np.mean(train_bound)),
            "bound_below_nll_batches": float(np.mean(below)), "n_test": int(data.test.shape[0]), "nll_samples": k}
