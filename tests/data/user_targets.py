"""User-defined targets for the CLI tests (imported as `user_targets:NAME`)."""

import jax.numpy as jnp


def gaussian():
    return (lambda x: -0.5 * jnp.sum((x - 1.0) ** 2, axis=1)), 2


def nan_density():
    return (lambda x: jnp.full(x.shape[0], jnp.nan)), 2


def wrong_shape():
    return (lambda x: jnp.sum(x)), 2
