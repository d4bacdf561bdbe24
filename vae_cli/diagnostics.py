"""Gradient diagnostics: variance, squared mean norm and signal-to-noise of the encoder gradient estimate."""
import torch


def encoder_gradient_estimates(model, estimator, x: torch.Tensor, num_estimates: int,
                               beta: float = 1.0) -> torch.Tensor:
    """num_estimates independent estimates of d loss / d encoder parameters on the batch x: (M, P).

    Each estimate is the gradient of the surrogate, the quantity training backpropagates, so what is
    measured is exactly the training estimator. Training is not perturbed: the draws come from a forked
    RNG, and the model's buffers are put back afterwards (likelihood.scale=optimal folds every training-mode
    call into its running fit of sigma; 16 estimates on one batch moved it to that batch's).
    """
    params = [p for p in model.encoder.parameters() if p.requires_grad]
    buffers = [(b, b.clone()) for b in model.buffers()]
    last_log_scale = getattr(model.likelihood, "last_log_scale", None)  # what train/sigma logs
    grads = []
    devices = [x.device] if x.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        for _ in range(num_estimates):
            terms = estimator(model, x, beta)
            grad = torch.autograd.grad(terms.surrogate, params, allow_unused=True)
            grads.append(torch.cat([(g if g is not None else torch.zeros_like(p)).flatten()
                                    for g, p in zip(grad, params)]))
    with torch.no_grad():
        for buffer, saved in buffers:
            buffer.copy_(saved)
    if last_log_scale is not None:
        model.likelihood.last_log_scale = last_log_scale
    return torch.stack(grads)  # (M, P)


def gradient_statistics(grads: torch.Tensor) -> dict[str, float]:
    """Trace of the covariance (total variance), ||E g||^2, and their ratio (signal-to-noise).

    Both are unbiased over the M estimates: the squared norm of the sample mean overestimates ||E g||^2
    by tr(Cov)/M, which is subtracted (so the figure can dip below 0 when the signal is buried in noise;
    without the correction the SNR could never read below about 1/M). No SNR when the variance is 0.
    """
    num_estimates = grads.shape[0]
    mean = grads.mean(0)
    variance = grads.var(0, unbiased=True).sum()  # trace of the M-sample covariance
    mean_sq = mean.pow(2).sum() - variance / num_estimates
    figures = {"grad_variance": variance.item(), "grad_mean_sq_norm": mean_sq.item()}
    if variance > 0:  # an exact gradient (estimator=exact) has no noise: no ratio to report (it read 1e28)
        figures["grad_snr"] = (mean_sq / variance).item()
    return figures


def gradient_diagnostics(model, estimator, x: torch.Tensor, num_estimates: int, beta: float = 1.0):
    return gradient_statistics(encoder_gradient_estimates(model, estimator, x, num_estimates, beta))
