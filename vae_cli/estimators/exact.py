"""The exact ELBO of a categorical latent by enumerating every configuration: the reference gradient."""
import torch
from torch import nn

from vae_cli.errors import ConfigError, check_integer
from vae_cli.estimators.terms import Terms
from vae_cli.latents.categorical import CategoricalLatent


class Exact(nn.Module):
    """E_q[log p(x|z)] = sum_k q(z_k|x) log p(x|z_k) over all K = num_classes ** num_vars joint
    configurations z_k (docs/math.md 6). No sampling, so no estimator variance: autograd through q(z_k|x)
    and log p(x|z_k) gives the exact gradient, against which REINFORCE and the relaxations are checked.
    Cost: K decoder passes per example, hence max_configurations.
    """

    def __init__(self, max_configurations: int = 4096):
        super().__init__()
        self.max_configurations = check_integer("estimator.max_configurations", max_configurations, 1)

    def check_model(self, model: nn.Module) -> None:
        latent = model.latent
        if not isinstance(latent, CategoricalLatent):
            raise ConfigError(
                f"estimator=exact enumerates a discrete latent, but latent is {type(latent).__name__}; "
                "use latent=categorical (or estimator=reparam for a Gaussian latent)"
            )
        count = latent.num_configurations()
        if count > self.max_configurations:
            raise ConfigError(
                f"estimator=exact would enumerate latent.num_classes ** latent.num_vars = "
                f"{latent.num_classes} ** {latent.num_vars} = {count} configurations, above "
                f"estimator.max_configurations={self.max_configurations}; use fewer latent variables "
                "(model.latent_dim) or classes, raise estimator.max_configurations, or use estimator=reinforce"
            )
        if getattr(model.likelihood, "scale", None) == "optimal":  # its fit is an unweighted mean over the z_k
            raise ConfigError(
                "estimator=exact cannot use likelihood.scale=optimal: sigma would be fitted to all K "
                "configurations alike, where the ELBO weights each by q(z_k|x); set likelihood.scale=learned "
                "(or fixed)"
            )

    def forward(self, model: nn.Module, x: torch.Tensor, beta: float = 1.0) -> Terms:
        posterior = model.posterior(x)
        configurations = model.latent.enumerate()  # (K, V, C)
        z = configurations.unsqueeze(1).expand(-1, x.shape[0], -1, -1)  # (K, B, V, C)
        log_q = posterior.log_prob(z)  # (K, B)
        recon = (log_q.exp() * model.log_likelihood(x, z)).sum(0)  # (K, B) -> (B,)
        return Terms.from_parts(recon, model.latent.divergence_terms(posterior, z), beta)
