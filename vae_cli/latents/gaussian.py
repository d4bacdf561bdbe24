"""Diagonal Gaussian posterior q(z|x) = N(mu, diag sigma^2) with a standard normal prior p(z)."""
import torch
from torch import nn
from torch.distributions import Independent, Normal

from vae_cli.errors import check_choice, check_integer
from vae_cli.likelihoods import LOG_2PI


class DiagonalGaussian:
    """N(loc, diag exp(log_var)) over the last dimension, kept as (loc, log_var).

    What torch.distributions' Independent(Normal) gives here (mean, rsample, log_prob), without its
    per-construction argument handling, which the hot path paid once per batch (~3 % of a training
    step, measured side by side in alternating blocks of steps). log_var is kept as the encoder emitted it, so the KL needs
    no log(scale), which underflows to log(0) for log_var below about -206 in float32.
    """

    def __init__(self, loc: torch.Tensor, log_var: torch.Tensor):
        self.loc, self.log_var = loc, log_var  # (B, K) each
        self.scale = torch.exp(0.5 * log_var)

    @property
    def mean(self) -> torch.Tensor:
        return self.loc

    def rsample(self, sample_shape: tuple = ()) -> torch.Tensor:
        """z = loc + scale * eps, eps ~ N(0, I): differentiable in loc and log_var."""
        eps = torch.randn(tuple(sample_shape) + self.loc.shape, dtype=self.loc.dtype, device=self.loc.device)
        return self.loc + self.scale * eps  # (*sample_shape, B, K)

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """log q(z|x) = sum_j [-1/2 log(2 pi) - 1/2 log_var_j - (z_j - loc_j)^2 / (2 exp(log_var_j))]."""
        standardized = (z - self.loc) * torch.exp(-0.5 * self.log_var)
        return (-0.5 * (LOG_2PI + self.log_var + standardized.pow(2))).sum(-1)  # (..., B)


class GaussianLatent(nn.Module):
    """num_vars independent Gaussian latents, sampled by reparameterization z = mu + sigma * eps.

    The encoder emits (mu, log sigma^2) per variable, as in Kingma & Welling (2014).
    kl="analytic" uses the closed forms (Kingma & Welling, Appendix B):
        KL(q || N(0, I)) = 1/2 sum_j [mu_j^2 + sigma_j^2 - 1 - log sigma_j^2]
        H[q]  = 1/2 sum_j [log(2 pi) + 1 + log sigma_j^2]
        CE    = 1/2 sum_j [log(2 pi) + mu_j^2 + sigma_j^2]
    kl="monte_carlo" uses log q(z|x) - log p(z) on the drawn samples (and -log q, -log p for H, CE).
    Either way KL = CE - H holds exactly (docs/math.md 3).
    """

    reparameterized = True  # samples are differentiable functions of the encoder output

    def __init__(self, num_vars: int = 20, kl: str = "analytic"):
        super().__init__()
        check_choice("latent.kl", kl, ("analytic", "monte_carlo"))
        self.num_vars = check_integer("latent.num_vars", num_vars, 1)
        self.kl_mode = kl
        self.param_size = 2 * self.num_vars  # encoder outputs: mu and log sigma^2
        self.sample_size = self.num_vars  # decoder inputs
        # p(z) = N(0, I); a buffer so that the prior follows the model to its device.
        self.register_buffer("prior_loc", torch.zeros(self.num_vars), persistent=False)

    def posterior(self, params: torch.Tensor) -> DiagonalGaussian:
        loc, log_var = params.chunk(2, dim=-1)  # (B, K) each
        return DiagonalGaussian(loc, log_var)

    def prior(self) -> Independent:
        return Independent(Normal(self.prior_loc, torch.ones_like(self.prior_loc), validate_args=False), 1,
                           validate_args=False)

    def sample(self, posterior: DiagonalGaussian, num_samples: int) -> torch.Tensor:
        return posterior.rsample((num_samples,))  # (S, B, K)

    def mode(self, posterior: DiagonalGaussian) -> torch.Tensor:
        return posterior.loc  # (B, K)

    def sample_prior(self, num_samples: int, generator: torch.Generator | None = None) -> torch.Tensor:
        return torch.randn(num_samples, self.num_vars, generator=generator, device=self.prior_loc.device)

    def decoder_input(self, z: torch.Tensor) -> torch.Tensor:
        return z

    def log_prior(self, z: torch.Tensor) -> torch.Tensor:
        return (-0.5 * LOG_2PI - 0.5 * z.pow(2)).sum(-1)

    def divergence_terms(self, posterior: DiagonalGaussian, z: torch.Tensor) -> dict[str, torch.Tensor]:
        """kl, entropy and cross_entropy per example, (B,), for samples z of shape (S, B, K)."""
        if self.kl_mode == "analytic":
            loc, scale, log_var = posterior.loc, posterior.scale, posterior.log_var
            kl = 0.5 * (loc.pow(2) + scale.pow(2) - 1 - log_var).sum(-1)
            with torch.no_grad():  # logged, not optimised: no autograd graph on the hot path
                entropy = 0.5 * (self.num_vars * (LOG_2PI + 1) + log_var.sum(-1))
                cross_entropy = entropy + kl  # = 1/2 sum_j [log(2 pi) + mu_j^2 + sigma_j^2]
        else:
            entropy = -posterior.log_prob(z).mean(0)  # (S, B) -> (B,)
            cross_entropy = -self.log_prior(z).mean(0)
            kl = cross_entropy - entropy
        return {"kl": kl, "entropy": entropy, "cross_entropy": cross_entropy}
