"""The reparameterized ELBO estimator for Gaussian latents (Kingma & Welling 2014)."""
import torch
from torch import nn

from vae_cli.errors import ConfigError, check_integer
from vae_cli.estimators.terms import Terms


class Reparameterized(nn.Module):
    """ELBO(x) = E_q[log p(x|z)] - KL(q(z|x) || p(z)), z = mu + sigma * eps, eps ~ N(0, I).

    The expectation is a num_samples-sample average; the randomness sits in eps, so the gradient
    flows through z into the encoder by ordinary backpropagation (docs/math.md 6). KL, entropy and
    cross-entropy come from the latent type (closed form, or Monte Carlo on the same samples).
    """

    def __init__(self, num_samples: int = 1):
        super().__init__()
        self.num_samples = check_integer("estimator.num_samples", num_samples, 1)

    def check_model(self, model: nn.Module) -> None:
        if not getattr(model.latent, "reparameterized", False):
            raise ConfigError(
                f"estimator=reparam needs a reparameterizable latent, but latent is "
                f"{type(model.latent).__name__}; use estimator=reinforce (or exact, gumbel_softmax)"
            )

    def forward(self, model: nn.Module, x: torch.Tensor, beta: float = 1.0) -> Terms:
        posterior = model.posterior(x)
        z = model.latent.sample(posterior, self.num_samples)  # (S, B, K)
        recon = model.log_likelihood(x, z).mean(0)  # (S, B) -> (B,)
        return Terms.from_parts(recon, model.latent.divergence_terms(posterior, z), beta)
