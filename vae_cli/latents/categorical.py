"""num_vars independent categorical latents of num_classes classes, one-hot, with a categorical prior."""
import itertools
import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.distributions import Independent, OneHotCategorical

from vae_cli.errors import check_choice, check_integer


class CategoricalLatent(nn.Module):
    """q(z|x) = prod_v Cat(z_v; softmax(logits_v)); p(z) uniform, or learned logits shared over x.

    Samples are one-hot (S, B, num_vars, num_classes) and are not differentiable in the encoder
    (MATH.md 4): only score-function or relaxed estimators train the encoder. KL, entropy and
    cross-entropy are exact sums over classes (MATH.md 2):
        H = -sum_v sum_c q_vc log q_vc,  CE = -sum_v sum_c q_vc log p_vc,  KL = CE - H.
    """

    reparameterized = False

    def __init__(self, num_vars: int = 20, num_classes: int = 10, prior: str = "uniform"):
        super().__init__()
        check_choice("latent.prior", prior, ("uniform", "learned"))
        self.num_vars = check_integer("latent.num_vars", num_vars, 1)
        self.num_classes = check_integer("latent.num_classes", num_classes, 2)
        self.param_size = self.num_vars * self.num_classes  # encoder outputs: logits
        self.sample_size = self.num_vars * self.num_classes  # decoder inputs: flattened one-hots
        logits = torch.zeros(self.num_vars, self.num_classes)
        if prior == "learned":
            self.prior_logits = nn.Parameter(logits)
        else:
            self.register_buffer("prior_logits", logits)

    def posterior(self, params: torch.Tensor) -> Independent:
        logits = params.unflatten(-1, (self.num_vars, self.num_classes))  # (B, V, C)
        return Independent(OneHotCategorical(logits=logits, validate_args=False), 1)

    def prior(self) -> Independent:
        return Independent(OneHotCategorical(logits=self.prior_logits, validate_args=False), 1)

    def sample(self, posterior: Independent, num_samples: int) -> torch.Tensor:
        return posterior.sample((num_samples,))  # (S, B, V, C), no gradient path

    def mode(self, posterior: Independent) -> torch.Tensor:
        """The most likely class of each variable, one-hot (B, V, C): what the decoder was trained on."""
        logits = posterior.base_dist.logits
        return F.one_hot(logits.argmax(-1), self.num_classes).to(logits.dtype)

    def sample_prior(self, num_samples: int, generator: torch.Generator | None = None) -> torch.Tensor:
        probs = F.softmax(self.prior_logits.detach(), -1)  # (V, C)
        index = torch.multinomial(probs.repeat(num_samples, 1), 1, generator=generator)  # (N*V, 1)
        return F.one_hot(index.view(num_samples, self.num_vars), self.num_classes).to(probs.dtype)

    def decoder_input(self, z: torch.Tensor) -> torch.Tensor:
        return z.flatten(-2)  # (..., B, V, C) -> (..., B, V*C)

    def log_prior(self, z: torch.Tensor) -> torch.Tensor:
        return (z * F.log_softmax(self.prior_logits, -1)).sum((-2, -1))  # (..., B)

    def divergence_terms(self, posterior: Independent, z: torch.Tensor | None = None) -> dict:
        """Exact kl, entropy and cross_entropy per example (B,): sums over variables and classes."""
        log_q = F.log_softmax(posterior.base_dist.logits, -1)  # (B, V, C)
        q = log_q.exp()
        log_p = F.log_softmax(self.prior_logits, -1)  # (V, C)
        entropy = -(q * log_q).sum((-2, -1))
        cross_entropy = -(q * log_p).sum((-2, -1))
        return {"kl": cross_entropy - entropy, "entropy": entropy, "cross_entropy": cross_entropy}

    def num_configurations(self) -> int:
        return self.num_classes**self.num_vars

    def enumerate(self) -> torch.Tensor:
        """Every joint configuration, one-hot: (num_classes ** num_vars, V, C)."""
        index = torch.tensor(list(itertools.product(range(self.num_classes), repeat=self.num_vars)),
                             device=self.prior_logits.device)
        return F.one_hot(index, self.num_classes).to(self.prior_logits.dtype)

    def max_entropy(self) -> float:
        return self.num_vars * math.log(self.num_classes)
