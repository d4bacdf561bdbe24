"""The named terms every estimator returns, per example in nats (docs/math.md 3)."""
from dataclasses import dataclass

import torch

TERM_NAMES = ("recon", "kl", "entropy", "cross_entropy", "elbo", "loss")


@dataclass
class Terms:
    """Per-example tensors (B,), signs as in docs/math.md 3.

    recon = E_q[log p(x|z)]; kl = KL(q(z|x) || p(z)); entropy = H[q(z|x)]; cross_entropy =
    E_q[-log p(z)]; elbo = recon - kl (the beta = 1 bound); loss = -(recon - beta kl), minimised.
    surrogate is the scalar whose gradient is the estimator's gradient of the batch-mean loss: equal to
    the mean loss for reparameterization, different (but with the same expected gradient) for
    score-function estimators. extras holds estimator diagnostics (baseline, learning signal).
    """

    recon: torch.Tensor
    kl: torch.Tensor
    entropy: torch.Tensor
    cross_entropy: torch.Tensor
    elbo: torch.Tensor
    loss: torch.Tensor
    surrogate: torch.Tensor
    extras: dict

    @classmethod
    def from_parts(cls, recon, divergence: dict, beta: float, surrogate=None, extras=None) -> "Terms":
        kl = divergence["kl"]
        loss = beta * kl - recon  # = -(recon - beta kl), (B,)
        with torch.no_grad():  # reported, never differentiated: no autograd node on the hot path
            elbo = recon - kl
        return cls(recon=recon, kl=kl, entropy=divergence["entropy"],
                   cross_entropy=divergence["cross_entropy"], elbo=elbo, loss=loss,
                   surrogate=loss.mean() if surrogate is None else surrogate, extras=extras or {})

    def stacked_means(self) -> torch.Tensor:
        """Batch means of the named terms in TERM_NAMES order, one (6,) tensor (no device sync)."""
        with torch.no_grad():
            return torch.stack([getattr(self, name) for name in TERM_NAMES]).mean(1)
