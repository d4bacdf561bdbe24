"""Decoder likelihoods p(x|z): log-densities per example in nats, every constant kept (docs/math.md 4)."""
import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vae_cli.errors import ConfigError, check_choice, check_number

LOG_2PI = math.log(2 * math.pi)


def to_unit(x_uint8: torch.Tensor) -> torch.Tensor:
    """uint8 pixels 0..255 -> float intensities in [0, 1], on the tensor's device."""
    return x_uint8.float().div_(255.0)


def pixel_levels(*images: torch.Tensor) -> torch.Tensor:
    """The distinct values of uint8 images (N, D), wherever they occur, as intensities in [0, 1]."""
    counts = sum(torch.bincount(x.flatten(), minlength=256) for x in images)
    return to_unit(counts.nonzero().flatten().to(torch.uint8))


def dequantize(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """x = k/255 on 256 levels -> x_deq = (k + u)/256, u ~ U[0,1)^D (docs/math.md 5).

    The level's probability under a density p on [0,1]^D is P(k) = 256^-D E_u[p(x_deq)], so by Jensen
    -log2 P(k) / D <= -E_u[log p(x_deq)] / (D ln 2) + 8: bits_per_dim of log p(x_deq) bounds it.
    """
    levels = torch.round(x * 255)  # k in 0..255
    u = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    below_one = 1 - torch.finfo(x.dtype).eps / 2  # 255 + u rounds to 256 for u within 2^-17 of 1 in float32
    return ((levels + u) / 256).clamp_(max=below_one)


def soft_clip_below(log_scale: torch.Tensor, floor: float) -> torch.Tensor:
    """Smooth lower bound: ~log_scale above the floor, -> floor below it (keeps gradients alive)."""
    return floor + F.softplus(log_scale - floor)


def random_words(n: int, generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    """n independent uniform 64-bit integers (int64, the full range)."""
    return torch.empty(n, dtype=torch.int64, device=device).random_(-2**63, None, generator=generator)


def random_bytes(n: int, generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    """n independent uniform bytes 0..255 (uint8), eight from each 64-bit draw."""
    return random_words((n + 7) // 8, generator, device).view(torch.uint8)[:n]


LOW_32 = 2**32 - 1  # = 255 * 16843009


def binarize_pixels(pixels: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """x ~ Bernoulli(k / 255) for uint8 pixels k on the CPU, exactly, as float 0./1.

    A uniform byte r has P(r < k | r != 255) = k / 255. Where r = 255 (1 pixel in 256), a uniform
    32-bit w decides instead, P(w < 16843009 k | w != 2^32 - 1) = k / 255, and where w = 2^32 - 1 (one
    in 2^32) it is drawn again. So every level is exact (k = 0 never, k = 255 always), where u < k/255
    with a float u is exact to 2^-24; and a byte costs an eighth of a 64-bit draw where a float u costs
    a 32-bit draw and a conversion.
    """
    assert pixels.dtype == torch.uint8 and pixels.device.type == "cpu", "binarize_pixels: uint8 on the CPU"
    flat = pixels.reshape(-1)
    r = random_bytes(flat.numel(), generator, flat.device)
    bits = torch.lt(r, flat, out=torch.empty(flat.shape, dtype=torch.uint8, device=flat.device))  # 0 or 1
    # The ~400 redrawn pixels of a batch of 128 images are indexed in numpy, on views of the same
    # memory: ~1 us an operation on so few elements, where torch's nonzero and indexing take 5-50 us.
    bits_np, pixels_np = bits.numpy(), flat.numpy()
    redo = np.flatnonzero(r.numpy() == 255)
    while redo.size > 0:
        w = random_words(redo.size, generator, flat.device).numpy() & LOW_32  # 0 .. 2^32 - 1
        bits_np[redo] = w < pixels_np[redo].astype(np.int64) * (LOW_32 // 255)
        redo = redo[w == LOW_32]
    return bits.view(pixels.shape).float()


class Likelihood(nn.Module):
    """What every likelihood shares: prepare_pixels for uint8 data (every image a run prepares), and
    check_data, which refuses data the likelihood is not a density or mass function on.

    A subclass defines (docs/extending.md, "A likelihood"): params_per_dim, the decoder's outputs per
    pixel; prepare(x, generator), intensities to targets; log_prob(params, x), log p(x|z) summed over
    pixels, (..., B); mean(params), the mean intensities (pictures)."""

    params_per_dim: int

    def prepare(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} defines no prepare(x, generator)")

    def log_prob(self, params: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} defines no log_prob(params, x)")

    def mean(self, params: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} defines no mean(params)")

    def check_data(self, *images: torch.Tensor) -> None:
        """Raise ConfigError for uint8 images (N, D) this likelihood cannot model; any [0,1] data is fine."""

    def prepare_pixels(self, pixels: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """prepare() of the intensities k / 255 of uint8 pixels k (..., B, D)."""
        return self.prepare(to_unit(pixels), generator)


class Bernoulli(Likelihood):
    """Bernoulli p(x|z) for binary x; the decoder emits logits l.

    log p(x|z) = sum_d [x_d log s(l_d) + (1 - x_d) log(1 - s(l_d))] = -BCE_with_logits(l, x) summed,
    computed from logits for stability (docs/math.md 4).
    """

    params_per_dim = 1  # one logit per pixel

    def __init__(self, binarize: str = "dynamic"):
        super().__init__()
        check_choice("likelihood.binarize", binarize, ("dynamic", "threshold", "none"))
        self.binarize = binarize

    def prepare(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Turn intensities in [0,1] into binary targets: x_d ~ Bernoulli(x_d), x_d > 0.5, or as is."""
        if self.binarize == "dynamic":
            # u < x with u ~ U[0,1) is Bernoulli(x); on CPU three times faster than torch.bernoulli.
            u = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
            return torch.lt(u, x, out=u)  # written as 0./1. into u: no bool tensor, no second pass
        if self.binarize == "threshold":
            return (x > 0.5).to(x.dtype)
        return x

    def prepare_pixels(self, pixels: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Dynamic binarization of uint8 pixels by random bytes on the CPU (binarize_pixels: exact and
        faster there); elsewhere the uniform comparison of prepare(), which is one parallel kernel."""
        if self.binarize == "dynamic" and pixels.device.type == "cpu":
            return binarize_pixels(pixels, generator)
        return super().prepare_pixels(pixels, generator)

    def check_data(self, *images: torch.Tensor) -> None:
        """Refuse non-binary targets: Bernoulli is not a normalised mass function on them. Every pixel
        of every image counts (a bincount: ~40 ms for Fashion-MNIST), only when not binarized."""
        if self.binarize != "none":
            return
        levels = pixel_levels(*images)
        if not bool(((levels == 0) | (levels == 1)).all()):
            raise ConfigError(
                "likelihood=bernoulli with likelihood.binarize=none needs binary data, but the data "
                "has values strictly between 0 and 1; set likelihood.binarize=dynamic (or threshold), "
                "or use likelihood=continuous_bernoulli or likelihood=gaussian"
            )

    def log_prob(self, params: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        logits = params.squeeze(-1)  # (..., B, D)
        bce = F.binary_cross_entropy_with_logits(logits, x.expand_as(logits), reduction="none")
        return -bce.sum(-1)  # (..., B)

    def mean(self, params: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(params.squeeze(-1))


class ContinuousBernoulli(Bernoulli):
    """Continuous Bernoulli for x in [0,1]: the Bernoulli form times its normaliser C(lambda), lambda = s(l)
    for the decoder's logit l.

    C(lambda) = 2 artanh(1 - 2 lambda) / (1 - 2 lambda), C(1/2) = 2 (Loaiza-Ganem & Cunningham 2019),
    which in the logit is C = l / tanh(l / 2): computed from l (log_normaliser), never from lambda.
    torch.distributions.ContinuousBernoulli clamps lambda to [eps, 1 - eps], so its log C stops growing
    at |l| ~ 15.9 in float32: -0.23 nats a pixel at |l| = 20, and no gradient towards the optimum
    l ~ -1/x of a near-black dequantised pixel (a false maximum at the clamp).
    """

    def __init__(self, dequantize: bool = True):
        super().__init__(binarize="none")
        self.dequantize = bool(dequantize)

    def prepare(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """A density is fitted to 256-level data only after uniform dequantisation (docs/math.md 5)."""
        return dequantize(x, generator) if self.dequantize else x

    def check_data(self, *images: torch.Tensor) -> None:
        pass  # any x in [0,1] is in the support (Bernoulli's check for binarize=none does not apply)

    NEAR_HALF = 1e-2  # |l| below which the Taylor forms replace the ratios, whose float value is 0/0 at l = 0

    def log_prob(self, params: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        logits = params.squeeze(-1)  # (..., B, D)
        bernoulli = -F.binary_cross_entropy_with_logits(logits, x.expand_as(logits), reduction="none")
        return (bernoulli + self.log_normaliser(logits)).sum(-1)  # (..., B)

    @classmethod
    def log_normaliser(cls, logits: torch.Tensor) -> torch.Tensor:
        """log C = log(|l| / tanh(|l| / 2)), ~ log |l| for large |l|; near 0, log 2 + l^2/12 - 7 l^4/1440."""
        size = logits.abs()
        near = size < cls.NEAR_HALF
        safe = torch.where(near, torch.ones_like(size), size)  # no 0/0 in the branch not taken, nor its gradient
        ratio = torch.log(safe) - torch.log(torch.tanh(safe / 2))
        square = logits.pow(2)
        return torch.where(near, math.log(2) + square / 12 - 7 * square.pow(2) / 1440, ratio)

    @classmethod
    def mean(cls, params: torch.Tensor) -> torch.Tensor:
        """E[x] = lambda / (2 lambda - 1) + 1 / (2 artanh(1 - 2 lambda)) = s(l) / tanh(l / 2) - 1 / l, from l;
        near l = 0, 1/2 + l/12 - l^3/720."""
        logits = params.squeeze(-1)
        near = logits.abs() < cls.NEAR_HALF
        safe = torch.where(near, torch.ones_like(logits), logits)
        return torch.where(near, 0.5 + logits / 12 - logits.pow(3) / 720,
                           torch.sigmoid(safe) / torch.tanh(safe / 2) - 1 / safe)


class Gaussian(Likelihood):
    """Gaussian p(x|z) = N(x; m, sigma^2) per dimension; the decoder emits the mean m.

    log p(x|z) = sum_d [-1/2 log(2 pi) - log sigma_d - (x_d - m_d)^2 / (2 sigma_d^2)]  (docs/math.md 4)

    scale: fixed (sigma given), learned (one shared log sigma), per_pixel (the decoder emits
    log sigma_d too, softly clipped below at min_log_scale), optimal (sigma*^2 = the mean squared
    error, which maximises the likelihood given the mean; Rybkin et al. 2021; floored at min_log_scale).

    optimal, in training mode (module.training), fits sigma*^2 to each training batch and keeps a
    running mean of those fits in the buffer log_sigma (saved in the state_dict, hence in checkpoints);
    in eval mode it scores every example with that frozen sigma, so validation, test and vae-eval never
    fit sigma to the data they score, and an example's density does not depend on its batch. The
    running mean is the average of all batch fits for the first 1/FIT_MOMENTUM batches, then an
    exponential moving average with weight FIT_MOMENTUM (as BatchNorm's running statistics): free
    during training, where refitting on the training split at each epoch's end costs a forward pass
    over it. With 0.05 it follows the last ~20 batches (2,560 images at batch 128): the log-likelihood
    is flat at the optimum (a relative error e in sigma^2 costs D e^2 / 4 nats), so neither the noise
    of so many batches nor the lag behind a falling MSE moves an ELBO by more than a few hundredths of
    a nat once training has settled.
    """

    SCALES = ("learned", "fixed", "per_pixel", "optimal")
    FIT_MOMENTUM = 0.05  # optimal: weight of the newest training batch in the running fit of sigma^2

    def __init__(self, scale: str = "learned", sigma: float = 1.0, min_log_scale: float = -6.0,
                 dequantize: bool = True):
        super().__init__()
        self.dequantize = bool(dequantize)
        check_choice("likelihood.scale", scale, self.SCALES)
        if not check_number("likelihood.sigma", sigma) > 0:
            raise ConfigError(f"likelihood.sigma={sigma!r} must be > 0 (the initial or fixed std)")
        self.scale = scale
        self.min_log_scale = check_number("likelihood.min_log_scale", min_log_scale)
        self.params_per_dim = 2 if scale == "per_pixel" else 1
        log_sigma = torch.tensor(math.log(sigma))
        if scale == "learned":
            self.log_sigma = nn.Parameter(log_sigma)
        else:  # fixed: sigma; optimal: half the log of the running mean of training batches' fits
            self.register_buffer("log_sigma", log_sigma)
        if scale == "optimal":  # training batches fitted so far (the first one replaces the initial sigma)
            self.register_buffer("fitted_batches", torch.zeros((), dtype=torch.int64))
        self.last_log_scale = torch.tensor(math.log(sigma))  # of the last log_prob call, for logging

    def prepare(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Intensities in [0,1], dequantised (fresh noise each use) unless dequantize=false (docs/math.md 5)."""
        return dequantize(x, generator) if self.dequantize else x

    def log_scale(self, params: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """log sigma, broadcastable against the mean (...,B,D)."""
        loc = params[..., 0]
        if self.scale == "per_pixel":
            return soft_clip_below(params[..., 1], self.min_log_scale)
        if self.scale == "optimal":
            if not self.training:  # the sigma fitted on training batches, frozen
                return self.log_sigma.clamp(min=self.min_log_scale)
            # sigma*^2 = MSE over samples, batch and dimensions: exact, floored (a soft clip would bias
            # it). No gradient is lost by the floor: at sigma* the likelihood is flat in sigma.
            mse = (x - loc).pow(2).mean()
            self._fit(mse.detach())
            # floored before the log: log(0)'s infinite slope times the clamp's zero was a NaN gradient
            return 0.5 * torch.log(mse.clamp(min=math.exp(2 * self.min_log_scale)))
        return self.log_sigma

    @torch.no_grad()
    def _fit(self, mse: torch.Tensor) -> None:
        """Fold one training batch's sigma*^2 = mse into the running mean held (as its half log) in log_sigma."""
        self.fitted_batches += 1
        running = torch.exp(2 * self.log_sigma)
        weight = self.fitted_batches.to(running).reciprocal().clamp(min=self.FIT_MOMENTUM)  # 1/n, then the momentum
        self.log_sigma.copy_(0.5 * torch.log(torch.lerp(running, mse.to(running), weight)))

    def log_prob(self, params: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        loc = params[..., 0]  # (..., B, D)
        log_scale = self.log_scale(params, x)
        self.last_log_scale = log_scale.detach()  # kept, not reduced: only logging steps need sigma
        z = (x - loc) * torch.exp(-log_scale)
        return (-0.5 * LOG_2PI - log_scale - 0.5 * z.pow(2)).sum(-1)  # (..., B)

    @property
    def last_sigma(self) -> torch.Tensor:
        """The (mean) sigma of the last log_prob call."""
        return self.last_log_scale.exp().mean()

    def mean(self, params: torch.Tensor) -> torch.Tensor:
        return params[..., 0]
