"""Importance-weighted estimates of log p(x) (Burda et al. 2016), in chunks with logsumexp (MATH.md 5)."""
import math

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
