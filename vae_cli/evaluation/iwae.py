"""Importance-weighted estimates of log p(x) (Burda et al. 2016), in chunks with logsumexp (MATH.md 5)."""
import math
from contextlib import contextmanager

import torch
from tqdm.auto import tqdm


def log_weights(model, posterior, x: torch.Tensor, num_samples: int) -> torch.Tensor:
    """log w_k = log p(x|z_k) + log p(z_k) - log q(z_k|x) for num_samples draws z_k ~ q(z|x): (S, B)."""
    z = model.latent.sample(posterior, num_samples)  # (S, B, K) or (S, B, V, C)
    return model.log_likelihood(x, z) + model.latent.log_prior(z) - posterior.log_prob(z)  # (S, B)


@torch.inference_mode()
def importance_weighted_bounds(model, x: torch.Tensor, num_samples: int, chunk_size: int):
    """(L_K, L_1) per example, (B,) each, from the same K = num_samples draws of q(z|x).

        L_K = log (1/K) sum_k w_k = logsumexp_k(log w_k) - log K   (Burda et al. 2016, eq. 8)
        L_1 = (1/K) sum_k log w_k, the Monte Carlo ELBO on those draws

    so L_K - L_1 >= 0 holds draw by draw (Jensen), and estimates KL(q(z|x) || p(z|x)) (MATH.md 1).
    The K draws are taken chunk_size at a time; each chunk is reduced to its logsumexp and its sum of
    log w before the next is drawn, so memory is O(chunk_size * B * D) whatever K is.
    """
    posterior = model.posterior(x)  # the encoder runs once per batch
    chunk_lse, sum_log_w = [], torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
    for start in range(0, num_samples, chunk_size):
        log_w = log_weights(model, posterior, x, min(chunk_size, num_samples - start))  # (S, B)
        chunk_lse.append(torch.logsumexp(log_w, 0))  # (B,)
        sum_log_w += log_w.sum(0)
    log_px = torch.logsumexp(torch.stack(chunk_lse), 0) - math.log(num_samples)  # (chunks, B) -> (B,)
    return log_px, sum_log_w / num_samples


def log_px_estimates(model, x: torch.Tensor, num_samples: int, chunk_size: int, batch_size: int,
                     progress: bool = True):
    """importance_weighted_bounds over a data set x (N, D) in batches: (L_K, L_1), (N,) each."""
    log_px, elbo = [], []
    with tqdm(total=x.shape[0], desc=f"log p(x), K={num_samples}", unit="img", disable=None if progress
              else True, dynamic_ncols=True) as bar:
        for start in range(0, x.shape[0], batch_size):
            batch = x[start:start + batch_size]
            bounds = importance_weighted_bounds(model, batch, num_samples, chunk_size)
            log_px.append(bounds[0])
            elbo.append(bounds[1])
            bar.update(batch.shape[0])
    return torch.cat(log_px), torch.cat(elbo)


def bits_per_dim(log_px: float, data_dim: int) -> float:
    """-log p(x) / (D ln 2) + 8: nats of a density on [0,1]^D to bits per 256-level pixel (MATH.md 3)."""
    return -log_px / (data_dim * math.log(2)) + 8


@contextmanager
def fixed_scale(likelihood, model, x: torch.Tensor, batch_size: int):
    """For likelihood.scale=optimal, evaluate with one sigma for every example and sample.

    Training uses sigma*^2 = the batch mean squared error (Rybkin et al. 2021), which makes the density
    of an example depend on its batch and, here, on K. Evaluation fixes sigma*^2 at the mean squared
    error over the whole set x of one posterior draw per example (training's definition, on the test
    set), so log p(x) is one density. Yields that sigma (None for other scales, left untouched).
    """
    if getattr(likelihood, "scale", None) != "optimal":
        yield None
        return
    with torch.inference_mode():
        sq_err = 0.0
        for start in range(0, x.shape[0], batch_size):
            batch = x[start:start + batch_size]
            z = model.latent.sample(model.posterior(batch), 1)  # (1, B, K)
            sq_err += float((batch - likelihood.mean(model.decode(z))).pow(2).sum())
        log_sigma = max(0.5 * math.log(sq_err / x.numel()), likelihood.min_log_scale)
    saved = likelihood.log_sigma.clone()
    likelihood.scale = "fixed"
    likelihood.log_sigma.fill_(log_sigma)
    try:
        yield math.exp(log_sigma)
    finally:
        likelihood.scale = "optimal"
        likelihood.log_sigma.copy_(saved)
