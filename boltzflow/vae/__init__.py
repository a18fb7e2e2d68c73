"""Variational autoencoders whose posteriors are flows, MCMC chains or SNFs (SNF paper sec. 5, Table 3)."""

from boltzflow.vae.bound import generate, log_likelihood, path_bound, posterior_paths, reconstruct
from boltzflow.vae.model import VAE, VAESettings, make_vae
from boltzflow.vae.report import VAEData, vae_evaluation

__all__ = ["VAE", "VAEData", "VAESettings", "generate", "log_likelihood", "make_vae", "path_bound", "posterior_paths",
           "reconstruct", "vae_evaluation"]
