"""The score-function (REINFORCE) ELBO estimator, with a choice of baseline (control variate)."""
import torch
from torch import nn

from vae_cli.errors import ConfigError, check_choice, check_integer, check_number
from vae_cli.estimators.baselines import BASELINES, Learned, make_baseline
from vae_cli.estimators.terms import Terms


class Reinforce(nn.Module):
    """ELBO(x) = E_q[log p(x|z)] - KL(q(z|x) || p(z)), with the encoder gradient of the expectation
    estimated by the score function (Williams 1992; docs/math.md 6):

        grad_phi E_q[f(z)] = E_q[(f(z) - b) grad_phi log q(z|x)],  f(z) = log p(x|z)

    from num_samples samples z_s ~ q(z|x) per example, drawn without a gradient path. The surrogate

        -mean_B[ 1/S sum_s ( log p(x|z_s) + (f_s - b_s).detach() * log q(z_s|x) ) ] + beta * mean_B KL

    has this gradient: the decoder gets the pathwise gradient of log p(x|z_s), the encoder the score
    term, and the exact KL (closed form for categorical and Gaussian latents) its exact gradient.
    A learned baseline adds its squared-error fit, mean ((f - b(x)) / scale)^2, touching only its network.

    Works for any latent whose log q(z|x) is differentiable in the encoder output: categorical
    (where it is the only unbiased option) and Gaussian (to compare with reparameterization).
    """

    def __init__(self, num_samples: int = 4, baseline: str = "leave_one_out", decay: float = 0.9,
                 hidden_size: int = 100):
        super().__init__()
        check_choice("estimator.baseline", baseline, BASELINES)
        num_samples = check_integer("estimator.num_samples", num_samples, 1)
        if baseline == "leave_one_out" and num_samples < 2:
            raise ConfigError(
                f"estimator.num_samples={num_samples!r} is too few for estimator.baseline=leave_one_out, "
                "which needs >= 2 samples per example (each sample's baseline is the mean of the others); "
                "set estimator.num_samples=4, or choose another estimator.baseline"
            )
        if not 0.0 <= check_number("estimator.decay", decay) < 1.0:
            raise ConfigError(f"estimator.decay={decay!r} must be in [0, 1) (moving-average decay)")
        check_integer("estimator.hidden_size", hidden_size, 1)
        self.num_samples = num_samples
        self.baseline_name = baseline
        self.baseline = make_baseline(baseline, decay, hidden_size)

    def setup(self, model: nn.Module, data=None) -> None:
        """Build the learned baseline's network for the model's data dimension, dtype and device."""
        if isinstance(self.baseline, Learned):
            self.baseline.setup(model.data_dim, next(model.parameters()))

    def check_model(self, model: nn.Module) -> None:
        if getattr(model.likelihood, "scale", None) == "optimal":
            raise ConfigError(
                "estimator=reinforce cannot use likelihood.scale=optimal: sigma is fitted to the batch's "
                "samples, so each sample's log p(x|z) depends on the others and the score-function "
                "gradient is biased; set likelihood.scale=learned (or fixed), or use estimator=reparam"
            )
        kl_mode = getattr(model.latent, "kl_mode", "analytic")
        if kl_mode != "analytic":
            raise ConfigError(
                f"estimator=reinforce needs an exact KL, but latent.kl={kl_mode!r} estimates it on the "
                "samples, which carry no gradient here; set latent.kl=analytic"
            )

    def forward(self, model: nn.Module, x: torch.Tensor, beta: float = 1.0) -> Terms:
        posterior = model.posterior(x)
        z = model.latent.sample(posterior, self.num_samples).detach()  # (S, B, ...), no pathwise gradient
        log_q = posterior.log_prob(z)  # (S, B), differentiable in the encoder
        log_likelihood = model.log_likelihood(x, z)  # (S, B), differentiable in the decoder
        signal = log_likelihood.detach()  # f = log p(x|z): the KL is exact, handled separately
        baseline = self.baseline(x, signal)  # (S, B)
        residual = signal - baseline.detach()  # f - b
        score = (residual * log_q).mean(0)  # (S, B) -> (B,): gradient = score-function estimate
        recon = log_likelihood.mean(0)  # (S, B) -> (B,)
        divergence = model.latent.divergence_terms(posterior, z)
        surrogate = -(recon + score - beta * divergence["kl"]).mean()
        if isinstance(self.baseline, Learned):
            surrogate = surrogate + self.baseline.fit_loss(signal, baseline)  # NVIL fit: the network only
        extras = {"baseline": baseline.detach().mean(), "signal_mean": signal.mean(),
                  "signal_std": signal.std(correction=0),
                  "residual_rms": residual.pow(2).mean().sqrt()}  # sqrt E(f - b)^2, what scales the score
        return Terms.from_parts(recon, divergence, beta, surrogate=surrogate, extras=extras)

    def after_step(self, terms: Terms) -> None:
        """Moving averages move once per optimizer step, by the batch-mean learning signal."""
        if hasattr(self.baseline, "update"):
            self.baseline.update(terms.extras)
