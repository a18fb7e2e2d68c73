"""User-defined targets for the CLI tests (imported as `user_targets:NAME`)."""

import jax.numpy as jnp


def gaussian():
    return (lambda x: -0.5 * jnp.sum((x - 1.0) ** 2, axis=1)), 2


def nan_density():
    return (lambda x: jnp.full(x.shape[0], jnp.nan)), 2


def wrong_shape():
    return (lambda x: jnp.sum(x)), 2


def standard_normal():
    """A Target with known log Z and exact samples: N(0, I) in 2-D, unnormalised (log Z = log 2 pi)."""
    import jax

    from boltzflow.targets import FunctionTarget

    return FunctionTarget(lambda x: -0.5 * jnp.sum(x**2, axis=1), 2, name="std_normal",
                          log_z=float(jnp.log(2 * jnp.pi)), sampler=lambda key, n: jax.random.normal(key, (n, 2)))
