"""The linear-Gaussian test bench of docs/math.md 7: exact log p(x) and the true posterior, in float64."""
import torch
from torch.distributions import MultivariateNormal

from vae_cli.latents import GaussianLatent
from vae_cli.likelihoods import Gaussian
from vae_cli.model import VAE


def linear_gaussian(data_dim=6, latent_dim=3, noise=0.5, seed=0, latent=None):
    """A VAE with linear encoder and decoder: z ~ N(0, I), x|z ~ N(Wz + b, s^2 I).

    W has orthogonal columns, so the true posterior N(M^-1 W^T (x - b) / s^2, M^-1) with
    M = I + W^T W / s^2 is diagonal and the diagonal-Gaussian encoder can represent it exactly.
    """
    gen = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(data_dim, latent_dim, generator=gen, dtype=torch.float64))
    weight = q * torch.linspace(0.5, 2.0, latent_dim, dtype=torch.float64)  # (D, K), orthogonal columns
    bias = torch.randn(data_dim, generator=gen, dtype=torch.float64)
    model = VAE(data_dim, latent or GaussianLatent(latent_dim), Gaussian(scale="fixed", sigma=noise),
                hidden_sizes=[], activation="relu", latent_dim=latent_dim).double()
    with torch.no_grad():
        model.decoder[0].weight.copy_(weight)
        model.decoder[0].bias.copy_(bias)
    return model, weight, bias, noise


def exact_log_px(x, weight, bias, noise):
    """x ~ N(b, W W^T + s^2 I)."""
    cov = weight @ weight.T + noise**2 * torch.eye(weight.shape[0], dtype=weight.dtype)
    return MultivariateNormal(bias, cov).log_prob(x)


def set_true_posterior(model, weight, bias, noise):
    """Encoder weights so that q(z|x) equals p(z|x) exactly."""
    latent_dim = weight.shape[1]
    precision = torch.eye(latent_dim, dtype=weight.dtype) + weight.T @ weight / noise**2  # M, diagonal
    cov = torch.linalg.inv(precision)
    gain = cov @ weight.T / noise**2  # (K, D)
    with torch.no_grad():
        enc = model.encoder[0]
        enc.weight.zero_()
        enc.bias.zero_()
        enc.weight[:latent_dim] = gain
        enc.bias[:latent_dim] = -gain @ bias
        enc.bias[latent_dim:] = torch.log(torch.diagonal(cov))
