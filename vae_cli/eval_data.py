"""What training and vae-eval share: the fixed evaluation sets, term averages with their standard error,
and the picture grids. Evaluation data and draws of z come from eval_seed, never from the training seed
(the prior samples of the picture grids do: seed + 2, the same z every epoch)."""
import math
from contextlib import contextmanager

import torch

from vae_cli.errors import ConfigError, check_bool, check_integer
from vae_cli.estimators import TERM_NAMES

# Streams of random numbers derived from eval_seed, one each, so that no figure depends on how another was drawn.
TEST_STREAM, VAL_STREAM, VAL_DRAWS, TEST_DRAWS, EVAL_DRAWS = range(5)


def stream_seed(eval_seed: int, stream: int) -> int:
    """The seed of one of the streams above: distinct for every (eval_seed, stream) pair."""
    return eval_seed * 16 + stream


def check_eval_settings(settings) -> None:
    """configs/eval/'s numbers, each a one-line ConfigError naming the key: vae-train checks them before
    training (a typo there must not cost the run's training), vae-eval before loading the run."""
    for key in ("num_samples", "chunk_size", "batch_size"):
        check_integer(f"eval.{key}", settings[key], 1)
    for key in ("pixel_baseline", "pictures", "embedding"):
        check_bool(f"eval.{key}", settings[key])
    check_sizes(settings.probe_sizes)


def check_sizes(sizes) -> list:
    """eval.probe_sizes: labelled examples per class, positive integers, or "all" (the whole train split)."""
    if sizes is None:
        raise ConfigError("eval.probe_sizes=null: give a list, e.g. eval.probe_sizes=[10,100,all], or [] for no probe")
    if isinstance(sizes, (str, int, float)):  # eval.probe_sizes=100: one size, which is not a list
        raise ConfigError(f"eval.probe_sizes={sizes!r} must be a list; use e.g. eval.probe_sizes=[{sizes}] or "
                          "eval.probe_sizes=[10,100,all]")
    sizes = list(sizes)
    for n in sizes:
        if n != "all" and not (isinstance(n, int) and not isinstance(n, bool) and n > 0):
            raise ConfigError(f"eval.probe_sizes={sizes!r}: {n!r} is not accepted; use positive integers "
                              "(labelled examples per class) or all, e.g. eval.probe_sizes=[10,100,all]")
    return sizes


def prepare_eval_sets(likelihood, data, device: torch.device, eval_seed: int):
    """(val_x, test_x): the validation and test images prepared once (binarized or dequantised) on the
    CPU by generators of their own, seeded from eval_seed, then moved to device.

    So every run with the same eval_seed, whatever its training seed, device or validation size, is
    scored on the same test set, and vae-eval rebuilds exactly the set training scored.
    """
    def prepare(pixels, stream):
        generator = torch.Generator().manual_seed(stream_seed(eval_seed, stream))
        return likelihood.prepare_pixels(pixels, generator).to(device)

    return prepare(data.val_x, VAL_STREAM), prepare(data.test_x, TEST_STREAM)


@contextmanager
def seeded(seed: int, device: torch.device):
    """A forked RNG seeded with seed: the caller's random stream is left as it was (resume stays exact)."""
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        yield


@torch.no_grad()
def average_terms(model, estimator, x: torch.Tensor, batch_size: int, beta: float, seed: int) -> dict:
    """Per-example means of the named terms over a prepared set x (N, D), each example scored with two
    independent draws of z (their mean), and elbo_stderr, the Monte Carlo standard error of the mean ELBO
    on this fixed set: per example Var_z / 2 is estimated by (e_1 - e_2)^2 / 4 from its two draws
    (docs/math.md 8). {} when N = 0. Draws come from seed, on a forked RNG."""
    if x.shape[0] == 0:
        return {}
    sums = {name: torch.zeros((), dtype=torch.float64, device=x.device) for name in TERM_NAMES}
    variance = torch.zeros((), dtype=torch.float64, device=x.device)  # sum over examples of Var of their mean
    with seeded(seed, x.device):
        for start in range(0, x.shape[0], batch_size):
            batch = x[start:start + batch_size]
            first, second = estimator(model, batch, beta), estimator(model, batch, beta)
            for name in TERM_NAMES:
                sums[name] += (getattr(first, name).double() + getattr(second, name).double()).sum() / 2
            variance += (first.elbo.double() - second.elbo.double()).pow(2).sum() / 4
    figures = {name: (total / x.shape[0]).item() for name, total in sums.items()}
    figures["elbo_stderr"] = (variance.sqrt() / x.shape[0]).item()
    return figures


def mean_stderr(variances: torch.Tensor) -> float:
    """Standard error of a mean of N independent estimates with these Monte Carlo variances (N,)."""
    return (variances.double().sum().sqrt() / max(variances.numel(), 1)).item()


def with_error(value: float, error: float | None) -> str:
    """'value ± error' with the error to two significant digits and the value to the same place: no more
    digits than the Monte Carlo error allows; two decimals when there is no error."""
    if not error or not math.isfinite(error):
        return f"{value:.2f}"
    digits = max(0, 1 - math.floor(math.log10(error)))
    return f"{value:.{digits}f} ± {error:.{digits}f}"


@torch.no_grad()
def picture_grids(model, x: torch.Tensor, prior_z: torch.Tensor, shape) -> dict[str, torch.Tensor]:
    """{"reconstructions": test examples beside their reconstructions (2N, C, H, W), "samples": decoded
    prior samples (M, C, H, W)}, intensities in [0, 1]."""
    recon = model.reconstruct(x)
    pairs = torch.stack([x, recon], dim=1).flatten(0, 1)  # (2N, D): original, reconstruction, ...
    samples = model.likelihood.mean(model.decode(prior_z))
    return {"reconstructions": pairs.view(-1, *shape), "samples": samples.view(-1, *shape)}


PICTURE_TAGS = {"reconstructions": "test/reconstructions", "samples": "samples/prior"}
