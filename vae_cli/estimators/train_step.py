"""One training step behind one interface: autograd for every estimator, or the hand-written fast path.

make_train_step(cfg.train_step, ...) returns an object step with step(x) -> the 6 batch-mean terms
(TERM_NAMES order) after forward, gradients, optional clipping, optimizer.step() and the estimator's
after_step; step.extras() gives the estimator's diagnostics; step.name says which one runs.
"""
import torch
from torch import nn

from vae_cli.errors import ConfigError
from vae_cli.estimators.fused_reparam import FusedReparamStep, unsupported_reason

__all__ = ["AutogradStep", "FusedReparamStep", "make_train_step", "fused_unsupported_reason"]

# Where the hand-written step was measured to pay (benchmarks/README.md, "Training step"); on other
# devices train_step=auto trains through autograd.
FUSED_DEVICE_TYPES = ("cpu",)


class AutogradStep:
    """The estimator's surrogate, differentiated by autograd: works for every estimator and model."""

    name = "autograd"

    def __init__(self, model: nn.Module, estimator: nn.Module, optimizer,
                 beta: float, clip_grad_norm: float | None = None):
        self.model, self.estimator, self.optimizer = model, estimator, optimizer
        self.beta = float(beta)
        self.clip_grad_norm = clip_grad_norm
        self.grad_norm = None  # the last step's total gradient norm before clipping (when clipping)
        self.after_step = getattr(estimator, "after_step", None)  # an estimator's own update (baselines)
        self.last_extras: dict = {}

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Forward, backward, clipping, optimizer.step(), after_step on a prepared batch x (B, D);
        returns the batch means of the named terms in TERM_NAMES order (6,)."""
        terms = self.estimator(self.model, x, self.beta)
        self.optimizer.zero_grad(set_to_none=True)
        terms.surrogate.backward()
        if self.clip_grad_norm is not None:
            self.grad_norm = nn.utils.clip_grad_norm_(
                [p for group in self.optimizer.param_groups for p in group["params"]], self.clip_grad_norm)
        self.optimizer.step()
        if self.after_step is not None:
            self.after_step(terms)
        self.last_extras = terms.extras
        return terms.stacked_means()

    def extras(self) -> dict:
        """The last step's estimator diagnostics (Terms.extras), with grad_norm when clipping."""
        if self.grad_norm is None:
            return self.last_extras
        return {**self.last_extras, "grad_norm": self.grad_norm}


def fused_unsupported_reason(model: nn.Module, estimator: nn.Module, device: torch.device) -> str | None:
    """None when the hand-written step applies to this model on this device; else why not."""
    if torch.device(device).type not in FUSED_DEVICE_TYPES:
        return f"it runs on the CPU only (where it was measured), not on {torch.device(device).type}"
    return unsupported_reason(model, estimator)


def make_train_step(choice: str, model: nn.Module, estimator: nn.Module, optimizer,
                    beta: float, device: torch.device | str,
                    clip_grad_norm: float | None = None) -> AutogradStep | FusedReparamStep:
    """The step cfg.train_step asks for: auto (the hand-written step on the CPU where it applies,
    autograd otherwise), fused (the hand-written step, or a one-line ConfigError), autograd."""
    if choice not in ("auto", "fused", "autograd"):
        raise ConfigError(f"train_step={choice!r} is not accepted; use one of: auto, fused, autograd")
    if choice != "autograd":
        reason = fused_unsupported_reason(model, estimator, device)
        if reason is None:
            return FusedReparamStep(model, optimizer, beta, clip_grad_norm)
        if choice == "fused":
            raise ConfigError(f"train_step=fused cannot train this model: {reason}; use train_step=auto "
                              "(autograd where the fused step does not apply)")
    return AutogradStep(model, estimator, optimizer, beta, clip_grad_norm)
