"""Reading a multirun folder: one Job per job folder (its overrides, status.json and metrics.json), the keys
the sweep varied, and the jobs ranked by their objective. vae_cli/sweep.py turns them into the summary."""
import json
import math
import os
import re
import socket
from dataclasses import dataclass, field
from pathlib import Path

import yaml

# Order of the states in the summary: finished jobs first (by objective), then the rest.
# A job the sweep's command plans whose folder holds none (sweep.not_started), or whose folder has no
# status.json: stopped or failed before its training began (its vae-train.log says why), or starting now
NOT_STARTED = "not started"
STATE_RANK = {"finished": 0, "running": 1, "interrupted": 2, "killed": 3, "failed": 4, NOT_STARTED: 5}
DEFAULT_OBJECTIVE = ("val/elbo", "maximize")


@dataclass
class Job:
    """One job folder of a sweep: its overrides and what status.json and metrics.json say."""

    name: str  # the folder relative to the sweep folder, e.g. "3"
    folder: Path
    overrides: list[str]
    status: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)
    objective: tuple[str, str] = DEFAULT_OBJECTIVE  # (metric, direction)

    @property
    def state(self) -> str:
        """status.json's state; "killed" where it says running but its process, on this host, is gone
        (SIGKILL, out of memory): it resumes from its last checkpoint like an interrupted one."""
        state = self.status.get("state") or NOT_STARTED
        return "killed" if state == "running" and process_gone(self.status) else state

    @property
    def value(self) -> float | None:
        """The objective's value: status.json's when it is of the same metric, else the metric in
        metrics.json (a job finished under another objective, re-run by this sweep); None when not finite."""
        stored = self.status.get("objective") or {}
        value = stored.get("value") if stored.get("metric") == self.objective[0] else None
        if value is None:
            value = self.metrics.get(self.objective[0])
        return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None

    def swept(self) -> dict[str, str]:
        """key -> value of each override (`key=value`, `+key=value`, `~key`)."""
        pairs = {}
        for override in self.overrides:
            key, _, value = override.partition("=")
            pairs[key.lstrip("+~")] = value
        return pairs


def process_gone(status: dict) -> bool:
    """True when status.json's pid is on this host and no longer runs (on another host: not known)."""
    pid = status.get("pid")
    if status.get("host") != socket.gethostname() or not isinstance(pid, int):
        return False
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return True
    except PermissionError:  # another user's process: it exists
        return False
    return False


def read_json(path: Path) -> dict:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):  # absent, or being replaced by a running job
        return {}
    return value if isinstance(value, dict) else {}


def objective_of(folder: Path, status: dict) -> tuple[str, str]:
    """(metric, direction): status.json's, else the job's composed config's `objective`, else val/elbo."""
    given = status.get("objective") or {}
    if not given.get("metric"):
        try:
            config = yaml.safe_load((folder / ".hydra" / "config.yaml").read_text()) or {}
        except (OSError, yaml.YAMLError):
            config = {}
        given = config.get("objective") if isinstance(config.get("objective"), dict) else {}
    return given.get("metric") or DEFAULT_OBJECTIVE[0], given.get("direction") or DEFAULT_OBJECTIVE[1]


def natural(name: str) -> tuple:
    """Sort key putting job 10 after job 9."""
    return tuple((0, int(part), "") if part.isdigit() else (1, 0, part) for part in Path(name).parts)


def find_jobs(sweep_dir: Path, objective: tuple[str, str] | None = None) -> list[Job]:
    """Every job folder (one holding .hydra/overrides.yaml) under sweep_dir, in job order, each ranked by
    objective (metric, direction) when given, else by its own (objective_of)."""
    jobs = []
    for overrides_file in sweep_dir.rglob(".hydra/overrides.yaml"):
        folder = overrides_file.parent.parent
        if folder == sweep_dir or ".submitit" in folder.parts or single_run(folder):
            continue
        try:
            overrides = [str(o) for o in yaml.safe_load(overrides_file.read_text()) or []]
        except (OSError, yaml.YAMLError):
            overrides = []
        status = read_json(folder / "status.json")
        jobs.append(Job(str(folder.relative_to(sweep_dir)), folder, overrides, status,
                        read_json(folder / "metrics.json"), objective or objective_of(folder, status)))
    return sorted(jobs, key=lambda job: natural(job.name))


def single_run(folder: Path) -> bool:
    """Whether folder is a run of vae-train without -m (Hydra's record says mode RUN) outside a sweep's
    folder (none holds multirun.yaml above it: a sweep job re-run as a single run into its folder stays the
    sweep's), not a sweep's job: vae-sweep on outputs/ ranked such unrelated runs as one sweep (a user review)."""
    if (folder.parent / "multirun.yaml").is_file():
        return False
    try:
        return re.search(r"^  mode: RUN$", (folder / ".hydra" / "hydra.yaml").read_text(), re.MULTILINE) is not None
    except OSError:  # no record (a job folder written by hand): a job
        return False


def swept_keys(jobs: list[Job], declared: list[str] = ()) -> list[str]:
    """The keys the sweep's commands declared as swept (declared: from multirun.yaml), then the override keys
    whose value differs between jobs; every override key when there are neither. Declared keys keep their
    column when the jobs there share a value (a sweep stopped early), and a lone job shows only them."""
    values: dict[str, set] = {}
    for job in jobs:
        for key, value in job.swept().items():
            values.setdefault(key, set()).add(value)
    differing = [key for key, seen in values.items()
                 if len(seen) > 1 or any(key not in job.swept() for job in jobs)]
    keys = [key for key in declared if key in values] + [key for key in differing if key not in declared]
    return keys or list(values)


def ranked(jobs: list[Job]) -> list[Job]:
    """Finished jobs by objective (best first, by its direction), then running, interrupted, failed."""
    def key(job: Job):
        value = job.value
        sign = -1 if job.objective[1] == "maximize" else 1
        rank = STATE_RANK.get(job.state, len(STATE_RANK))
        return (rank, value is None, sign * value if value is not None else 0.0, natural(job.name))
    return sorted(jobs, key=key)
