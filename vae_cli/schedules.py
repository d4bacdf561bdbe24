"""Learning-rate schedules, stepped once per epoch: constant, or Burda et al.'s 3^i-epoch stages.

Each sets lr = base lr x factor(epoch) in every parameter group of any optimizer with param_groups
(vae_cli.optim.Adam or a torch.optim one): torch's LRScheduler classes accept torch.optim optimizers
only, and vae-train's Adam is not one (vae_cli/optim.py says why).
"""
import bisect
import itertools
from collections.abc import Callable

from vae_cli.build import instantiate
from vae_cli.errors import ConfigError, check_integer, check_number


class EpochSchedule:
    """lr_e = base_lr * factor(e) in each parameter group, e = epochs done (calls of step()). The rate
    follows from e alone, so state_dict() holds e and the base rates (the keys torch's schedulers save
    too: a checkpoint from one loads into the other)."""

    def __init__(self, optimizer, factor: Callable[[int], float]):
        self.optimizer, self.factor = optimizer, factor
        self.base_lrs = [group["lr"] for group in optimizer.param_groups]
        self.last_epoch = 0
        self._apply()

    def _apply(self) -> None:
        for group, base_lr in zip(self.optimizer.param_groups, self.base_lrs):
            group["lr"] = base_lr * self.factor(self.last_epoch)

    def step(self) -> None:
        self.last_epoch += 1
        self._apply()

    def get_last_lr(self) -> list[float]:
        return [group["lr"] for group in self.optimizer.param_groups]

    def state_dict(self) -> dict:
        return {"last_epoch": self.last_epoch, "base_lrs": list(self.base_lrs)}

    def load_state_dict(self, state: dict) -> None:
        self.last_epoch, self.base_lrs = int(state["last_epoch"]), list(state["base_lrs"])
        self._apply()


def constant(optimizer, factor: float = 1.0, total_iters: int = 0) -> EpochSchedule:
    """lr = optimizer.lr * factor for the first total_iters epochs, then optimizer.lr (torch's ConstantLR)."""
    if not 0 < check_number("scheduler.factor", factor) <= 1:
        raise ConfigError(f"scheduler.factor={factor!r} must lie in (0, 1] (1: the rate of optimizer.lr)")
    check_integer("scheduler.total_iters", total_iters, 0, "0: no epochs at the lower rate")
    return EpochSchedule(optimizer, lambda epoch: factor if epoch < total_iters else 1.0)


def burda(optimizer, num_stages: int = 8, stage_base: int = 3,
          gamma: float = 10 ** (-1 / 7)) -> EpochSchedule:
    """lr = lr_0 * gamma^i during stage i = 0..num_stages-1, and stage i lasts stage_base^i epochs.

    Burda, Grosse & Salakhutdinov (2016, section 5): lr 0.001 * 10^(-i/7) for 3^i epochs, i = 0..7,
    sum_i 3^i = 3,280 epochs in all. Stage i ends at epoch sum_{j<=i} stage_base^j (1, 4, 13, 40, ...),
    the milestones of torch's MultiStepLR; after the last stage the rate stays at its last value.
    """
    check_integer("scheduler.num_stages", num_stages, 1, "Burda et al.: 8")
    check_integer("scheduler.stage_base", stage_base, 1, "Burda et al.: 3")
    if not 0 < check_number("scheduler.gamma", gamma) <= 1:
        raise ConfigError(f"scheduler.gamma={gamma!r} must lie in (0, 1] (Burda et al.: 10^(-1/7))")
    milestones = list(itertools.accumulate(stage_base**i for i in range(num_stages - 1)))
    return EpochSchedule(optimizer, lambda epoch: gamma ** bisect.bisect_right(milestones, epoch))


def schedule_epochs(num_stages: int = 8, stage_base: int = 3) -> int:
    """Epochs in a full Burda schedule: sum_{i < num_stages} stage_base^i (3,280 for 8 stages of 3^i)."""
    return sum(stage_base**i for i in range(num_stages))


def build_scheduler(cfg, optimizer) -> EpochSchedule:
    """cfg.scheduler is a partial (_partial_: true) that takes the optimizer; train() steps it per epoch."""
    return instantiate(cfg.scheduler)(optimizer)
