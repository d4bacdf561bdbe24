"""Control variates for REINFORCE: baselines b that do not depend on the sample z they correct."""
import torch
from torch import nn

from vae_cli.model import mlp


class NoBaseline(nn.Module):
    """b = 0: plain REINFORCE, the high-variance reference."""

    def forward(self, x: torch.Tensor, signal: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(signal)  # (S, B)


class MovingAverage(nn.Module):
    """b = exponential moving average of the batch-mean learning signal over past steps.

    Updated only by update() after an optimizer step (forward never mutates state), so b is fixed
    while a batch's samples are drawn: E_q[b grad log q] = b E_q[grad log q] = 0, no bias.
    """

    def __init__(self, decay: float = 0.9):
        super().__init__()
        self.decay = float(decay)
        self.register_buffer("average", torch.zeros(()))  # 0 until the first update
        self.register_buffer("num_updates", torch.zeros((), dtype=torch.long))

    def forward(self, x: torch.Tensor, signal: torch.Tensor) -> torch.Tensor:
        return self.average.to(signal.dtype).expand_as(signal)  # (S, B)

    @torch.no_grad()
    def blend(self, buffer: torch.Tensor, value: torch.Tensor) -> None:
        """buffer <- decay * buffer + (1 - decay) * value; the first update takes the value itself."""
        blended = self.decay * buffer + (1 - self.decay) * value
        buffer.copy_(torch.where(self.num_updates == 0, value, blended))

    @torch.no_grad()
    def update(self, extras: dict) -> None:
        """After an optimizer step: average <- moving average of the batch-mean signal."""
        self.blend(self.average, extras["signal_mean"])
        self.num_updates += 1


class Learned(MovingAverage):
    """NVIL's input-dependent baseline (Mnih & Gregor 2014, 3.3): b(x) = average + scale * net(x).

    net is an MLP on x (one tanh hidden layer of hidden_size units, as in NVIL) fitted by squared
    error to the detached, normalised residual (f - average) / scale, where average and scale are
    moving averages of the batch mean of f and of the rms of f - average (NVIL's signal centering and
    variance normalisation, used here to set the output's location and scale only: the estimator
    itself stays unnormalised and unbiased). Without them the network would need thousands of small
    Adam steps to reach outputs of hundreds of nats. The last layer starts at zero: b starts as the
    moving average.
    """

    def __init__(self, decay: float = 0.9, hidden_size: int = 100):
        super().__init__(decay)
        self.hidden_size = int(hidden_size)
        self.register_buffer("scale", torch.ones(()))  # moving rms of f - average
        self.net = None  # built by setup(), which knows the data dimension

    def setup(self, data_dim: int, like: torch.Tensor) -> None:
        self.net = mlp([data_dim, self.hidden_size, 1], "tanh").to(like)
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)

    def forward(self, x: torch.Tensor, signal: torch.Tensor) -> torch.Tensor:
        assert self.net is not None, "Learned baseline used before setup(data_dim, like)"
        residual = self.net(x).squeeze(-1)  # (B, D) -> (B,)
        return (self.average + self.scale * residual).expand_as(signal)  # (S, B), differentiable in net only

    def fit_loss(self, signal: torch.Tensor, baseline: torch.Tensor) -> torch.Tensor:
        """Squared error of the normalised prediction, mean over samples and batch.

        Zero before the first update, while average and scale are still 0 and 1: a first gradient of
        hundreds of nats would inflate Adam's second-moment estimate and stall the fit for thousands
        of steps.
        """
        started = (self.num_updates > 0).to(signal.dtype)
        return started * ((signal - baseline) / self.scale).pow(2).mean()

    @torch.no_grad()
    def update(self, extras: dict) -> None:
        """scale <- moving average of rms(f - average) = sqrt(std f^2 + (mean f - average)^2), the
        spread the network has to explain, lag of the average included (at the first update,
        average = 0: a deliberately large start that decays within a few tens of steps)."""
        spread = torch.hypot(extras["signal_std"], extras["signal_mean"] - self.average)
        self.blend(self.scale, spread.clamp_min(1e-6))
        super().update(extras)


class LeaveOneOut(nn.Module):
    """b_s = mean of the other S - 1 samples' signals of the same example (Kool et al. 2019).

    b_s is independent of z_s (the samples are drawn independently), so the estimate stays unbiased;
    1/S sum_s (f_s - b_s) grad log q(z_s) = 1/(S-1) sum_s (f_s - mean f) grad log q(z_s).
    """

    def forward(self, x: torch.Tensor, signal: torch.Tensor) -> torch.Tensor:
        num_samples = signal.shape[0]
        return (signal.sum(0, keepdim=True) - signal) / (num_samples - 1)  # (S, B)


BASELINES = ("none", "moving_average", "learned", "leave_one_out")


def make_baseline(name: str, decay: float, hidden_size: int) -> nn.Module:
    if name == "moving_average":
        return MovingAverage(decay)
    if name == "learned":
        return Learned(decay, hidden_size)
    if name == "leave_one_out":
        return LeaveOneOut()
    return NoBaseline()
