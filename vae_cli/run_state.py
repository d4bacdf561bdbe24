"""A run folder as a unit: what it holds (nothing, an unfinished run, a finished one), status.json, and
whether a new command may resume it."""
import contextlib
import datetime
import json
import logging
import os
import shutil
import socket
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from vae_cli.checkpoint import START_AFRESH, load_checkpoint, write_json
from vae_cli.config_keys import MOVABLE
from vae_cli.errors import ConfigError
from vae_cli.interrupts import folder_override

log = logging.getLogger(__name__)

try:
    import fcntl
except ImportError:  # Windows: no lock
    fcntl = None

CHECKPOINT, BEST, METRICS, STATUS = "checkpoint.pt", "best.pt", "metrics.json", "status.json"
# What a run writes into its folder besides Hydra's .hydra/ and log file (removed by overwrite=true).
RUN_FILES = (CHECKPOINT, BEST, METRICS, STATUS, "eval.json", "config.yaml", "reconstructions.png",
             "samples.png", "projector_config.pbtxt")
RUN_GLOBS = ("events.out.tfevents.*", "[0-9][0-9][0-9][0-9][0-9]",  # TensorBoard events, projector folders
             "eval-[0-9]*.json")  # vae-eval's reports of earlier settings
# Temporary files of train()'s atomic writes (checkpoint.atomic_write), left by a process killed during one.
TEMPORARY_GLOBS = tuple(f".{name}.*.tmp" for name in (CHECKPOINT, BEST, METRICS, STATUS))

# Keys a resumed run may change: how long it runs and how it reports, never the steps it trains (device and
# eval_batch_size move the validation draws of z, within their standard errors).
RESUMABLE = ("epochs", "max_steps", "device", "log_every", "eval_batch_size", "checkpoint", "early_stopping",
             "threads", "eval", "objective", "fail_fast", "resume", "overwrite", "diagnostics", "num_images")
# Facts train() records in the stored config (what the run really used), not settings.
RECORDED = ("data_source", "device_used", "train_step_used", "threads_used")


def launch_folder(run_dir: Path) -> Path:
    """The folder the run's first vae-train was started in (Hydra's .hydra/hydra.yaml); this process's when
    that is not recorded (a run folder copied without .hydra/) or no longer there (a project moved: its
    relative data paths moved with it)."""
    try:
        folder = Path(str(OmegaConf.load(Path(run_dir) / ".hydra" / "hydra.yaml").hydra.runtime.cwd))
    except Exception:  # noqa: BLE001 - absent or unreadable
        return Path.cwd()
    return folder if folder.is_dir() else Path.cwd()


def data_base(cfg: DictConfig, run_dir: Path) -> Path:
    """The folder cfg's relative data paths are read from: the run's launch folder for resume=RUN (its
    config is the run's, kept as written), else this process's, as for any command."""
    return launch_folder(run_dir) if cfg.get("resume") else Path.cwd()


def with_data_paths_from(cfg: DictConfig, folder: Path) -> DictConfig:
    """cfg with a relative data.root or data.path taken from folder. A run trained with data.root=data read
    it from its launch folder: resumed or evaluated from elsewhere it must too. ~ is the data loaders' to
    expand: a path starting with it is not relative."""
    for key in ("data.root", "data.path"):
        value = OmegaConf.select(cfg, key, default=None)
        if isinstance(value, str) and value and not Path(value).expanduser().is_absolute():
            OmegaConf.update(cfg, key, str(folder / value))
    return cfg


def now() -> str:
    return datetime.datetime.now().astimezone().isoformat(timespec="seconds")


def resume_command(run_dir: Path) -> str:
    """The command that resumes the run in run_dir, to paste into a shell (the folder quoted as need be)."""
    return f"vae-train {folder_override('resume', run_dir)}"


class Status:
    """status.json: what the folder is (running, finished, interrupted, failed), written atomically."""

    def __init__(self, run_dir: Path, **fields):
        self.path = Path(run_dir) / STATUS
        previous = read_status(run_dir) or {}
        self.fields = {"state": "running", "step": 0, "total_steps": None, "epoch": 0, "error": None,
                       "resume_command": resume_command(run_dir), "started_at": previous.get("started_at", now()),
                       "wall_seconds": float(previous.get("wall_seconds", 0.0)), "images_per_sec": None,
                       "threads": None, "objective": None, "pid": os.getpid(), "host": socket.gethostname(),
                       "attempts": int(previous.get("attempts", 0)) + 1} | fields
        self.wall_before = self.fields["wall_seconds"]

    def update(self, wall_seconds: float | None = None, **fields) -> None:
        """Merge fields and write; wall_seconds counts this attempt's seconds on top of earlier attempts'."""
        self.fields.update(fields, updated_at=now())
        if wall_seconds is not None:
            self.fields["wall_seconds"] = round(self.wall_before + wall_seconds, 3)
        write_json(self.path, self.fields)


def read_status(run_dir: Path) -> dict | None:
    path = Path(run_dir) / STATUS
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def settings(cfg: DictConfig | dict) -> dict:
    """The resolved settings of a config, without the recorded facts (plain containers)."""
    plain = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
    return {k: v for k, v in plain.items() if k not in RECORDED}


def differences(stored: dict, current: dict, allowed=RESUMABLE, moved: bool = False) -> list[str]:
    """'key: old -> new' for every setting that differs, outside the allowed (resumable) keys, and with moved
    (a resume= command) outside MOVABLE too."""
    def flat(tree, prefix=""):
        out = {}
        for key, value in tree.items():
            if isinstance(value, dict) and value:
                out.update(flat(value, f"{prefix}{key}."))
            else:
                out[f"{prefix}{key}"] = value
        return out

    old, new = flat(stored), flat(current)
    changed = []
    for key in sorted(set(old) | set(new)):
        before, after = old.get(key, "<absent>"), new.get(key, "<absent>")
        if key.split(".")[0] in allowed or (moved and key in MOVABLE) or before == after:
            continue
        changed.append(f"{key}: {before} -> {after}")
    return changed


def run_files(run_dir: Path) -> list[Path]:
    """The files (and projector folders) an earlier run left in run_dir."""
    found = [run_dir / name for name in RUN_FILES if (run_dir / name).exists()]
    for pattern in RUN_GLOBS:
        found += sorted(run_dir.glob(pattern))
    return found


def remove_temporary_files(run_dir: Path) -> None:
    """The temporary files a vae-train killed during a write left in run_dir (SIGKILL skips their clean-up);
    called with the folder's lock held, so no vae-train is writing them now."""
    for pattern in TEMPORARY_GLOBS:
        for path in run_dir.glob(pattern):
            path.unlink(missing_ok=True)


def remove_run_files(run_dir: Path) -> None:
    for path in run_files(run_dir):
        shutil.rmtree(path) if path.is_dir() else path.unlink()


class FolderInUse(ConfigError):
    """Another process trains in this run folder (run_lock); its files are left as they are."""


@contextlib.contextmanager
def run_lock(run_dir: Path):
    """Hold an exclusive lock on run_dir while a run uses it (created if absent). A second vae-train in the
    same folder (two runs started in the same second share Hydra's default folder; the same command run
    twice) raises FolderInUse instead of mixing its files with the first's. The lock is flock on the
    folder itself: no file is left behind, and the OS releases it however the process ends (a requeued
    Slurm job takes it again). A file system without flock on folders (some NFS) runs without it."""
    run_dir.mkdir(parents=True, exist_ok=True)
    if fcntl is None:
        yield
        return
    folder = os.open(run_dir, os.O_RDONLY)
    try:
        try:
            fcntl.flock(folder, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            status = read_status(run_dir) or {}
            owner = (f" (pid {status['pid']} on {status['host']}, step {status.get('step')} of "
                     f"{status.get('total_steps')})" if status.get("state") == "running" and "pid" in status
                     else "")
            raise FolderInUse(f"{run_dir} is in use by another vae-train{owner}; wait for it to end, or "
                              "choose another folder (hydra.run.dir=...)") from None
        except OSError:
            pass  # no flock on this file system
        yield
    finally:
        os.close(folder)


@dataclass
class Plan:
    """What train() does with a run folder: start afresh, resume from `state`, or report a finished run."""

    action: str  # "fresh" | "resume" | "finished"
    state: dict | None = None  # the last checkpoint, for resume
    metrics: dict | None = None  # for finished
    why: str = ""  # for finished: what keeps the run from more steps where the command asked for them


def plan_run(run_dir: Path, cfg: DictConfig) -> Plan:
    """Decide from the folder's files, reading only: nothing is written or removed here (see apply_plan).

    - no run files: a fresh run;
    - a checkpoint of the same settings (resumable keys aside): resume it; if metrics.json is there too,
      the run is finished, and is reported unless epochs (or max_steps) now asks for more steps;
    - files without a checkpoint (a run that failed or died before its first one): started afresh when
      the settings are the same, or whatever they are when it failed before training began (no
      config.yaml: a bad value, now corrected); a failed run with a checkpoint resumes from it;
    - anything else is another run's: refused, unless overwrite=true.
    """
    run_dir = Path(run_dir)
    found = run_files(run_dir)
    if not found or cfg.get("overwrite"):
        return Plan("fresh")
    if refused_before_training(run_dir):
        return Plan("fresh")  # a bad value: nothing there to keep
    checkpoint = run_dir / CHECKPOINT
    state = load_checkpoint(checkpoint, remedy=START_AFRESH) if checkpoint.is_file() else None
    stored = state["config"] if state is not None else _stored_config(run_dir)
    if stored is not None:  # relative data paths compared as each command read them: from its own folder
        stored = settings(with_data_paths_from(OmegaConf.create(stored), launch_folder(run_dir)))
        current = settings(with_data_paths_from(cfg.copy(), data_base(cfg, run_dir)))
    changed = (differences(stored, current, moved=bool(cfg.get("resume"))) if stored is not None
               else ["(no readable config)"])
    if changed:
        listed = "; ".join(changed[:4]) + ("; ..." if len(changed) > 4 else "")
        # no checkpoint (a run that diverged or died before its first): nothing to resume
        resume = f"resume it as it was with `{resume_command(run_dir)}`, " if state is not None else ""
        raise ConfigError(f"{run_dir} holds another run's files, with other settings ({listed}); {resume}choose "
                          "another folder (hydra.run.dir=...; for a sweep, a new hydra.sweep.dir=...), or start "
                          "afresh there with overwrite=true (deletes its files)")
    if state is None:
        return Plan("fresh")  # a run that failed or died before its first checkpoint
    # a failed run with a checkpoint (a full disk, a divergence) resumes from it: its steps are not thrown away
    metrics_path = run_dir / METRICS
    if metrics_path.is_file():
        try:
            metrics = json.loads(metrics_path.read_text())
        except (OSError, ValueError):
            metrics = None
        if not isinstance(metrics, dict):  # damaged: the run resumes, which computes its figures again
            log.warning("%s is unreadable; the run's figures are computed again from its checkpoint", metrics_path)
        elif state.get("training_done") and not wants_more_steps(state, cfg):
            return Plan("finished", metrics=metrics, why=early_stop_note(state, cfg))
    return Plan("resume", state=state)


def refused_before_training(run_dir: Path) -> bool:
    """Whether run_dir holds only what a command refused before training began left (a bad value): a failed
    status.json, no checkpoint.pt and no config.yaml (train() writes it as training starts). Such a folder
    has nothing to keep: the next command there starts afresh, and records its own error if it fails too."""
    status = read_status(run_dir) or {}
    return (status.get("state") == "failed" and not (run_dir / CHECKPOINT).exists()
            and _stored_config(run_dir) is None)


def steps_asked(state: dict, cfg: DictConfig) -> int:
    """The steps cfg's epochs and max_steps ask of the run whose checkpoint is state."""
    steps = state["steps_per_epoch"] * cfg.epochs
    return steps if cfg.max_steps is None else min(steps, cfg.max_steps)


def wants_more_steps(state: dict, cfg: DictConfig) -> bool:
    """True when cfg's epochs / max_steps reach past where the finished run stopped (extending it), unless
    early stopping ended it and cfg's patience would have ended it there too."""
    return steps_asked(state, cfg) > state["step"] and not still_stopped_early(
        state.get("stopped_early", False), state["loop"]["bad_epochs"], cfg.early_stopping.patience)


def early_stop_note(state: dict, cfg: DictConfig) -> str:
    """Where the command asks for more steps than a run that early stopping ended took: how to get them
    (a user asked for epochs=45 of such a run and was told only that it is finished); else ""."""
    if not state.get("stopped_early") or steps_asked(state, cfg) <= state["step"]:
        return ""
    return (f"; early stopping ended it (early_stopping.patience={cfg.early_stopping.patience}): a larger "
            "patience, or early_stopping.patience=null, continues it")


def still_stopped_early(stopped_early: bool, bad_epochs: int, patience: int | None) -> bool:
    """Whether a run that early stopping ended (after bad_epochs epochs without a better validation ELBO)
    stays ended under patience: a larger one (or none) lets it go on, as it would have gone on unstopped."""
    return stopped_early and patience is not None and bad_epochs >= patience


def _stored_config(run_dir: Path) -> dict | None:
    path = run_dir / "config.yaml"
    try:
        return OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    except Exception:  # noqa: BLE001 - absent or unreadable: the caller refuses with one line
        return None
