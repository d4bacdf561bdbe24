"""Stop signals (Ctrl-C, a scheduler's SIGTERM, Slurm's SIGUSR1/2) turned into a checkpoint and a clean exit."""
import contextlib
import os
import re
import shlex
import signal
import sys
import time
from pathlib import Path

import yaml

# What shells and schedulers send. SIGHUP: the terminal closed (an ssh session dropped), unless the process
# was started to ignore it (nohup). SIGUSR1/SIGUSR2: what Slurm (--signal) and submitit send before a time
# limit or a preemption. The exit status is 128 + the signal's number, as a shell reports a killed job.
STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP", "SIGUSR1", "SIGUSR2")
                     if hasattr(signal, name)
                     and not (name == "SIGHUP" and signal.getsignal(signal.SIGHUP) == signal.SIG_IGN))


class Interrupted(Exception):
    """Raised where no step boundary is near (setup, evaluation): nothing needs saving there."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def exit_status(signum: int) -> int:
    return 128 + int(signum)


def end_now(signum: int) -> None:
    """End the process at once for signum: by SIGINT itself when it is Ctrl-C, else with status 128 + N.

    A shell running a loop of commands stops the loop only when the command was ended by SIGINT; a
    command that exits with status 130 instead is taken to have handled Ctrl-C, and the loop goes on.
    (The shell shows 130 either way.)"""
    if signum == signal.SIGINT:
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)
    os._exit(exit_status(signum))  # any other signal; and a safety net should SIGINT not end us


# One Ctrl-C can arrive twice: from the terminal (the whole process group) and from a process above that
# hands it on (`timeout`, srun, a sweep's launching process: before_the_run). Two within this many seconds
# are one stop.
SAME_STOP_SECONDS = 1.0


class StopSignals:
    """While active, a stop signal is recorded, not acted on: the training loop asks `pending` at each step
    boundary, writes a checkpoint and leaves. Outside the training loop (`immediate`), the signal raises
    Interrupted at once. A second SIGINT (SAME_STOP_SECONDS after the first or later) ends the process at
    once, whatever the loop is doing.

    The handlers that were installed before (submitit installs its own for SIGUSR2 and SIGTERM, to requeue
    a preempted job) are restored on exit, and `forward` hands the signal on to them once the checkpoint
    is written, so a scheduler's requeueing still happens.
    """

    def __init__(self):
        self.signum: int | None = None
        self.since = 0.0  # when the signal came
        self.immediate = True
        self.previous: dict = {}

    def __enter__(self) -> "StopSignals":
        for signum in STOP_SIGNALS:
            try:
                self.previous[signum] = signal.signal(signum, self._handle)
            except ValueError:  # not the main thread (e.g. a launcher's worker thread): leave signals alone
                break
        stop = WORKER_STOP or FORWARDED  # the sweep was told to stop just before this job: at its first step
        if stop:
            self.signum, self.since = stop[0], time.monotonic()
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self.previous.items():  # kept in self.previous for forward()
            signal.signal(signum, handler)

    def _handle(self, signum, frame) -> None:
        if self.signum == signal.SIGINT and signum == signal.SIGINT:
            if time.monotonic() - self.since < SAME_STOP_SECONDS:
                return  # the same stop, delivered twice
            print("\nsecond Ctrl-C: stopped at once, without a new checkpoint", file=sys.stderr, flush=True)
            end_now(signum)
        self.signum, self.since = signum, time.monotonic()
        if self.immediate:
            raise Interrupted(signum)

    @property
    def pending(self) -> bool:
        return self.signum is not None

    def forwards(self) -> bool:
        """Whether forward() calls another handler (which may exit the process before the caller goes on)."""
        handler = self.previous.get(self.signum)
        return callable(handler) and handler is not signal.default_int_handler and handler is not before_the_run

    def forward(self) -> None:
        """Call the handler that was installed before ours for the recorded signal, if it was a Python one
        (submitit's requeue); it may exit the process itself."""
        if self.forwards():
            self.previous[self.signum](self.signum, None)


def say_last_line(line: str, terminal: bool = True, error: bool = True) -> None:
    """The run's last line (an error; with error=False a stop, which the user or a scheduler asked for:
    logged as a warning): printed to the terminal (unless the caller prints it its own way), and into its
    vae-train.log through Hydra's file handler on the root logger."""
    import logging

    level = logging.ERROR if error else logging.WARNING
    record = logging.makeLogRecord({"name": "vae_cli.cli", "levelno": level, "levelname": logging.getLevelName(level),
                                    "msg": line})
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)
    if terminal:
        print(TERMINAL_PREFIX + line, file=sys.stderr, flush=True)


# "[job 3] " while a parallel sweep's job runs (cli.number_console_lines): its last line on the shared terminal
# names it, as its log lines do.
TERMINAL_PREFIX = ""


# Set by a sweep's first job (cli.py): between two jobs, the stop line says how to continue the sweep.
SWEEP_RERUN: str | None = None


def optuna_study(hydra_node) -> str | None:
    """The study's name when Hydra's config (its `hydra` node) sweeps with Optuna; else None."""
    sweeper = hydra_node.get("sweeper") or {}
    return sweeper.get("study_name") if "optuna" in str(sweeper.get("_target_", "")).lower() else None


def rerun_command(hydra_node, failed_job: Path | None = None) -> str:
    """How to continue a sweep (README, Re-running a sweep), ending in its command, from Hydra's config (its
    `hydra` node). failed_job: after a failure (fail_fast), the folder of the job that failed, whose files say
    what its folder takes: a job refused before training (a bad value) takes the changed value there; one
    that trained keeps its run, which the same command resumes and a changed value is refused. An Optuna
    study is not re-run job by job: its next command asks it for new trials."""
    if optuna_study(hydra_node) is not None:
        return (f"{'once it is mended, ' if failed_job else ''}the same command again adds new trials to the "
                f"study {optuna_study(hydra_node)}")
    command = sweep_command(hydra_node)
    if failed_job is None:
        return f"to continue the sweep (finished jobs skipped, stopped ones resumed, the rest run), run: {command}"
    from vae_cli.run_state import refused_before_training  # noqa: PLC0415 - only after a failure

    if refused_before_training(Path(failed_job)):
        return ("change the failing value in the sweep's command and run it again: the failed job's folder takes "
                f"the change (finished jobs skipped, the rest run). The command: {command}")
    return ("the failed job's folder keeps its run: the same command runs it again there, from its last checkpoint "
            "if it wrote one (once the cause, e.g. a full disk, is mended), and a changed value needs a new "
            f"hydra.sweep.dir. The command: {command}")


def sweep_command(hydra_node) -> str:
    """The vae-train -m command line of a sweep, each override quoted for a POSIX shell, with its config
    options (config_options), writing into its folder, absolute: overwrite=true, which would start every
    job afresh (the finished ones too), left out. The overrides are those of the folder's multirun.yaml,
    which Hydra writes as the command starts (a job's own hydra_node holds that job's values: beta=-1 of
    beta=1,-1), else hydra_node's."""
    try:  # plain YAML, C-parsed: 2 ms where OmegaConf.load took 30, at each sweep job's start (cli.py)
        text = (Path(str(hydra_node.sweep.dir)) / "multirun.yaml").read_text()
        overrides = yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))["hydra"]["overrides"]
    except Exception:  # noqa: BLE001 - absent (a command in test code) or unreadable: the node's own
        from omegaconf import OmegaConf  # noqa: PLC0415 - Hydra has imported it

        overrides = OmegaConf.to_container(hydra_node.overrides, resolve=False)  # as given: `${...}` kept
    hydra = [str(o) for o in overrides.get("hydra") or [] if not str(o).startswith(("hydra.sweep.dir=", "hydra.mode="))]
    task = [str(o) for o in overrides["task"] if str(o).lower() != "overwrite=true"]
    command = shlex.join(["vae-train", "-m", *config_options(hydra_node), *task, *hydra])
    return f"{command} {folder_override('hydra.sweep.dir', hydra_node.sweep.dir)}"


def folder_override(key: str, folder) -> str:
    """`key=FOLDER`, the folder absolute, as one word of a POSIX shell that Hydra reads as that folder: quoted
    for the shell, and first for Hydra where the path holds more than letters, digits and `_./+-` (a comma
    made a sweep of two folders, `(copy)` or `R&D` a parse error). hydra_value reads it back."""
    return shlex.quote(f"{key}={hydra_quoted(str(Path(str(folder)).resolve()))}")


def hydra_quoted(path: str) -> str:
    """path as a value of a Hydra override: as it is where plainly safe, else in Hydra's double quotes
    (its own QuotedString: quotes, and backslashes before them, escaped)."""
    if re.fullmatch(r"[A-Za-z0-9_./+-]+", path):  # ASCII: Hydra reads no other letter unquoted
        return path
    from hydra.core.override_parser.types import Quote, QuotedString  # noqa: PLC0415 - only for such a path

    return QuotedString(text=path, quote=Quote.double).with_quotes()


def hydra_value(key: str, value: str):
    """The value of a command line's `key=value` as Hydra reads it (quotes and escapes undone: a path, a
    number, None for null); value itself where Hydra cannot parse it (Hydra then says why)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser  # noqa: PLC0415
    from hydra.errors import HydraException  # noqa: PLC0415

    try:
        override = OverridesParser.create().parse_override(f"{key}={value}")
    except HydraException:
        return value
    return value if override.is_sweep_override() else override.value()


VAE_CLI_CONFIGS = "pkg://vae_cli.configs"  # vae-train's primary config source (cli.CONFIG_PATH): configs/, installed


def config_options(hydra_node) -> list[str]:
    """The command's --config-path, --config-dir and --config-name, from what Hydra recorded of them in its
    node (the primary config's source and name, each --config-dir as a command-line source): without
    them the pasted command composes vae-train's own configs, so a sweep of a user's configs
    (docs/extending.md) is refused (its jobs' configs differ) or fails to compose."""
    runtime, job = hydra_node.get("runtime") or {}, hydra_node.get("job") or {}
    options = []
    for source in runtime.get("config_sources") or []:
        schema, path = source.get("schema"), str(source.get("path"))  # a file's path: absolute (Hydra's abspath)
        where = path if schema == "file" else f"{schema}://{path}"
        if source.get("provider") == "main" and where != VAE_CLI_CONFIGS:
            options += ["--config-path", where]
        elif source.get("provider") == "command-line":
            options += ["--config-dir", where]
    if job.get("config_name") not in (None, "train"):
        options += ["--config-name", str(job.get("config_name"))]
    return options


def sweep_rerun(hydra_node) -> str:
    """The line after a stopped sweep's last one: how to continue it."""
    if optuna_study(hydra_node) is not None:
        return (f"the study {optuna_study(hydra_node)}: the same command again adds new trials to it (a stopped "
                "trial is recorded there as failed)")
    return rerun_command(hydra_node)


MULTIRUN = False  # vae-train -m: set by cli.main
FORWARDED: list[int] = []  # the signal a sweep's launching process handed on to its job processes
# Set by a sweeper that launches no further job once FORWARDED is set (hydra_plugins/vae_cli_sweeper): a stop
# between two of its jobs is kept in FORWARDED, and the sweep ends through it (recording its trials).
SWEEPER_CHECKS_STOP = False


# hydra/launcher=parallel runs the jobs in joblib's worker processes, and a job that ends by SystemExit makes
# joblib end the other workers at once, mid-step, before their checkpoints. So a stopped job there returns
# instead, and its worker starts no further job: the signal is kept here (a list, set from a handler).
WORKER_STOP: list[int] = []


# Set when a run's last files were written after a stop signal came (stop_after_the_run).
RUN_ENDED = False


def stop_after_the_run(signum: int) -> None:
    """A stop that came while a run wrote its last files (they are written whatever arrives then), acted on
    now that the run is finished: the signal goes again to this process, whose handler outside the run
    ends it (before_the_run: a sweep stops before its next job; a single run says it is finished), or
    records it (a parallel sweep's worker), or raises KeyboardInterrupt (train() called from Python)."""
    global RUN_ENDED
    RUN_ENDED = True
    os.kill(os.getpid(), signum)


def new_command(multirun: bool) -> None:
    """This module's state for a new vae-train command (cli.main), not what an earlier one in the same process
    left: a stop handed on (FORWARDED) would end the next command at once."""
    global MULTIRUN, SWEEP_RERUN, SWEEPER_CHECKS_STOP, RUN_ENDED
    MULTIRUN, SWEEP_RERUN, SWEEPER_CHECKS_STOP, RUN_ENDED = multirun, None, False, False
    FORWARDED.clear()
    WORKER_STOP.clear()


def in_parallel_worker(multirun: bool) -> bool:
    """A sweep's job running in a joblib worker: not in the launching process (where cli.main set MULTIRUN),
    under the parallel launcher (configs/hydra/launcher/parallel.yaml sets VAE_CLI_PARALLEL_JOBS)."""
    return multirun and not MULTIRUN and bool(os.environ.get("VAE_CLI_PARALLEL_JOBS"))


def keep_stop_between_jobs(signum, frame) -> None:
    """A parallel worker's handler outside train(): the stop is kept for the next job (cli.hydra_main)."""
    WORKER_STOP.append(signum)


def child_processes() -> list[int]:
    """The pids whose parent is this process (Linux's /proc; elsewhere none)."""
    children = []
    try:
        names = os.listdir("/proc")
    except OSError:
        return children
    for name in names:
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat") as file:
                    if int(file.read().rpartition(")")[2].split()[1]) == os.getpid():
                        children.append(int(name))
            except (OSError, IndexError, ValueError):
                pass
    return children


def before_the_run(signum, frame) -> None:
    """vae-train's handler until train() takes over (imports, composing the config): exit at once, one line.
    In a sweep's launching process whose jobs run in child processes (hydra/launcher=parallel), the first
    signal is handed on to them instead: each writes its checkpoint and ends, and this process ends with
    them (cli.main); it leaving first would orphan them. A second one ends it at once."""
    children = child_processes() if MULTIRUN and not FORWARDED else []
    if children:
        FORWARDED.append(signum)
        print(f"\nstopping the sweep's job processes ({signal.Signals(signum).name}): each writes its checkpoint "
              "at its next step; again to stop at once", file=sys.__stderr__, flush=True)
        for pid in children:
            with contextlib.suppress(OSError):
                os.kill(pid, signum)
        return
    sys.stdout.flush()
    name = signal.Signals(signum).name
    if FORWARDED:  # at once means the job processes too: none is left behind
        children = child_processes()
        for pid in children:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        line = (f"\nstopped by a second {name}, with the sweep's job processes: each resumes from its last checkpoint"
                if children else f"\nstopped by a second {name}, at once")
    elif SWEEP_RERUN is not None and SWEEPER_CHECKS_STOP:  # it ends the sweep before its next job
        FORWARDED.append(signum)
        print(f"\nstopping the sweep ({name}) before its next job; again to stop at once", file=sys.__stderr__,
              flush=True)
        return
    elif SWEEP_RERUN is not None:
        line = f"\nstopped by {name} between two jobs; {SWEEP_RERUN}"
    elif RUN_ENDED:
        line = f"\nstopped by {name} as the run ended; it is finished (metrics.json), nothing lost"
    elif MULTIRUN and (launcher := cluster_launcher()):
        # the jobs run on a cluster, not in this process's children: say what becomes of them
        sweep = sys.modules["vae_cli.sweep"]
        jobs = ("Slurm runs the jobs it was given on (`scancel` stops one with its checkpoint); re-run once they "
                "have ended (squeue), else the jobs still running are refused as in use" if launcher == "slurm"
                else "Ray ends the jobs with it (each resumes from its last checkpoint)")
        print(f"\nstopped by {name}: this command ends; {jobs}", file=sys.__stderr__, flush=True)
        getattr(sys.stderr, "release", lambda: None)()  # cli.HeldStderr: the re-run line is not held back
        sweep.show_ended_sweep()  # the summary so far and how to continue the sweep
        end_now(signum)
    else:
        line = f"\nstopped by {name} before training started; nothing of the run was written"
    print(line, file=sys.__stderr__, flush=True)
    end_now(signum)


def cluster_launcher() -> str | None:
    """"slurm" or "ray" when this process launched a sweep whose jobs run on a cluster (the sweep noted by
    vae_cli.sweep's callback in this process); else None."""
    sweep = sys.modules.get("vae_cli.sweep")
    return launcher_kind(sweep.FOUND.get("hydra") if sweep is not None else None)


def launcher_kind(hydra_node) -> str | None:
    """"slurm" or "ray" where a sweep's `hydra` node names a launcher whose jobs run on a cluster; else None."""
    target = str((hydra_node.get("launcher") or {}).get("_target_", "")).lower() if hydra_node else ""
    return "slurm" if "slurmlauncher" in target else "ray" if "raylauncher" in target else None


def stop_quietly_until_the_run() -> None:
    for signum in STOP_SIGNALS:
        signal.signal(signum, before_the_run)


@contextlib.contextmanager
def stop_at_once(what: str):
    """While active, a stop signal ends the process at once with one line, "stopped by SIGINT <what>", not
    a KeyboardInterrupt traceback (vae-eval: nothing to save part way); the handlers before are restored."""
    def handle(signum, frame):
        sys.stdout.flush()
        print(f"\nstopped by {signal.Signals(signum).name} {what}", file=sys.__stderr__, flush=True)
        end_now(signum)

    previous = {signum: signal.signal(signum, handle) for signum in STOP_SIGNALS}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
