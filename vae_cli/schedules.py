"""Learning-rate schedules, stepped once per epoch: constant, or Burda et al.'s 3^i-epoch stages."""
import itertools

from torch.optim.lr_scheduler import LRScheduler, MultiStepLR

from vae_cli.build import instantiate
from vae_cli.errors import ConfigError, check_integer, check_number


def burda(optimizer, num_stages: int = 8, stage_base: int = 3,
          gamma: float = 10 ** (-1 / 7)) -> MultiStepLR:
    """lr = lr_0 * gamma^i during stage i = 0..num_stages-1, and stage i lasts stage_base^i epochs.

    Burda, Grosse & Salakhutdinov (2016, section 5): lr 0.001 * 10^(-i/7) for 3^i epochs, i = 0..7,
    sum_i 3^i = 3,280 epochs in all. Stage i ends at epoch sum_{j<=i} stage_base^j (1, 4, 13, 40, ...),
    so these are MultiStepLR's milestones; after the last stage the rate stays at its last value.
    """
    check_integer("scheduler.num_stages", num_stages, 1, "Burda et al.: 8")
    check_integer("scheduler.stage_base", stage_base, 1, "Burda et al.: 3")
    if not 0 < check_number("scheduler.gamma", gamma) <= 1:
        raise ConfigError(f"scheduler.gamma={gamma!r} must lie in (0, 1] (Burda et al.: 10^(-1/7))")
    milestones = list(itertools.accumulate(stage_base**i for i in range(num_stages - 1)))
    return MultiStepLR(optimizer, milestones, gamma=gamma)


def schedule_epochs(num_stages: int = 8, stage_base: int = 3) -> int:
    """Epochs in a full Burda schedule: sum_{i < num_stages} stage_base^i (3,280 for 8 stages of 3^i)."""
    return sum(stage_base**i for i in range(num_stages))


def build_scheduler(cfg, optimizer) -> LRScheduler:
    """cfg.scheduler is a partial (_partial_: true) that takes the optimizer; train() steps it per epoch."""
    return instantiate(cfg.scheduler)(optimizer)
