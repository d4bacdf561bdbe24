"""Gumbel-softmax relaxation of categorical samples (Jang, Gu & Poole 2017): a biased comparison."""
import torch
import torch.nn.functional as F
from torch import nn

from vae_cli.errors import ConfigError, check_integer, check_number
from vae_cli.estimators.terms import Terms
from vae_cli.latents.categorical import CategoricalLatent


class GumbelSoftmax(nn.Module):
    """Relaxed samples y = softmax((logits + g) / tau), g ~ Gumbel(0, 1), with the gradient of
    log p(x|y) backpropagated through y (Jang et al. 2017; Maddison et al. 2017). Biased for the
    discrete model: only tau -> 0 recovers it, at the price of variance.

    straight_through: the decoder sees the one-hot z = argmax(logits + g) in the forward pass and the
    gradient is that of the relaxed y (z = onehot - y.detach() + y).

    The logged terms are those of the discrete model either way: z = argmax(logits + g) is an exact
    sample of q(z|x) (the Gumbel-max trick), and recon is log p(x|z) on it, so the logged ELBO is an
    unbiased estimate comparable with REINFORCE's. The relaxed variant evaluates log p(x|y) for the
    gradient only (recon = log p(x|z) + (log p(x|y) - log p(x|y).detach())).

    Temperature schedule (Jang et al. 2017, section 4): tau_t = max(min_temperature,
    temperature * exp(-anneal_rate * t)), t the number of optimizer steps taken (a buffer, so it is
    saved in the checkpoint).
    """

    def __init__(self, temperature: float = 1.0, min_temperature: float = 0.5, anneal_rate: float = 1e-4,
                 straight_through: bool = False, num_samples: int = 1):
        super().__init__()
        self.initial_temperature = check_number("estimator.temperature", temperature)
        self.min_temperature = check_number("estimator.min_temperature", min_temperature)
        if not 0 < self.min_temperature <= self.initial_temperature:
            raise ConfigError(f"estimator.min_temperature={min_temperature!r} and estimator.temperature="
                              f"{temperature!r} must satisfy 0 < min_temperature <= temperature")
        self.anneal_rate = check_number("estimator.anneal_rate", anneal_rate, 0, "0: constant temperature")
        self.straight_through = bool(straight_through)
        self.num_samples = check_integer("estimator.num_samples", num_samples, 1)
        self.register_buffer("step", torch.zeros((), dtype=torch.long))

    def check_model(self, model: nn.Module) -> None:
        if not isinstance(model.latent, CategoricalLatent):
            raise ConfigError(
                f"estimator=gumbel_softmax relaxes one-hot samples and needs latent=categorical, but latent "
                f"is {type(model.latent).__name__}; use estimator=reparam (or reinforce) for it"
            )
        if getattr(model.likelihood, "scale", None) == "optimal" and not self.straight_through:
            raise ConfigError(  # each step scores the relaxed and the one-hot samples: two fits of sigma
                "estimator=gumbel_softmax with estimator.straight_through=false cannot use "
                "likelihood.scale=optimal: sigma would be fitted twice a step, to the relaxed and to the "
                "one-hot samples; set estimator.straight_through=true or likelihood.scale=learned"
            )

    def temperature(self) -> torch.Tensor:
        """tau_t as a 0-d tensor on the step counter's device (no host sync in the training loop)."""
        tau = self.initial_temperature * torch.exp(-self.anneal_rate * self.step.float())
        return tau.clamp(min=self.min_temperature)

    def forward(self, model: nn.Module, x: torch.Tensor, beta: float = 1.0) -> Terms:
        posterior = model.posterior(x)
        logits = posterior.logits.expand(self.num_samples, -1, -1, -1)  # (S, B, V, C)
        tau = self.temperature()
        relaxed = F.gumbel_softmax(logits, tau=tau, hard=self.straight_through)  # (S, B, V, C)
        z = F.one_hot(relaxed.argmax(-1), logits.shape[-1]).to(logits.dtype)  # exact sample of q
        if self.straight_through:
            log_likelihood = model.log_likelihood(x, relaxed)  # value at one-hot z, gradient through y
        elif torch.is_grad_enabled():
            relaxed_ll = model.log_likelihood(x, relaxed)  # (S, B), for the gradient only
            with torch.no_grad():
                hard_ll = model.log_likelihood(x, z)
            log_likelihood = relaxed_ll + (hard_ll - relaxed_ll).detach()
        else:
            log_likelihood = model.log_likelihood(x, z)  # evaluation: the discrete model only
        recon = log_likelihood.mean(0)  # (S, B) -> (B,)
        extras = {"temperature": tau}
        return Terms.from_parts(recon, model.latent.divergence_terms(posterior, z), beta, extras=extras)

    def after_step(self, terms: Terms) -> None:
        self.step += 1
