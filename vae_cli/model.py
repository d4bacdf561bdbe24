"""The VAE: an MLP encoder giving q(z|x), a latent type with its prior p(z), an MLP decoder giving p(x|z)."""
import torch
from torch import nn

from vae_cli.errors import ConfigError, check_choice

ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "elu": nn.ELU, "gelu": nn.GELU, "softplus": nn.Softplus}


def mlp(sizes: list[int], activation: str) -> nn.Sequential:
    """Linear layers between consecutive sizes, with the activation between them (not after the last)."""
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(n_in, n_out))
        if i < len(sizes) - 2:
            layers.append(ACTIVATIONS[activation]())
    return nn.Sequential(*layers)


class VAE(nn.Module):
    """Defines the distributions; the estimator (vae_cli.estimators) defines the objective.

    encoder: x (B, D) -> latent parameters (B, latent.param_size); posterior q(z|x) from them.
    decoder: z (..., B, latent.sample_size) -> likelihood parameters (..., B, D, params_per_dim).
    The decoder mirrors the encoder's hidden sizes, as in pytorch/examples' vae (784-400-20-400-784).
    """

    def __init__(self, data_dim: int, latent: nn.Module, likelihood: nn.Module,
                 hidden_sizes: list[int], activation: str, latent_dim: int):
        super().__init__()
        check_choice("model.activation", activation, tuple(ACTIVATIONS))
        if latent.num_vars != latent_dim:
            raise ConfigError(
                f"latent.num_vars={latent.num_vars} differs from model.latent_dim={latent_dim}; "
                "set model.latent_dim only (the latent config interpolates it)"
            )
        if not isinstance(hidden_sizes, (list, tuple)) or not all(
                isinstance(h, int) and not isinstance(h, bool) and h > 0 for h in hidden_sizes):
            raise ConfigError(f"model.hidden_sizes={hidden_sizes!r} must be a list of positive integers, "
                              "e.g. model.hidden_sizes=[400] or model.hidden_sizes=[200,200]")
        hidden = list(hidden_sizes)
        self.data_dim = data_dim
        self.latent = latent
        self.likelihood = likelihood
        self.encoder = mlp([data_dim, *hidden, latent.param_size], activation)
        self.decoder = mlp([latent.sample_size, *reversed(hidden),
                            data_dim * likelihood.params_per_dim], activation)

    def posterior(self, x: torch.Tensor):
        return self.latent.posterior(self.encoder(x))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Likelihood parameters (..., B, D, params_per_dim) for latent samples z: (..., B, K) Gaussian,
        (..., B, V, C) one-hot categorical (latent.decoder_input flattens them)."""
        out = self.decoder(self.latent.decoder_input(z))
        return out.unflatten(-1, (self.data_dim, self.likelihood.params_per_dim))

    def log_likelihood(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """log p(x|z) per example and sample: (S, B)."""
        return self.likelihood.log_prob(self.decode(z), x)

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """Mean of p(x|z) at the posterior's most likely z (Gaussian: the mean; categorical: the mode)."""
        return self.likelihood.mean(self.decode(self.latent.mode(self.posterior(x))))
