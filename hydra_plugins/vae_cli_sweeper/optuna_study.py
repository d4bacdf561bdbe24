"""hparams_search's sweeper (configs/hydra/sweeper/optuna_study.yaml): hydra-optuna-sweeper's, with three
changes for a study that lives on from command to command (and without the plugin's warning for each
trial that returned no objective: vae-train's own lines name the failed or stopped job).

- When every trial of the command failed, the plugin asked the study for its best trial, which a study
  without one finished trial answers with a ValueError, printed as a traceback before vae-cli's summary
  could run. Here that case ends like any sweep with a failed job: Hydra's callbacks run, and
  vae_cli.sweep.SweepSummary writes the summary, prints one line naming each failed trial and its error,
  and exits with status 1. Any other error is raised as before.
- A stopped command (Ctrl-C) launches no further trials, and the trials it asked for and did not finish
  are told FAIL: left RUNNING they would stay so in the database for good. A stop between two trials (the
  plugin telling one and asking for the next) waits for the next launch (interrupts.SWEEPER_CHECKS_STOP);
  a stopped parallel sweep's jobs return, and the plugin would otherwise launch its remaining trials.
- A study in a database records the settings of its first command that finished a trial (data=...,
  epochs=...: what each trial computes, not how it reports); a later command that fixes others is warned
  that TPE and the summary will rank trials whose objectives are not comparable, and how to start a
  study of its own.
"""
import contextlib
import logging
from pathlib import Path
from typing import Any, List

from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig

try:
    from hydra_plugins.hydra_optuna_sweeper.optuna_sweeper import OptunaSweeper
except ImportError:  # vae-cli without its [sweep] extra: no class here (Hydra imports this module at start)
    OptunaSweeper = None

from vae_cli import interrupts

log = logging.getLogger(__name__)

SETTINGS_ATTR = "vae_cli_fixed_settings"  # the study's user attribute
# Top-level keys that change how a trial runs or reports, not the objective it returns (run_state.RESUMABLE
# less epochs, max_steps, early_stopping and objective, which do change it).
NOT_COMPARED = ("device", "threads", "log_every", "eval_batch_size", "checkpoint", "eval", "fail_fast",
                "diagnostics", "num_images", "hparams_search", "resume", "overwrite")


def fixed_settings(arguments: List[str], searched: set) -> List[str]:
    """The command's overrides that fix what every trial computes: not searched, not how it reports."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    fixed = []
    for override in OverridesParser.create().parse_overrides(arguments):
        key = override.key_or_group
        if override.is_sweep_override() or key in searched or key.split(".")[0] in NOT_COMPARED:
            continue
        fixed.append(override.input_line)
    return sorted(fixed)


class SweepStopped(Exception):
    """The command was stopped (its job processes were handed the signal): no new batch of trials."""


class StopAwareLauncher:
    """The sweeper's launcher, refusing a new batch of trials once the command was stopped; it keeps the
    overrides of every batch it was given, each job's trial values among them."""

    def __init__(self, launcher) -> None:
        self.launcher = launcher
        self.given: List[set] = []
        interrupts.SWEEPER_CHECKS_STOP = True  # a stop between two trials waits for the next launch

    def launch(self, job_overrides, initial_job_idx: int):
        self.given += [set(overrides) for overrides in job_overrides]
        if interrupts.FORWARDED:
            raise SweepStopped()
        return self.launcher.launch(job_overrides, initial_job_idx=initial_job_idx)


def said_by_vae_cli(record: logging.LogRecord) -> bool:
    """A logging filter for the plugin's logger: False for its warning about a trial that returned no
    objective ("Failed experiment: Return value must be float-castable. Got 'None'."), which is how every
    failed or stopped vae-train job returns; that job's own line, and the summary's, say what happened."""
    return not record.getMessage().startswith("Failed experiment: Return value must be float-castable. Got 'None'")


def any_trial_finished(sweep_dir: Path) -> bool:
    """Whether a job of this command (its folder in sweep_dir) finished with an objective."""
    from vae_cli.sweep_jobs import find_jobs

    return any(job.state == "finished" and job.value is not None for job in find_jobs(sweep_dir))


if OptunaSweeper is not None:
    class OptunaStudySweeper(OptunaSweeper):
        def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
            super().setup(hydra_context=hydra_context, task_function=task_function, config=config)
            self.sweep_dir = Path(str(config.hydra.sweep.dir))
            self.sweeper.launcher = StopAwareLauncher(self.sweeper.launcher)
            plugin_log = logging.getLogger(type(self.sweeper).__module__)
            if said_by_vae_cli not in plugin_log.filters:
                plugin_log.addFilter(said_by_vae_cli)
            interrupts.SWEEP_RERUN = interrupts.sweep_rerun(config.hydra)  # a stop before the first trial too

        def sweep(self, arguments: List[str]) -> Any:
            fixed = fixed_settings(arguments, set(self.sweeper.params or {}))
            earlier = self._study_attr()
            if earlier is not None and earlier != fixed:
                log.warning("warning: study %s: its earlier trials ran with fixed settings [%s], this command's "
                            "with [%s]: their objectives are not comparable, yet TPE and the summary rank them "
                            "together; give this search a study of its own with hydra.sweeper.study_name=NAME",
                            self.sweeper.study_name, " ".join(earlier), " ".join(fixed))
            try:
                return super().sweep(arguments)
            except SweepStopped:  # Hydra's callbacks still write the summary; vae_cli.cli ends by the signal
                self._fail_stopped_trials()
                return None
            except (SystemExit, KeyboardInterrupt):  # a stop in a job or between two ends the command
                self._fail_stopped_trials()
                raise
            except Exception as err:  # noqa: BLE001 - its trials are told FAIL, then it goes on as it was
                with contextlib.suppress(Exception):  # the command's own error is the one to report
                    self._fail_stopped_trials()  # (a bad option drawn for a trial left it RUNNING for good)
                # only "no best trial" is the command's end, not an error (a bad search space, a study of
                # the other direction are ValueErrors too: they are raised, one line each)
                if (isinstance(err, ValueError) and "Record does not exist" in str(err)
                        and not any_trial_finished(self.sweep_dir)):
                    log.warning("warning: no trial of this command finished, so the study has no best trial yet")
                    return None
                raise
            finally:  # the settings of the study's first command that computed something
                if earlier is None and any_trial_finished(self.sweep_dir):
                    self._study_attr(fixed)

        def _fail_stopped_trials(self) -> None:
            """Trials this command asked for (their values among the overrides of a batch its launcher was
            given) still RUNNING in the study when a stop ends it are told FAIL; a trial whose job finished
            just before the stop is left as it is."""
            if self.sweeper.storage is None:
                return
            import optuna
            from optuna.trial import TrialState

            from vae_cli.sweep_jobs import find_jobs

            try:
                study = optuna.load_study(study_name=self.sweeper.study_name, storage=self.sweeper.storage)
            except KeyError:  # not created (the command failed before): no trial to tell
                return
            finished = [set(job.overrides) for job in find_jobs(self.sweep_dir) if job.state == "finished"]
            for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
                asked = {f"{name}={value}" for name, value in trial.params.items()}
                given = any(asked <= job for job in self.sweeper.launcher.given)
                if given and not any(asked <= job for job in finished):
                    study.tell(trial.number, state=TrialState.FAIL)

        def _study_attr(self, record: List[str] | None = None) -> List[str] | None:
            """The fixed settings the study recorded (None: none, or no database), or record them."""
            if self.sweeper.storage is None:
                return None
            import optuna

            try:
                study = optuna.load_study(study_name=self.sweeper.study_name, storage=self.sweeper.storage)
            except KeyError:  # not created yet
                return None
            if record is not None:
                study.set_user_attr(SETTINGS_ATTR, record)
            return study.user_attrs.get(SETTINGS_ATTR)
