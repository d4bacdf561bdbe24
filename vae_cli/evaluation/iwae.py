"""Importance-weighted estimates of log p(x) (Burda et al. 2016), in chunks with logsumexp (docs/math.md 7)."""
import logging
import math
import time

import torch
from tqdm.auto import tqdm

log = logging.getLogger(__name__)


JACKKNIFE_GROUPS = 10  # groups of the K draws that the jackknife leaves out in turn (variances=True)


def log_weights(model, posterior, x: torch.Tensor, num_samples: int) -> torch.Tensor:
    """log w_k = log p(x|z_k) + log p(z_k) - log q(z_k|x) for num_samples draws z_k ~ q(z|x): (S, B)."""
    z = model.latent.sample(posterior, num_samples)  # (S, B, K) or (S, B, V, C)
    return model.log_likelihood(x, z) + model.latent.log_prior(z) - posterior.log_prob(z)  # (S, B)


@torch.inference_mode()
def importance_weighted_bounds(model, x: torch.Tensor, num_samples: int, chunk_size: int,
                               variances: bool = False):
    """(L_K, L_1) per example, (B,) each, from the same K = num_samples draws of q(z|x).

        L_K = log (1/K) sum_k w_k = logsumexp_k(log w_k) - log K   (Burda et al. 2016, eq. 8)
        L_1 = (1/K) sum_k log w_k, the Monte Carlo ELBO on those draws

    so L_K - L_1 >= 0 holds draw by draw (Jensen): a lower bound on KL(q(z|x) || p(z|x)) (docs/math.md 7).
    The K draws are taken chunk_size at a time; each chunk is reduced to its logsumexp and its sum of
    log w before the next is drawn, so memory is O(chunk_size * B * D) whatever K is.

    variances: also return each estimate's Monte Carlo variance over the draws of z, (B,) each:
    Var L_1 = Var_k(log w) / K; Var L_K by the jackknife over the G groups g of ceil(K / JACKKNIFE_GROUPS)
    draws (whole chunks when more than a chunk: 10 equal groups for K = 100 or 1000 in chunks of 50, else
    fewer, the last smaller), (G - 1) / G sum_g (L_(-g) - mean L_(-g))^2, L_(-g) the bound without group g.
    On a linear-Gaussian model it matches the spread of L_K over repeated draws within a few per cent
    (tests/test_stderr.py), where the delta method Var(w) / (K E[w]^2) came out 1.6 times too small at
    K = 20. With the two chunks of 50 draws it used at K = 100, it came out 1.6 times too small on a
    model whose weights are heavy-tailed (a per-pixel Gaussian: spread 0.437 nats, reported 0.272).
    """
    posterior = model.posterior(x)  # the encoder runs once per batch
    # The jackknife's groups: parts of a chunk (chunk_size a multiple of them), or runs of whole chunks
    group, chunks_per_group = num_samples, 1
    if variances:
        group = max(1, math.ceil(num_samples / JACKKNIFE_GROUPS))
        if group < chunk_size:
            chunk_size = group * (chunk_size // group)
        else:
            chunks_per_group, group = math.ceil(group / chunk_size), chunk_size
    group_lse, sizes = [], []
    sum_log_w = torch.zeros(x.shape[0], dtype=torch.float64, device=x.device)
    sum_sq_log_w = torch.zeros_like(sum_log_w)
    for start in range(0, num_samples, chunk_size):
        log_w = log_weights(model, posterior, x, min(chunk_size, num_samples - start))  # (S, B)
        for part in log_w.split(group, 0):
            group_lse.append(torch.logsumexp(part.double(), 0))  # (B,); float64: the jackknife below differences them
            sizes.append(part.shape[0])
        sum_log_w += log_w.sum(0, dtype=torch.float64)
        if variances:
            sum_sq_log_w += log_w.double().pow(2).sum(0)
    if chunks_per_group > 1:  # runs of chunks_per_group chunks
        group_lse = [torch.logsumexp(torch.stack(group_lse[i:i + chunks_per_group]), 0)
                     for i in range(0, len(group_lse), chunks_per_group)]
        sizes = [sum(sizes[i:i + chunks_per_group]) for i in range(0, len(sizes), chunks_per_group)]
    lse = torch.logsumexp(torch.stack(group_lse), 0)  # (groups, B) -> (B,)
    log_px = (lse - math.log(num_samples)).to(x.dtype)
    elbo = (sum_log_w / num_samples).to(x.dtype)
    if not variances:
        return log_px, elbo
    mean_log_w = sum_log_w / num_samples
    var_log_w = (sum_sq_log_w / num_samples - mean_log_w.pow(2)).clamp_min(0) * num_samples / max(num_samples - 1, 1)
    if num_samples < 2:  # one draw: no spread to measure
        nan = torch.full_like(sum_log_w, math.nan)
        return log_px, elbo, nan, nan
    groups = torch.stack(group_lse)  # (G, B)
    # log sum of the other groups, each taken directly: log(total - group) cancels where one group holds
    # nearly all the weight (heavy-tailed weights), and over-stated the error up to 1.6x in float32
    alone = torch.eye(len(sizes), dtype=torch.bool, device=x.device).unsqueeze(-1)  # (G, G, 1)
    others = torch.logsumexp(groups.unsqueeze(0).masked_fill(alone, -math.inf), 1)  # (G, B)
    remaining = num_samples - torch.tensor(sizes, dtype=torch.float64, device=x.device)
    leave_out = others - torch.log(remaining).unsqueeze(1)  # (G, B): L without chunk g
    num_groups = len(sizes)
    var_log_px = (num_groups - 1) / num_groups * (leave_out - leave_out.mean(0)).pow(2).sum(0)
    return log_px, elbo, var_log_px, var_log_w / num_samples


ESTIMATE_AFTER = 0.25  # s of batches after the first, whose time (warm-up, first allocations) says little
LONG_FIRST = 5.0  # s: a first batch this long estimates the rest itself (its one-time costs are small in it)


def log_px_estimates(model, x: torch.Tensor, num_samples: int, chunk_size: int, batch_size: int,
                     progress: bool = True, variances: bool = False):
    """importance_weighted_bounds over a data set x (N, D) in batches: (L_K, L_1), (N,) each, and with
    variances their Monte Carlo variances (N,) each.

    Logs what the whole set will take once the batches after the first have run ESTIMATE_AFTER seconds
    (at least one of them): the first pays one-time costs and alone over-stated the total up to 9x; or
    right after the first when it took LONG_FIRST seconds or more (two long batches: no second estimate).
    """
    parts, start_time, warm, estimated = [], time.perf_counter(), None, False
    with tqdm(total=x.shape[0], desc=f"log p(x), K={num_samples}", unit="img", disable=None if progress
              else True, dynamic_ncols=True) as bar:
        for start in range(0, x.shape[0], batch_size):
            batch = x[start:start + batch_size]
            parts.append(importance_weighted_bounds(model, batch, num_samples, chunk_size, variances))
            bar.update(batch.shape[0])
            now, done, total = time.perf_counter(), start + batch.shape[0], None
            if warm is None:
                warm = (now, done)  # the end of the first batch
                if now - start_time >= LONG_FIRST and done < x.shape[0]:
                    total = (now - start_time) * x.shape[0] / done
            elif not estimated and now - warm[0] >= ESTIMATE_AFTER and done < x.shape[0]:
                total = now - start_time + (now - warm[0]) / (done - warm[1]) * (x.shape[0] - done)
            if total is not None:
                estimated = True
                log.info("L_%d on %d images: %d done in %.1f s, so about %s for all of them", num_samples,
                         x.shape[0], done, now - start_time, duration(total))
    return tuple(torch.cat(column) for column in zip(*parts))


def duration(seconds: float) -> str:
    """A human-readable span: "42 s", "7.5 min", "2.3 h"."""
    if seconds < 100:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.1f} min" if seconds < 6000 else f"{seconds / 3600:.1f} h"


def bits_per_dim(log_px: float, data_dim: int) -> float:
    """-log p(x) / (D ln 2) + 8: nats of a density on [0,1]^D to bits per 256-level pixel (docs/math.md 5)."""
    return -log_px / (data_dim * math.log(2)) + 8
