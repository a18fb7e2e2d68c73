"""The VAE's objective and its log-likelihood estimate, from the posterior's path weights (boltzflow.vae.model).

For data point x and K forward paths of its posterior SNF with log weights log w_k (SNF eq. 11, target
log p(x, .)), E[w] = p(x), so

    J_KL(x) = E[-log w] >= -log p(x)                                   (SNF eq. 13; the negative ELBO),
    log p^(x) = log (1/K) sum_k w_k,   se = std(w) / (sqrt(K) mean(w))  (importance sampling, boltzflow.estimators).

log p^ is consistent and biased low by about se^2 / 2; by Jensen E[log p^] >= -J_KL for every K, the gap closing
as K grows (the SNF paper estimates the test NLL so, with the path weight as importance weight).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from boltzflow.estimators import log_z_estimate
from boltzflow.flows.paths import path_weights


def posterior_paths(model, x: jax.Array, key: jax.Array, k: int):
    """k posterior paths per row of x (b, D): (z (b, k, d), log w (b, k), the blocks' diagnostics)."""
    rows = jnp.repeat(x, k, axis=0)
    q, target = model.posterior(rows)
    z, log_w, infos = path_weights(q, target, key, rows.shape[0])
    return z.reshape(x.shape[0], k, -1), log_w.reshape(x.shape[0], k), infos


def path_bound(model, x: jax.Array, key: jax.Array, k: int = 1) -> jax.Array:
    """-J_KL(x) per row (b,), estimated by the mean of k path log weights."""
    return jnp.mean(posterior_paths(model, x, key, k)[1], axis=1)


def log_likelihood(model, x: jax.Array, key: jax.Array, k: int) -> tuple[jax.Array, jax.Array]:
    """(log p^(x), its standard error), each (b,), from k importance samples per row (module docstring)."""
    return jax.vmap(log_z_estimate)(posterior_paths(model, x, key, k)[1])


def reconstruct(model, x: jax.Array, key: jax.Array) -> jax.Array:
    """E[x' | z] for one posterior sample z of each row of x (b, D) -> (b, D)."""
    return model.mean(posterior_paths(model, x, key, 1)[0][:, 0])


def generate(model, key: jax.Array, n: int) -> jax.Array:
    """E[x | z] for n draws z ~ p(z) = N(0, I) -> (n, D)."""
    return model.mean(jax.random.normal(key, (n, model.latent), model.decoder.layers[0].weight.dtype))
