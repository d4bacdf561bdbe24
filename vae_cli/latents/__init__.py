"""Latent variable types: each defines q(z|x) from encoder outputs, p(z), and exact divergence terms."""
from vae_cli.latents.categorical import CategoricalLatent
from vae_cli.latents.gaussian import GaussianLatent

__all__ = ["CategoricalLatent", "GaussianLatent"]
