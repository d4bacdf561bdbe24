"""hparams_search's sweeper (configs/hydra/sweeper/optuna_study.yaml): hydra-optuna-sweeper's, except when
every trial of the command failed.

The plugin ends its sweep by asking the study for its best trial, which a study without one finished
trial answers with a ValueError, printed as a traceback before vae-cli's summary can run. Here that case
ends like any sweep with a failed job: Hydra's callbacks run, and vae_cli.sweep.SweepSummary writes the
summary, prints one line naming each failed trial and its error, and exits with status 1. Any other
error is raised as before.
"""
import logging
from pathlib import Path
from typing import Any, List

from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig

try:
    from hydra_plugins.hydra_optuna_sweeper.optuna_sweeper import OptunaSweeper
except ImportError:  # vae-cli without its [sweep] extra: no class here (Hydra imports this module at start)
    OptunaSweeper = None

log = logging.getLogger(__name__)

if OptunaSweeper is not None:
    class OptunaStudySweeper(OptunaSweeper):
        def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
            super().setup(hydra_context=hydra_context, task_function=task_function, config=config)
            self.sweep_dir = Path(str(config.hydra.sweep.dir))

        def sweep(self, arguments: List[str]) -> Any:
            try:
                return super().sweep(arguments)
            except ValueError:
                if any_trial_finished(self.sweep_dir):
                    raise
                log.warning("no trial of this command finished, so the study has no best trial yet")
                return None


def any_trial_finished(sweep_dir: Path) -> bool:
    """Whether a job of this command (its folder in sweep_dir) finished with an objective."""
    from vae_cli.sweep_jobs import find_jobs

    return any(job.state == "finished" and job.value is not None for job in find_jobs(sweep_dir))
