"""Training a VAE with a flow / MCMC / SNF posterior by the path bound J_KL (SNF paper sec. 5, Table 3).

Every step draws a minibatch x of the training images (uniformly, with replacement) and one posterior path per
image, and minimises J_KL = E_x E[-log w] (boltzflow.vae.bound; SNF eq. 13 with the posterior of x as target),
jointly over the encoder, the decoder and the posterior's shared layers. The loop's periodic ESS evaluation is
the posterior's importance-sampling ESS, averaged over the first ``ESS_POINTS`` test images (each with
``eval_samples // ESS_POINTS`` paths): how well q(z | x) covers p(z | x).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from boltzflow.estimators import effective_sample_size
from boltzflow.flows.paths import block_metrics
from boltzflow.train.api import Method, Problem, masked_mean, sample_loss_method
from boltzflow.vae.bound import posterior_paths
from boltzflow.vae.model import VAESettings

ESS_POINTS = 32


def vae_loss(model, x: jax.Array, key: jax.Array):
    """J_KL on the minibatch x (one path per image) and its metrics."""
    _, log_w, infos = posterior_paths(model, x, key, 1)
    log_w = log_w[:, 0]
    ok = jnp.isfinite(log_w)
    return -masked_mean(log_w, ok), {"n_nonfinite": jnp.sum(~ok), **block_metrics(infos)}


def build_vae(s: VAESettings, problem: Problem) -> Method:
    """The ``vae`` method on ``problem.target``, a :class:`boltzflow.data.Dataset`."""
    train, test = jnp.asarray(problem.target.train), jnp.asarray(problem.target.test)

    def loss(model, key, n):
        k_x, k_z = jax.random.split(key)
        return vae_loss(model, train[jax.random.randint(k_x, (n,), 0, train.shape[0])], k_z)

    def ess(model, key, n):
        x = test[:ESS_POINTS]
        log_w = posterior_paths(model, x, key, max(n // x.shape[0], 2))[1]
        return jnp.mean(jax.vmap(effective_sample_size)(log_w))

    return sample_loss_method(loss, problem, model_samples=True)._replace(ess=ess)
