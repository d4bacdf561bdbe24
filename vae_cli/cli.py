"""Console entry point `vae-train`: compose the Hydra config, call train(cfg), turn failures into one line."""
import io
import logging
import math
import os
import re
import signal
import socket
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException

import vae_cli.configs  # noqa: F401 - registers ${launch_dir:} (configs/__init__.py), also in sweep workers
from vae_cli.config_keys import (MOVABLE, check_added_keys, deleted_key, group_choice_line, hydra_error_line,
                               settings_node_line, swept_objective)
from vae_cli.errors import ConfigError
from vae_cli import interrupts
from vae_cli.interrupts import Interrupted, exit_status, say_last_line, stop_quietly_until_the_run
from vae_cli.process_exit import ExitWithoutTeardown

# configs/ at the top of the repository is installed as the package vae_cli.configs (pyproject.toml).
CONFIG_PATH = interrupts.VAE_CLI_CONFIGS  # "pkg://vae_cli.configs"
EXIT_BAD_INPUT, EXIT_DIVERGED = 2, 3


def version_line() -> str:
    """`vae-train --version`, `vae-eval --version`: the installed vae-cli and the Hydra it runs on."""
    from importlib.metadata import version

    return f"vae-cli {version('vae-cli')} (Hydra {version('hydra-core')}, omegaconf {version('omegaconf')})"


def fail(err: Exception, status: int = EXIT_BAD_INPUT) -> None:
    print(f"error: {err}", file=sys.stderr, flush=True)
    sys.exit(status)


class HeldStderr(io.TextIOBase):
    """Holds what is written to stderr until the task starts: Hydra reports a bad override in several
    lines (and a hint about HYDRA_FULL_ERROR); main() prints it as one `error:` line instead."""

    def __init__(self, real):
        self.real, self.parts, self.released = real, [], False

    def write(self, text: str) -> int:
        if self.released:
            return self.real.write(text)
        self.parts.append(text)
        return len(text)

    def flush(self) -> None:
        self.real.flush()

    def release(self) -> None:
        if not self.released:
            self.released = True
            self.real.write("".join(self.parts))
            sys.stderr = self.real

    def one_line(self, args: list[str]) -> str:
        text = ANSI_CODES.sub("", "".join(self.parts))  # a sweeper's coloured log lines
        lines = [line.strip() for line in text.splitlines()]
        lines = [line for line in lines if line and "HYDRA_FULL_ERROR" not in line and not LOG_RECORD.match(line)]
        if any(line.startswith("Traceback") for line in lines):  # an error before the run: its own line
            # (its last; but submitit's NameError for a mistyped launcher key is followed by lines of advice)
            last = next((line for line in reversed(lines) if EXCEPTION_LINE.match(line)), lines[-1])
            own = EXCEPTION_LINE.match(last)
            if own and own.group(1) == "ConfigError":  # raised by vae-cli's Hydra plugins: a line of its own
                return last[own.end():]
            if own and own.group(1) == "FailedJobError" and last[own.end():].startswith("sbatch:"):
                said = [last[own.end():], *lines[lines.index(last) + 1:]]  # sbatch's lines, as submitit raised them
                reasons = "; ".join(line.removeprefix("sbatch:").strip().removeprefix("error:").strip()
                                    for line in said if line.startswith("sbatch:"))
                return (f"sbatch refused the sweep's jobs ({reasons}), so none was submitted; check the "
                        "hydra.launcher keys it names against `sinfo` (partitions, limits), or that Slurm's "
                        "controller is up")
            if "Unable to configure handler 'file'" in last:  # Hydra's log file in the run folder
                return hydra_error_line(last)
            folder = last.split(":")[0] in FOLDER_ERRORS  # Hydra could not make the run folder
            return last + (" (the run folder, hydra.run.dir, cannot be created or written there)" if folder else "")
        return hydra_error_line("; ".join(lines), args=args)


    def error_line(self, args: list[str]) -> str:
        """The exception's own line of a traceback held back, without its module path (submitit's
        'UncompletedJobError: Job 73_0 ... (state: CANCELLED by 0)', whose message goes on with the job's log)."""
        lines = [line.strip() for line in ANSI_CODES.sub("", "".join(self.parts)).splitlines()]
        for i in range(len(lines) - 1, -1, -1):
            match = EXCEPTION_LINE.match(lines[i])
            if match:  # and the message's next line when it goes on in lower case (submitit's state)
                more = lines[i + 1] if i + 1 < len(lines) and lines[i + 1][:1].islower() else ""
                return " ".join(filter(None, [match.group(1) + lines[i][match.end(1):], more]))
        return self.one_line(args)


ANSI_CODES = re.compile(r"\x1b\[[0-9;]*m")
EXCEPTION_LINE = re.compile(r"^(?:[A-Za-z_]\w*\.)*([A-Za-z_]\w*(?:Error|Exception)): ")
LOG_RECORD = re.compile(r"\[[DIWE] \d{4}-\d\d-\d\d ")  # Optuna's "[I 2026-12-02 16:32:45,163] A new study ..."
FOLDER_ERRORS = ("OSError", "PermissionError", "FileExistsError", "FileNotFoundError", "NotADirectoryError",
                 "IsADirectoryError")


def console() -> None:
    """The vae-train command (pyproject.toml): main() without the interpreter's teardown at exit."""
    with ExitWithoutTeardown():
        main()


def check_ray_address(args: list[str]) -> None:
    """A running Ray cluster named on the command line (hydra/launcher=ray_jobs), or by RAY_ADDRESS with
    hydra.launcher.ray.init.address=auto, must answer at that address: ray.init would otherwise retry for
    minutes, a warning every few seconds, before any job starts. Checked here, before Hydra composes
    anything; an address set in a config file is checked by ray_jobs' launcher as the sweep starts
    (hydra_plugins/vae_cli_sweeper/ray_launcher.py)."""
    address = given(args, "hydra.launcher.ray.init.address")
    problem = ray_address_problem(address) if address is not None else None
    if problem:
        fail(ConfigError(problem))


def ray_address_problem(address: str | None, timeout: float = 5.0) -> str | None:
    """What is wrong with hydra.launcher.ray.init.address=address, in one line, or None: local (a Ray of the
    sweep's own), a HOST:PORT where a Ray head answers, or auto with RAY_ADDRESS unset (this node's running
    cluster, which ray.init finds or refuses at once). A port that is open but not a Ray head's is named
    too (speaks_grpc)."""
    named = "hydra.launcher.ray.init.address={}"
    if address == "auto" and os.environ.get("RAY_ADDRESS"):  # ray.init reads it for auto
        address, named = os.environ["RAY_ADDRESS"], "RAY_ADDRESS={} (read for hydra.launcher.ray.init.address=auto)"
    if address in (None, "local", "auto", "null", ""):
        return None
    host, _, port = address.removeprefix("ray://").rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
        if speaks_grpc(f"{host}:{port}", timeout):
            return None
        reason = (f"something listens there but answers no gRPC handshake in {timeout:g} s, so it is not a Ray "
                  "head (another service on that port?)")
    except ValueError:
        reason = "not HOST:PORT"
    except OSError as err:
        reason = f"no Ray cluster answers there ({err})"
    return (f"{named.format(address)}: {reason}; give the HOST:PORT of a running head (`ray start --head` prints "
            "it), or hydra.launcher.ray.init.address=local to start a Ray for this sweep")


def speaks_grpc(target: str, timeout: float) -> bool:
    """A Ray head (its GCS, or the Ray Client server of ray://) is a gRPC server: a port held by anything
    else (a web server, a database) accepts the connection but never completes gRPC's HTTP/2 handshake,
    where ray.init would retry for minutes. grpc comes with ray; without it the launcher fails on its own."""
    try:
        import grpc  # noqa: PLC0415 - only for hydra/launcher=ray_jobs with an address
    except ImportError:
        return True
    channel = grpc.insecure_channel(target)
    try:
        grpc.channel_ready_future(channel).result(timeout=timeout)
        return True
    except grpc.FutureTimeoutError:
        return False
    finally:
        channel.close()


def absolute_sweep_dir_for_ray(args: list[str]) -> list[str]:
    """args with a relative hydra.sweep.dir made absolute (from this folder) for hydra/launcher=ray_jobs: a
    running cluster's workers start in the folder of `ray start`, where the jobs' folders would go instead,
    and the summary found none of them ('no job started')."""
    if "hydra/launcher=ray_jobs" not in args:
        return args
    made = []
    for arg in args:
        key, _, value = arg.partition("=")
        if key == "hydra.sweep.dir" and value and "${" not in value:
            folder = interrupts.hydra_value(key, value)  # quotes undone
            if isinstance(folder, str) and not Path(folder).expanduser().is_absolute():
                arg = f"{key}={interrupts.hydra_quoted(str(Path.cwd() / folder))}"
        made.append(arg)
    return made


def check_slurm_times(args: list[str]) -> None:
    """hydra/launcher=slurm: the USR2 that gives a job time to checkpoint comes signal_delay_s before the
    time limit (timeout_min); a delay as long as the limit signals the job as it starts, and it is requeued
    until max_num_timeout runs out, never training. Checked on the command line's values and the
    launcher config's defaults (configs/hydra/launcher/slurm.yaml), before anything is submitted."""
    if "hydra/launcher=slurm" not in args:
        return
    from importlib import resources

    defaults = OmegaConf.load(str(resources.files("vae_cli.configs") / "hydra" / "launcher" / "slurm.yaml")).launcher
    given = {key: a.split("=", 1)[1] for a in args for key in ("timeout_min", "signal_delay_s")
             if a.startswith(f"hydra.launcher.{key}=")}
    try:
        minutes = float(given.get("timeout_min", defaults.timeout_min))
        delay = float(given.get("signal_delay_s", defaults.signal_delay_s))
    except ValueError:
        return  # Hydra or submitit names the bad value
    if delay >= minutes * 60:
        fail(ConfigError(f"hydra.launcher.signal_delay_s={delay:g} is not below the time limit "
                         f"hydra.launcher.timeout_min={minutes:g} ({minutes * 60:g} s): each job would be told to "
                         "stop as it starts; lower signal_delay_s (a checkpoint takes seconds) or raise timeout_min"))


def main() -> None:
    """vae-train [resume=RUN_FOLDER] [key=value ...] [-m]: see `vae-train --help`."""
    args = sys.argv[1:]
    if "--version" in args:
        print(version_line())
        return
    check_ray_address(args)
    check_slurm_times(args)
    sys.argv[1:] = args = absolute_sweep_dir_for_ray(args)
    added = (check_added_keys(args) or deleted_key(args, allowed=("eval",))  # ~eval: no evaluation at the end
             or settings_node_line(args) or group_choice_line(args, removable=("eval",)))
    if added:
        fail(ConfigError(added))
    multirun = "-m" in args or "--multirun" in args
    if multirun:
        # -m after an override: argparse took the overrides beyond it for unrecognized arguments (other options,
        # --config-dir DIR, must still come before the overrides, as Hydra's usage line says)
        sys.argv[1:] = args = [arg for arg in args if arg in ("-m", "--multirun")][:1] + [
            arg for arg in args if arg not in ("-m", "--multirun")]
        swept = swept_objective(args)
        if swept:
            fail(ConfigError(swept))
    search = search_problem(args, multirun)
    if search:
        fail(ConfigError(search))
    for key in ("hydra.run.dir", "hydra.sweep.dir"):  # a file there: Hydra's FileExistsError, two tracebacks
        folder = given_path(args, key)
        if folder is not None and Path(folder).expanduser().exists() and not Path(folder).expanduser().is_dir():
            fail(ConfigError(f"{key}={folder} is a file, not a folder; give a folder for the "
                             f"{'run' if key == 'hydra.run.dir' else 'sweep'}'s files"))
    stop_quietly_until_the_run()  # Ctrl-C while torch imports: one line, not a KeyboardInterrupt traceback
    resume = given_path(args, "resume")  # the last, as Hydra reads it; None for none or null
    if resume is not None:  # Hydra's run folder is the one being resumed
        try:
            check_resume(resume, args)
        except ConfigError as err:
            fail(err)
        folder = interrupts.hydra_quoted(str(Path(resume).resolve()))  # resume=7: a str, not Hydra's int
        sys.argv[1:] = [f"resume={folder}" if a.startswith("resume=") else a for a in sys.argv[1:]]
        sys.argv += [f"hydra.run.dir={folder}"]
    interrupts.new_command(multirun=multirun)
    if "vae_cli.sweep" in sys.modules:  # imported by an earlier command in this process (not at start-up)
        sys.modules["vae_cli.sweep"].FOUND.clear()
    if interrupts.MULTIRUN:
        register_plugins()
    held = HeldStderr(sys.stderr)
    sys.stderr = held
    try:
        hydra_main()
        end_after_forwarded_stop(held)
    except SystemExit as done:
        end_after_forwarded_stop(held)
        if not held.released and done.code not in (0, None) and not os.environ.get("HYDRA_FULL_ERROR"):
            if interrupts.MULTIRUN:
                from vae_cli.sweep import FOUND, jobs_started, show_ended_sweep, undo_sweep_folder

                if jobs_started() and FOUND.get("fail_fast"):  # a parallel sweep's job ended it, saying why
                    held.release()  # what the launcher logged meanwhile (an Optuna study's line), as it is
                    show_ended_sweep(fail_fast=True)
                    sys.exit(done.code)
                if jobs_started():  # the launcher gave up (Slurm: a job cancelled, out of time-outs): its line
                    message, held.parts = held.error_line(args), []
                    held.release()
                    print(f"error: the launcher ended the sweep: {message}", file=sys.stderr, flush=True)
                    show_ended_sweep()  # the summary so far, how to continue; jobs still queued may go on
                    sys.exit(done.code)
                undo_sweep_folder()  # no job started: the sweep folder is left as this command found it
            message, held.parts = held.one_line(args), []
            held.release()
            print(f"error: {message}", file=sys.stderr, flush=True)
            sys.exit(EXIT_BAD_INPUT)
        raise
    except ValueError as err:  # Hydra's own usage errors (-m with --cfg) come before the task, untranslated
        end_after_forwarded_stop(held)
        if held.released or os.environ.get("HYDRA_FULL_ERROR"):
            raise
        held.parts = []
        held.release()
        fail(ConfigError(f"{err} (vae-train --help)"))
    except (HydraException, OmegaConfBaseException) as err:  # --help composes the overrides outside a task
        end_after_forwarded_stop(held)
        if held.released or os.environ.get("HYDRA_FULL_ERROR"):
            raise
        held.parts = []
        held.release()
        fail(ConfigError(hydra_error_line(str(err), "train", args)))
    except BaseException:
        end_after_forwarded_stop(held)
        raise
    finally:
        held.release()


def check_resume(folder: str, args: list[str]) -> None:
    """resume=FOLDER before Hydra creates its run folder (and log file) there: a folder of a run with its
    checkpoint, which no other vae-train is using; ConfigError otherwise, nothing written."""
    from vae_cli.run_state import CHECKPOINT, run_lock

    path = Path(folder)
    hint = "pass the folder of a run started by vae-train (outputs/<date>/<time>)"
    if not folder:
        raise ConfigError(f"resume= names no folder (an unset shell variable?); {hint}")
    if given([a.lstrip("+") for a in args], "overwrite") in ("true", "True"):  # the last, as Hydra takes it
        raise ConfigError("resume= continues the run in its folder and overwrite=true deletes it; give one of them")
    if path.is_file():
        raise ConfigError(f"resume={folder} is a file; pass its folder: resume={path.parent}")
    if not path.is_dir():
        raise ConfigError(f"resume={folder}: no such folder; {hint}")
    run_dir = given_path(args, "hydra.run.dir")  # a user review: it was ignored, and the run extended in place
    if run_dir is not None and ("${" in run_dir or Path(run_dir).expanduser().resolve() != path.resolve()):
        copy = ("" if "${" in run_dir else
                f" (to keep the run as it is, copy its folder to {run_dir} and resume the copy)")
        raise ConfigError(f"resume={folder} continues the run in its own folder: leave hydra.run.dir={run_dir} "
                          f"out{copy}")
    with run_lock(path):  # FolderInUse: another vae-train runs there (perhaps before its first checkpoint)
        pass
    if not (path / CHECKPOINT).is_file():
        from vae_cli.run_state import METRICS, read_status

        if (path / METRICS).is_file():  # overwrite=true would delete the figures (a code review)
            raise ConfigError(f"resume={folder}: the run there is finished, but its checkpoint.pt is gone, so it "
                              "cannot be resumed or extended; its figures are in metrics.json")
        if (read_status(path) or {}).get("state") in ("failed", "interrupted", "running"):  # before its first one
            again = (f"its command again with overwrite=true and {interrupts.folder_override('hydra.run.dir', path)}"
                     if not (path.parent / "multirun.yaml").is_file()
                     else "its sweep's command again (it starts the job afresh)")
            raise ConfigError(f"resume={folder}: the run there ended before its first checkpoint, so there is "
                              f"nothing to resume; start it afresh: {again} (its vae-train.log says why it ended)")
        raise ConfigError(f"resume={folder}: no checkpoint.pt there, so nothing to resume; {hint}")
    if not os.access(path, os.W_OK):  # a read-only mount: Hydra's log file was the first thing to fail
        raise ConfigError(f"resume={folder}: the folder cannot be written (read-only?), and a resumed run writes its "
                          "checkpoints there; make it writable, or copy the run folder and resume the copy")


def register_plugins() -> None:
    """The classes of configs/hydra/sweeper/optuna_study.yaml and hydra/launcher/ray_jobs.yaml, for Hydra:
    it finds plugins by listing the folders of the hydra_plugins namespace package, and an editable install
    (pip install -e) adds this repository's folder through an import hook that such a listing does not see.
    Each is there when its Hydra plugin is installed (pip install "vae-cli[sweep]")."""
    from hydra.core.plugins import Plugins

    from hydra_plugins.vae_cli_sweeper import optuna_study, ray_launcher

    for module, name in ((optuna_study, "OptunaStudySweeper"), (ray_launcher, "CheckedRayLauncher")):
        if hasattr(module, name):
            Plugins.instance().register(getattr(module, name))


def end_after_forwarded_stop(held: HeldStderr) -> None:
    """A sweep whose job processes were handed a stop signal (interrupts.before_the_run) ends by that signal
    once they have, whatever the launcher made of their exits: their own lines said what to do next. By
    SystemExit, so that the exit handlers run (joblib's shuts its idle workers down, which would otherwise
    outlive this process); process_exit ends the process by the signal itself when it is SIGINT."""
    if interrupts.FORWARDED:
        held.parts = []
        held.release()
        from vae_cli.sweep import show_ended_sweep

        show_ended_sweep()  # when the launcher did not return (a job process ended as it started)
        raise SystemExit(exit_status(interrupts.FORWARDED[0]))


class JobNumbered(logging.Formatter):
    """Another formatter's lines, each started with a job's number: `[job 3][...` (a traceback's too)."""

    def __init__(self, inner: logging.Formatter, job_num) -> None:
        super().__init__()
        self.inner, self.prefix = inner, f"[job {job_num}]"

    def format(self, record: logging.LogRecord) -> str:
        return "\n".join(self.prefix + line for line in self.inner.format(record).split("\n"))


def remove_unstarted(run_dir: Path) -> None:
    """The folder Hydra made for a job that a stopping sweep does not start, where it holds nothing but an
    empty log, or nothing (a job_logging that writes no file): removed (a parallel sweep stopped with 4 jobs
    queued left 4 such folders; the summary lists those jobs as not started). A folder with anything else in
    it, an earlier command's job, stays."""
    try:
        files = list(run_dir.iterdir())
        if all(f.suffix == ".log" and f.is_file() and f.stat().st_size == 0 for f in files):
            for f in files:
                f.unlink()
            run_dir.rmdir()
    except OSError:  # gone, or not ours to remove: left as it is
        pass


def number_console_lines(job_num) -> None:
    """hydra/launcher=parallel: the jobs' log lines interleave on one terminal, so each console line starts
    with its job's number; the job's vae-train.log keeps Hydra's format. Hydra sets the logging up afresh
    for each job (hydra.job_logging); this wraps the console handlers' formatters as they are, whatever
    they are (a user's colorlog, a '{' style)."""
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
            handler.setFormatter(JobNumbered(handler.formatter or logging.Formatter(), job_num))
    interrupts.TERMINAL_PREFIX = f"[job {job_num}] "  # its stop line too


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="train")
def hydra_main(cfg: DictConfig) -> float | None:
    if isinstance(sys.stderr, HeldStderr):
        sys.stderr.release()
    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    if multirun:  # a stop from here on, between this job and the next, says how to continue the sweep
        interrupts.SWEEP_RERUN = interrupts.sweep_rerun(hydra_cfg)
    parallel_worker = interrupts.in_parallel_worker(multirun)
    if parallel_worker:
        number_console_lines(hydra_cfg.job.num)
        for signum in interrupts.STOP_SIGNALS:  # from here (torch's import too) to the end of its last job
            signal.signal(signum, interrupts.keep_stop_between_jobs)
    from vae_cli.loop import Diverged, Stopped  # imported here so that --help and bad overrides answer fast
    from vae_cli.run_state import FolderInUse, Status, read_status, refused_before_training, run_files
    from vae_cli.sweep import record_refusal
    if interrupts.WORKER_STOP or (multirun and interrupts.FORWARDED):  # the sweep is stopping: start nothing
        remove_unstarted(run_dir)
        return None
    try:
        if cfg.get("resume"):
            cfg = resumed_config(cfg, Path(cfg.resume), list(hydra_cfg.overrides.task))
        if multirun:
            check_same_job(run_dir, list(hydra_cfg.overrides.task))
        metrics = train_named_keys(cfg, run_dir)
    except (ConfigError, Diverged) as err:
        status = EXIT_DIVERGED if isinstance(err, Diverged) else EXIT_BAD_INPUT
        in_use = isinstance(err, FolderInUse)  # the folder is the other process's: nothing written
        written = read_status(run_dir) or {}  # train() records an error met once it has written the folder
        recorded = written.get("state") == "failed" and written.get("pid") == os.getpid()  # Diverged too
        # recorded where the folder holds no run, or only an earlier refusal (a bad value, now another)
        empty = not run_files(run_dir)
        if isinstance(err, ConfigError) and not in_use and run_dir.is_dir() and (
                empty or refused_before_training(run_dir)):
            try:
                save_hydra_files(run_dir, cfg, rewrite=not empty)  # a sweep's summary names the job's overrides
                Status(run_dir, state="failed", error=str(err), resume_command=None).update()
                recorded = True
            except (OSError, ConfigError):  # a full disk (err may say so): the error line is what counts
                pass
        if multirun and not recorded:  # the folder is another run's: the sweep's summary hears of it here
            record_refusal(Path(hydra_cfg.sweep.dir), hydra_cfg.job.num, list(hydra_cfg.overrides.task), str(err))
        if not in_use:  # the log of the process that holds the folder is its own
            say_last_line(str(err), terminal=False)
        if multirun:
            print(f"error: job {hydra_cfg.job.num} ({run_dir}): {err}", file=sys.stderr, flush=True)
            if not cfg.get("fail_fast"):  # recorded in status.json; the other jobs go on
                return None  # no objective: Optuna records the trial as failed (a NaN it refuses, and crashes)
            stop_sweep_here(hydra_cfg, status, parallel_worker)
        fail(err, status)
    except Stopped as stop:
        if not getattr(stop, "said", False):  # said before a scheduler's handler, which may have exited
            say_last_line(str(stop), error=False)
        return end_stopped_job(stop.signum, parallel_worker)
    except Interrupted as stop:
        line = f"stopped by {stop} outside a training step (no step lost)"
        if (run_dir / "checkpoint.pt").is_file():
            line += f"; continue with: vae-train {interrupts.folder_override('resume', run_dir)}"
        elif not multirun:  # a sweep's job: the sweep's line follows
            line += "; continue with: the same command"
        say_last_line(line, error=False)
        return end_stopped_job(stop.signum, parallel_worker)
    value = metrics.get(cfg.objective.metric)
    return float(value) if value is not None and math.isfinite(value) else None


# Keys a single run may change on resume (run_state.RESUMABLE) that change a sweep job's result: a job of an
# earlier command, re-run with another value, would be extended or reported as it is, under its old label.
JOB_RESULT_KEYS = ("epochs", "max_steps", "early_stopping.patience")


def first_command(run_dir: Path) -> list[str] | None:
    """The overrides of the command that started the run in run_dir (save_hydra_files wrote them); None
    when absent or unreadable."""
    try:
        return [str(o) for o in OmegaConf.load(run_dir / ".hydra" / "overrides.yaml")]
    except Exception:  # noqa: BLE001 - absent, or not YAML
        return None


def check_same_job(run_dir: Path, overrides: list[str]) -> None:
    """A sweep job's folder holding a run of an earlier command whose JOB_RESULT_KEYS overrides differ from
    this job's (a re-run with another grid, epochs=2,3 then epochs=3,4): ConfigError, the run left alone."""
    recorded = first_command(run_dir)
    if recorded is None:  # a new job: nothing to compare with
        return

    def chosen(items: list[str]) -> dict:
        pairs = (item.lstrip("+~").split("=", 1) for item in items)
        return {pair[0]: pair[-1] for pair in pairs if pair[0] in JOB_RESULT_KEYS}

    before, now = chosen(recorded), chosen(overrides)
    if before != now:
        changed = ", ".join(f"{key}: {before.get(key, 'not given')} -> {now.get(key, 'not given')}"
                            for key in JOB_RESULT_KEYS if before.get(key) != now.get(key))
        raise ConfigError(f"{run_dir} holds this job number's run of an earlier command, with other settings "
                          f"({changed}); give this sweep its own folder (a new hydra.sweep.dir=...), or continue "
                          f"that run alone: vae-train {interrupts.folder_override('resume', run_dir)} "
                          f"{' '.join(f'{key}={value}' for key, value in now.items())}".strip())


def train_named_keys(cfg: DictConfig, run_dir: Path) -> dict:
    """train(cfg, run_dir), Hydra's files written as it begins; a config value written ??? and not given
    is a ConfigError naming its key (a sweep records it as that job's failure, as any bad value)."""
    from vae_cli.train import train

    try:
        return train(cfg, run_dir, on_start=lambda plan: save_hydra_files(run_dir, cfg, plan.action == "fresh"))
    except MissingMandatoryValue as err:
        raise ConfigError(f"{err.full_key} is required and has no value; set it with {err.full_key}=VALUE") from None


def end_stopped_job(signum: int, parallel_worker: bool) -> None:
    """After a stopped job's line: the process ends with the signal's status (a sweep's job first says how
    to continue the sweep). A job in a parallel sweep's worker returns instead, with no objective: joblib
    would end the other workers, mid-step, on its SystemExit; the launching process ends by the signal
    once every job has returned (SweepSummary, cli.main)."""
    if parallel_worker:
        interrupts.WORKER_STOP.append(signum)
        return None
    print_sweep_rerun()
    sys.exit(exit_status(signum))


def stop_sweep_here(hydra_cfg, status: int, parallel_worker: bool) -> None:
    """fail_fast=true: the sweep ends at this job's failure (its line printed), with the summary of the jobs
    so far (Hydra's end-of-multirun callback does not run after it), and that exit status. In a parallel
    sweep's worker the launching process shows them, once joblib has ended the other jobs (cli.main)."""
    from vae_cli.sweep import FOUND, summarize, summary_dir

    if parallel_worker:
        sys.exit(status)
    print(summarize(summary_dir(hydra_cfg), objective=FOUND.get("objective")).report(FOUND.get("planned")), flush=True)
    # the folder of a job that trained before it failed holds that run: other values there are refused
    failed_job = Path(hydra_cfg.runtime.output_dir)
    print(f"the sweep stopped at this failure (fail_fast=true); {interrupts.rerun_command(hydra_cfg, failed_job)}",
          file=sys.stderr, flush=True)
    sys.exit(status)


def print_sweep_rerun() -> None:
    """After a sweep job's stop line: the summary so far (as a stopped parallel sweep prints it) where this
    process launched the sweep, and how to continue it (SWEEP_RERUN, set by hydra_main; None in a single run)."""
    if interrupts.SWEEP_RERUN is None:
        return
    sweep = sys.modules.get("vae_cli.sweep")  # imported by the sweep's callback in this process, if it runs here
    if sweep is not None and sweep.FOUND and not sweep.FOUND["shown"]:
        sweep.show_ended_sweep()
        return
    print(interrupts.SWEEP_RERUN, file=sys.stderr, flush=True)


def given(args: list[str], key: str) -> str | None:
    """The value of the command line's last key=VALUE, or None where it has none."""
    values = [a.split("=", 1)[1] for a in args if a.startswith(f"{key}=")]
    return values[-1] if values else None


def given_path(args: list[str], key: str) -> str | None:
    """given()'s folder as Hydra reads it (`"/runs/R&D"` is /runs/R&D); None where none is given, or null."""
    value = given(args, key)
    folder = interrupts.hydra_value(key, value) if value is not None else None
    return None if folder is None else str(folder)


def search_problem(args: list[str], multirun: bool) -> str | None:
    """What is wrong with an Optuna study (hparams_search=NAME) on this command line, in one line, or None:
    - without -m: the search's sweeper takes part in multiruns only, so it would train one run of the
      defaults, saying nothing;
    - into a hydra.sweep.dir that holds an earlier command's jobs: each command numbers its trials' folders
      from 0, so every trial was refused as another run's and recorded in the study as failed."""
    search, folder = given(args, "hparams_search"), given_path(args, "hydra.sweep.dir")
    if search is None or search == "null":
        return None
    if not multirun:
        return (f"hparams_search={search} is a search of many runs: start it with -m (vae-train -m "
                f"hparams_search={search} ...); without -m it would train one run of the defaults")
    path = Path(folder).expanduser() if folder is not None else None
    if path is None or not path.is_dir() or not any(p.is_dir() and p.name.isdigit() for p in path.iterdir()):
        return None
    return (f"hydra.sweep.dir={folder} holds an earlier command's trials, and each command of a study numbers "
            f"its trials' folders from 0; leave hydra.sweep.dir out (each command of hparams_search={search} "
            "then gets a folder of its own beside the study) or give a new one")


def save_hydra_files(run_dir: Path, cfg: DictConfig, rewrite: bool) -> None:
    """What Hydra writes into .hydra/ (configs/train.yaml turns that off so that a refused command leaves
    an existing run's record alone): the composed config, Hydra's own, the overrides."""
    folder = run_dir / ".hydra"
    if folder.is_dir() and not rewrite:
        return
    folder.mkdir(parents=True, exist_ok=True)
    hydra_cfg = HydraConfig.get()
    OmegaConf.save(cfg, folder / "config.yaml")
    OmegaConf.save(OmegaConf.create({"hydra": OmegaConf.to_container(hydra_cfg)}), folder / "hydra.yaml")
    OmegaConf.save(OmegaConf.create(list(hydra_cfg.overrides.task)), folder / "overrides.yaml")


def resumed_config(cfg: DictConfig, run_dir: Path, overrides: list[str]) -> DictConfig:
    """The config stored in run_dir, with the command line's changes to resumable keys (epochs, device,
    ...); a change to anything the run computes (model, data, ...) is refused with one line."""
    from importlib import resources

    from hydra.core.override_parser.overrides_parser import OverridesParser

    from vae_cli.checkpoint import START_AFRESH, load_checkpoint
    from vae_cli.run_state import RECORDED, RESUMABLE

    if not (run_dir / "checkpoint.pt").is_file():
        raise ConfigError(f"resume={run_dir}: no checkpoint.pt there, so nothing to resume; pass the folder "
                          "of a run started by vae-train (outputs/<date>/<time>)")
    state = load_checkpoint(run_dir, remedy=START_AFRESH)
    stored = OmegaConf.create({k: v for k, v in state["config"].items() if k not in RECORDED})
    # overwrite=true is what the run's first command asked (start afresh there), not this one: kept, it
    # would start the resumed run afresh, deleting its checkpoint
    OmegaConf.update(stored, "overwrite", False, force_add=True)
    started_with = first_command(run_dir) or []  # none: no group override is taken for the run's own
    refused = []
    for override in OverridesParser.create().parse_overrides(overrides):
        key = override.key_or_group.split("@")[0].lstrip("+~")
        if key in ("resume", "hydra") or key.startswith("hydra."):
            continue
        new = OmegaConf.select(cfg, key, default=None)
        top = key.split(".")[0]
        if top in RESUMABLE:  # eval=full, ~eval (no evaluation: eval is null), epochs=20, ...
            if OmegaConf.select(stored, top, default=None) is None and cfg.get(top) is not None:
                key, new = top, cfg[top]  # eval.num_samples=10 for a run of ~eval: the whole eval node, so set
            OmegaConf.update(stored, key, new, force_add=True)
        elif key in MOVABLE:  # the data set's files, moved: absolute, as a later resume from elsewhere reads it
            moved = str(Path(new).expanduser().resolve()) if isinstance(new, str) and new else new
            if moved != OmegaConf.select(stored, key, default=None):
                logging.getLogger(__name__).warning("%s=%s in place of the run's %s", key, moved,
                                                    OmegaConf.select(stored, key, default=None))
            OmegaConf.update(stored, key, moved, force_add=True)
        elif (resources.files("vae_cli.configs") / key).is_dir() and override.input_line in started_with:
            continue  # a group's option as the run had it: data=npz, needed to name its data.path (below)
        elif key not in cfg and (resources.files("vae_cli.configs") / key).is_dir():
            refused.append(override.input_line)  # experiment=, debug=: a group of settings with no node of its own
        elif OmegaConf.select(stored, key, default=None) != new:
            refused.append(override.input_line)
    if refused:
        raise ConfigError(f"resume={run_dir}: {', '.join(refused)} would change what the run computes; a "
                          f"resumed run keeps its model, data and training settings (only "
                          f"{', '.join(RESUMABLE[:6])}, ... may change); start a new run instead")
    OmegaConf.update(stored, "resume", str(run_dir), force_add=True)
    OmegaConf.set_struct(stored, True)
    return stored


if __name__ == "__main__":  # python -m vae_cli.cli: vae-train, run from the imported module (its one copy)
    from vae_cli.cli import console as command

    command()
