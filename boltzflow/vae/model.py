"""A variational autoencoder whose approximate posterior is a flow, an MCMC chain or an SNF (SNF paper sec. 5,
Table 3), built from the same layers and blocks as every other model.

Generative model: p(z) = N(0, I) on the latent space R^d, p(x | z) a Bernoulli per pixel with logits decoder(z)
(binary images; ``likelihood="gaussian"``: N(x; decoder(z), noise_std^2 I) for real-valued data). For one data
point x the posterior's unnormalised density is the joint

    log p(x, z) = log p(x | z) + log p(z),        its normaliser  int p(x, z) dz = p(x),

which is the SNF's target (:class:`Joint`, row i of z belonging to data point x_i). The approximate posterior
of x is an SNF (:meth:`VAE.posterior`) from the standard normal eps:

    z_0 = mu(x) + sigma(x) * eps          (:class:`ShiftScale`: the encoder's diagonal Gaussian, log-det sum log sigma)
    z_0 -> z_1 -> ... -> z_T              (the shared layers: RealNVP couplings, stochastic blocks, or both)

The shared layers are an ordinary flow or SNF (boltzflow.flows.builders.make_flow, boltzflow.snf.builder.make_snf)
on R^d; per data point only the first layer (mu(x), sigma(x)) and the blocks' target (the posterior of x,
:meth:`~boltzflow.snf.block.StochasticBlock.retarget`) change. The blocks' prior q0 is the SNF's base N(0, I),
in z-space the prior p(z), so a block at lambda samples pi_lambda(z) ∝ p(z) p(x | z)^lambda (SNF sec. 4), the
posterior at lambda = 1. The path weight of SNF eq. 11 with this target,

    log w = log p(x, z_T) - log N(eps) + sum_t log sigma_t(x) + sum_t dS_t,     E[w] = p(x),

gives the training objective J_KL = E[-log w] (SNF eq. 13: the negative ELBO of a VAE, a bound on -log p(x)) and
the importance-sampling estimate of log p(x) (boltzflow.vae.bound). Posterior types (a config's ``flow``
section): ``gaussian`` (no shared layers: the naive VAE), ``realnvp`` / ``nsf`` (a flow), ``snf`` with
``flow: null`` (MCMC: Langevin blocks only) or with a flow (SNF).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import equinox as eqx
import jax
import jax.numpy as jnp

from boltzflow.errors import BoltzflowError
from boltzflow.flows.base import Flow, Layer
from boltzflow.flows.builders import make_flow
from boltzflow.flows.distributions import StandardBase
from boltzflow.settings import Tagged
from boltzflow.snf.block import StochasticBlock
from boltzflow.snf.builder import make_snf
from boltzflow.targets.base import Target

LIKELIHOODS = ("bernoulli", "gaussian")
_LOG_2PI = math.log(2 * math.pi)


@dataclass(frozen=True)
class VAESettings:
    """``method: {name: vae, ...}``: the encoder / decoder MLPs and the evaluation's importance samples."""

    latent: int = 50  # latent dimension d (the SNF paper's 50)
    hidden: int = 300  # width of the encoder's and decoder's hidden layers
    depth: int = 2  # hidden layers of each MLP
    nll_samples: int = 1000  # importance samples per test point for log p(x) (boltzflow.vae.bound)

    def __post_init__(self):
        for name in ("latent", "hidden", "depth", "nll_samples"):
            if getattr(self, name) < 1:
                raise BoltzflowError(f"method vae: {name} must be a positive integer, got {getattr(self, name)!r}")
        if self.nll_samples < 2:
            raise BoltzflowError("method vae: nll_samples must be >= 2 (the estimate's standard error needs two)")


class Prior(Target):
    """p(z) = N(0, I) on R^dim: the posterior of no data, the target the shared SNF is built with."""

    def __init__(self, dim: int):
        self.dim, self.name, self.log_z = int(dim), "latent prior", 0.0

    def _log_prob(self, z):
        return -0.5 * jnp.sum(z**2, axis=-1) - 0.5 * self.dim * _LOG_2PI


class Joint(Target):
    """log p(x_i, z_i) as a function of z, row by row (module docstring); its normaliser for row i is p(x_i)."""

    def __init__(self, model: "VAE", x: jax.Array):
        self.model, self.x, self.dim, self.name = model, x, model.latent, "posterior"

    def _log_prob(self, z):
        return self.model.log_joint(self.x, z)


class ShiftScale(Layer):
    """z = loc + exp(log_scale) * eps, row by row (loc, log_scale: (n, d)); dS = sum_j log_scale_j."""

    loc: jax.Array
    log_scale: jax.Array

    def forward(self, x, key=None):
        return self.loc + jnp.exp(self.log_scale) * x, jnp.sum(self.log_scale, axis=-1)

    def inverse(self, y, key=None):
        return (y - self.loc) * jnp.exp(-self.log_scale), -jnp.sum(self.log_scale, axis=-1)


class VAE(eqx.Module):
    """Encoder x -> (mu, log sigma), decoder z -> likelihood parameters, and the posterior's shared layers."""

    encoder: eqx.nn.MLP
    decoder: eqx.nn.MLP
    layers: tuple
    latent: int = eqx.field(static=True)
    likelihood: str = eqx.field(static=True, default="bernoulli")
    noise_std: float = eqx.field(static=True, default=1.0)

    def __check_init__(self):
        if self.likelihood not in LIKELIHOODS:
            raise BoltzflowError(f"unknown likelihood {self.likelihood!r}; known: {', '.join(LIKELIHOODS)}")

    @property
    def target_evals(self) -> int:
        """Evaluations of log p(x, z) per posterior path inside the blocks (the final one not counted)."""
        return sum(layer.target_evals for layer in self.layers)

    def encode(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        """(mu, log sigma), each (n, d), of the encoder's Gaussian."""
        out = jax.vmap(self.encoder)(x)
        return out[:, : self.latent], out[:, self.latent:]

    def decode(self, z: jax.Array) -> jax.Array:
        """The likelihood's parameters (n, D): Bernoulli logits, or the Gaussian's mean."""
        return jax.vmap(self.decoder)(z)

    def mean(self, z: jax.Array) -> jax.Array:
        """E[x | z] (n, D): pixel probabilities, or the Gaussian's mean."""
        out = self.decode(z)
        return jax.nn.sigmoid(out) if self.likelihood == "bernoulli" else out

    def log_joint(self, x: jax.Array, z: jax.Array) -> jax.Array:
        """log p(x | z) + log p(z) per row (n,)."""
        out = self.decode(z)
        if self.likelihood == "bernoulli":
            log_lik = jnp.sum(x * out - jax.nn.softplus(out), axis=-1)
        else:
            r = (x - out) / self.noise_std
            log_lik = -0.5 * jnp.sum(r**2, axis=-1) - x.shape[-1] * (math.log(self.noise_std) + 0.5 * _LOG_2PI)
        return log_lik - 0.5 * jnp.sum(z**2, axis=-1) - 0.5 * self.latent * _LOG_2PI

    def posterior(self, x: jax.Array) -> tuple[Flow, Joint]:
        """The approximate posterior of each row of x (n, D) as a model over n latent points from N(0, I) noise,
        and its target log p(x_i, .): ``boltzflow.flows.paths.path_weights(*vae.posterior(x), key, n)`` gives
        the path weights of module docstring (row i for x_i)."""
        target = Joint(self, x)
        mu, log_sigma = self.encode(x)
        layers = tuple(layer.retarget(target) if isinstance(layer, StochasticBlock) else layer
                       for layer in self.layers)
        return Flow(StandardBase(self.latent, dtype=mu.dtype), (ShiftScale(mu, log_sigma),) + layers), target


def make_vae(s: VAESettings, flow: Tagged, key: jax.Array, data_dim: int, dtype=jnp.float32,
             likelihood: str = "bernoulli", noise_std: float = 1.0) -> VAE:
    """A VAE from its settings and the posterior's ``flow`` settings (module docstring)."""
    k_enc, k_dec, k_flow = jax.random.split(key, 3)
    mlp = dict(width_size=s.hidden, depth=s.depth, activation=jax.nn.silu, dtype=dtype)
    encoder = eqx.nn.MLP(data_dim, 2 * s.latent, key=k_enc, **mlp)
    decoder = eqx.nn.MLP(s.latent, data_dim, key=k_dec, **mlp)
    if flow.name == "snf":
        shared = make_snf(flow.settings, k_flow, Prior(s.latent), dtype)
    else:
        shared = make_flow(flow, k_flow, s.latent, dtype)
    if shared.dim != s.latent:
        raise BoltzflowError("a VAE's posterior flow must keep the latent dimension (coordinates: cartesian)")
    return VAE(encoder, decoder, shared.layers, s.latent, likelihood, float(noise_std))
