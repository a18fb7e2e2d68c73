"""Variational autoencoders whose posteriors are flows, MCMC chains or SNFs (SNF paper sec. 5, Table 3)."""

from boltzflow.vae.bound import generate, log_likelihood, path_bound, posterior_paths, reconstruct
from boltzflow.vae.model import VAE, VAESettings, make_vae

__all__ = ["VAE", "VAESettings", "generate", "log_likelihood", "make_vae", "path_bound", "posterior_paths",
           "reconstruct"]
