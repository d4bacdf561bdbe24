"""The sweep summary: one row per job of a multirun folder (summary.csv, summary.md, summary.png), written
by the Hydra callback SweepSummary at the end of every multirun and by `vae-sweep SWEEP_FOLDER` on demand."""
import argparse
import contextlib
import csv
import io
import itertools
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import yaml
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from vae_cli import interrupts
from vae_cli.sweep_jobs import (DEFAULT_OBJECTIVE, NOT_STARTED, Job, find_jobs, natural, ranked, single_run,
                                swept_keys)

# The figures of metrics.json shown for every job (each with its _stderr where the run wrote one).
FIGURES = ("val/elbo", "test/elbo", "test/L_K")


def row(job: Job, keys: list[str]) -> dict:
    """The job's summary row: overrides, swept values, state, objective, figures, steps, wall time."""
    swept = job.swept()
    out = {"job": job.name, "overrides": " ".join(job.overrides)}
    out.update({key: swept.get(key, "") for key in keys})
    out.update(state=job.state, objective=job.value, objective_metric=job.objective[0],
               direction=job.objective[1])
    for name in FIGURES:
        out[name] = job.metrics.get(name)
        out[f"{name}_stderr"] = job.metrics.get(f"{name}_stderr")
    out.update(step=job.status.get("step"), total_steps=job.status.get("total_steps"),
               wall_seconds=job.status.get("wall_seconds"), error=job.status.get("error") or "",
               folder=str(job.folder) if job.folder.is_dir() else "")
    return out


def number(value, digits: int = 2) -> str:
    if value is None or value == "":
        return ""
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def short(value: str) -> str:
    """A swept value for the table: floats to 4 significant digits (an Optuna trial's 0.0070437841...)."""
    number = as_number(value)
    return f"{number:.4g}" if number is not None and "." in value else value


def markdown(rows: list[dict], keys: list[str], title: str) -> str:
    """summary.md: the table people read (objective with its stderr, figures, steps, wall time)."""
    head = ["job", *keys, "state", "objective", *FIGURES, "steps", "wall (s)", "folder"]
    lines = [f"# {title}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        figures = [number(r[n]) + (f" ± {number(r[n + '_stderr'])}" if r[n + "_stderr"] is not None else "")
                   for n in FIGURES]
        state = r["state"] + (f": {r['error']}" if r["error"] else "")
        # none for a job refused before training (no total steps planned: it showed "0/")
        steps = f"{number(r['step'])}/{number(r['total_steps'])}" if r["total_steps"] is not None else ""
        cells = [r["job"], *(short(r[k]) for k in keys), state, number(r["objective"]), *figures, steps,
                 number(r["wall_seconds"], 1), r["folder"]]
        lines.append("| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines) + "\n"


def write_atomic(path: Path, text: str) -> None:
    """Readers (a vae-sweep on a running sweep, an editor) never see half a file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


@dataclass
class Summary:
    """What summarize() found and wrote: the jobs best first, the swept keys, the files."""

    sweep_dir: Path
    jobs: list[Job]
    keys: list[str]
    files: list[Path]

    @property
    def best(self) -> Job | None:
        return self.jobs[0] if self.jobs and self.jobs[0].state == "finished" and self.jobs[0].value is not None \
            else None

    def failed(self) -> list[Job]:
        return [job for job in self.jobs if job.state == "failed"]

    def report(self, planned: int | None = None) -> str:
        """The lines for the terminal: where the summary is, the count of each state, the best job; planned:
        the jobs the sweep's command asks for (planned_jobs), to count those it has not started."""
        counts: dict[str, int] = {}
        for job in self.jobs:
            counts[job.state] = counts.get(job.state, 0) + 1
        if planned is not None and planned > len(self.jobs):  # a sweep stopped before its last job started
            counts["not started"] = planned - len(self.jobs)
        total = sum(counts.values())
        states = ", ".join(f"{n} {state}" for state, n in counts.items())  # in the table's order
        count = f"{total} job{'' if total == 1 else 's'}: {states}" if self.jobs else "no job started"
        lines = [f"sweep summary: {self.files[1] if len(self.files) > 1 else self.sweep_dir} ({count})"]
        best = self.best
        if best is not None:
            metric, direction = best.objective
            swept = best.swept()  # its values of the table's keys (its other overrides are every job's)
            named = " ".join(f"{key}={swept[key]}" for key in self.keys if key in swept)
            lines.append(f"best: job {best.name} ({named or 'no overrides'}): "
                         f"{metric} = {best.value:.4f} ({direction}), {best.folder}")
        return "\n".join(lines)


def command_objective(config) -> tuple[str, str] | None:
    """(metric, direction) of a sweep command's config (its `objective`), or None."""
    metric = OmegaConf.select(config, "objective.metric", default=None)
    direction = OmegaConf.select(config, "objective.direction", default=None)
    return (str(metric), str(direction)) if metric and direction else None


def summarize(sweep_dir: str | Path, plot: bool = True, objective: tuple[str, str] | None = None) -> Summary:
    """Read every job folder of sweep_dir; write summary.csv, summary.md and (plot=True) summary.png.

    Every job is ranked by one objective (metric, direction): the one given, else that of the command
    that last ran there (the newest multirun.yaml: the sweep folder's, or in an Optuna study's folder
    its commands'), else each job's own. So a sweep re-run with another objective ranks its earlier
    command's finished jobs by the new one too, from their metrics.json."""
    sweep_dir = Path(sweep_dir)
    written = sorted([*sweep_dir.glob("multirun.yaml"), *sweep_dir.glob("*/multirun.yaml")],
                     key=lambda path: path.stat().st_mtime_ns)  # its commands', oldest first
    try:
        command = OmegaConf.load(written[-1]) if written else None
    except Exception:  # noqa: BLE001 - damaged: the jobs' own objectives, and no planned jobs
        command = None
    if objective is None and command is not None:
        objective = command_objective(command)
    jobs = find_jobs(sweep_dir, objective)
    jobs = ranked(jobs + not_started(sweep_dir, command, jobs, objective))
    keys = swept_keys(jobs, declared_keys(written))
    rows = [row(job, keys) for job in jobs]
    metric, direction = jobs[0].objective if jobs else DEFAULT_OBJECTIVE
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]) if rows else ["job"], lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    files = [sweep_dir / "summary.csv", sweep_dir / "summary.md"]
    write_atomic(files[0], buffer.getvalue())
    title = f"Sweep {sweep_dir}: objective {metric} ({direction}), best first"
    write_atomic(files[1], markdown(rows, keys, title))
    summary = Summary(sweep_dir, jobs, keys, files)
    if plot and any(job.value is not None for job in jobs):
        files.append(plot_objective(summary, sweep_dir / "summary.png"))
    return summary


def not_started(sweep_dir: Path, command, jobs: list[Job], objective: tuple[str, str] | None) -> list[Job]:
    """A row for each job the sweep's last command (command: its multirun.yaml) plans in sweep_dir (a grid of
    the basic sweeper, in job folders named by number, Hydra's default) whose folder holds no job yet."""
    hydra_node = OmegaConf.select(command, "hydra") if command is not None else None
    if not isinstance(hydra_node, DictConfig) or not isinstance(hydra_node.get("sweep"), DictConfig):
        return []
    planned = planned_overrides(hydra_node)
    if planned is None or OmegaConf.to_container(hydra_node.sweep).get("subdir") != "${hydra.job.num}":
        return []
    names = {job.name for job in jobs}
    return [Job(str(num), sweep_dir / str(num), overrides, {"state": NOT_STARTED}, {}, objective or DEFAULT_OBJECTIVE)
            for num, overrides in enumerate(planned) if str(num) not in names]


def declared_keys(written: list[Path]) -> list[str]:
    """The keys the sweep's commands swept (their multirun.yaml files, written: the sweeping overrides of the
    command line, and an Optuna study's searched params), in order; none from a file that is unreadable."""
    keys: list[str] = []
    for path in written:
        try:
            hydra_node = OmegaConf.load(path).hydra
            overrides = OverridesParser.create().parse_overrides([str(o) for o in hydra_node.overrides.task])
            params = OmegaConf.select(hydra_node, "sweeper.params") or {}
        except Exception:  # noqa: BLE001 - damaged or foreign: the jobs' own overrides decide
            continue
        found = [o.key_or_group for o in overrides if o.is_sweep_override()] + [str(key) for key in params]
        keys += [key for key in found if key not in keys]
    return keys


def as_number(value: str) -> float | None:
    """A swept value as a number (1e-3, 20), or None (relu, [400], true)."""
    try:
        parsed = yaml.safe_load(value)
    except yaml.YAMLError:
        return None
    ok = isinstance(parsed, (int, float)) and not isinstance(parsed, bool) and math.isfinite(parsed)
    return float(parsed) if ok else None


def plot_objective(summary: Summary, path: Path) -> Path:
    """summary.png: the objective (with its stderr) against each swept key, one panel a key; the best
    job in red. Numbers on a numeric axis (logarithmic when they span 10x or more), others as categories."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # imported only when a figure is drawn
    from matplotlib.figure import Figure

    done = [job for job in summary.jobs if job.value is not None]
    keys = summary.keys or ["job"]
    figure = Figure(figsize=(4.2 * len(keys), 3.4), layout="constrained")
    FigureCanvasAgg(figure)
    metric, direction = done[0].objective
    for i, key in enumerate(keys):
        axes = figure.add_subplot(1, len(keys), i + 1)
        labels = [job.swept().get(key, "") if key != "job" else job.name for job in done]
        numbers = [as_number(label) for label in labels]
        if all(n is not None for n in numbers):
            x = numbers
            if min(x) > 0 and max(x) >= 10 * min(x):
                axes.set_xscale("log")
        else:
            categories = sorted(set(labels), key=natural)
            x = [categories.index(label) for label in labels]
            axes.set_xticks(range(len(categories)), categories, rotation=30, ha="right")
        y = [job.value for job in done]
        err = [job.metrics.get(f"{metric}_stderr") or 0.0 for job in done]
        axes.errorbar(x, y, yerr=err, fmt="o", color="tab:blue", capsize=2)
        axes.plot(x[0], y[0], "o", color="tab:red", zorder=3, label=f"best: job {done[0].name}")
        axes.set_xlabel(key)
        axes.set_ylabel(f"{metric} ({direction})" if i == 0 else "")
        axes.grid(alpha=0.3)
    figure.axes[0].legend(loc="best", fontsize="small")
    figure.suptitle(f"{summary.sweep_dir}: {len(done)} jobs with an objective")
    figure.savefig(path, dpi=100)
    return path


def failure_line(failed: list[Job], total: int, refused: list[dict] = (), sweep_dir: Path | None = None) -> str:
    """One line naming the failed jobs (and the refused ones, recorded in sweep_dir), their overrides and
    errors, in the order of their numbers; jobs whose errors are the same but for their own folder (a re-run's
    refusals, a bad value of every job) share one entry, JOB_FOLDER standing for each one's folder. A refused
    job's folder is left as it was, so the summary printed before this line shows the run that folder holds.
    total: the jobs this command ran (a re-run skips the finished ones), or all of the sweep's (vae-sweep)."""
    entries = [(job.name, job.overrides, job.status.get("error") or job.state, job.folder) for job in failed]
    entries += [(str(r["job"]), r["overrides"], r["error"], sweep_dir / str(r["job"]) if sweep_dir else None)
                for r in refused]
    entries.sort(key=lambda entry: (0, int(entry[0]), "") if entry[0].isdigit() else (1, 0, entry[0]))  # by number
    groups: dict[str, list] = {}
    for name, overrides, error, folder in entries:
        general = error
        # the absolute path first: a relative one (hydra.sweep.dir=sweep) is part of it
        for path in sorted({str(folder), str(folder.resolve())}, key=len, reverse=True) if folder is not None else ():
            general = general.replace(path, "JOB_FOLDER")
        groups.setdefault(general, []).append((name, overrides, error, folder))
    named = []
    for general, members in groups.items():
        if len(members) == 1:
            name, overrides, error, _ = members[0]
            named.append(f"job {name} ({' '.join(overrides)}): {error}")
        else:
            legend = f" (JOB_FOLDER: {members[0][3].resolve().parent}/<job>)" if "JOB_FOLDER" in general else ""
            named.append(f"jobs {', '.join(m[0] for m in members)}{legend}: {general}")
    what = "were refused" if not failed else "failed or were refused" if refused else "failed"
    kept = " (each refused job's folder is left as it was: the summary shows the run it holds)" if refused else ""
    return f"error: {len(entries)} of {total} jobs {what}{kept}: {'; '.join(named)}"


REFUSED = ".refused-job-*.json"  # in the sweep folder: jobs refused without writing into their folders


def record_refusal(sweep_dir: Path, job: int, overrides: list[str], error: str) -> None:
    """A job refused with its folder left alone (another run's files, or another vae-train in it): nothing
    in that folder changes, so the summary would not count it; this file tells it (SweepSummary)."""
    sweep_dir.mkdir(parents=True, exist_ok=True)
    record = {"job": job, "overrides": overrides, "error": error}
    write_atomic(sweep_dir / REFUSED.replace("*", str(job)), yaml.safe_dump(record))


# The sweep folder as this command found it (SweepSummary.on_multirun_start), so that a command refused
# before its first job (a typo in a swept key) can leave it so: undo_sweep_folder.
FOUND: dict = {}


def planned_jobs(hydra_node) -> int | None:
    """How many jobs Hydra's basic sweeper makes of the command's overrides (planned_overrides)."""
    planned = planned_overrides(hydra_node)
    return None if planned is None else len(planned)


def planned_overrides(hydra_node) -> list[list[str]] | None:
    """The overrides of each job, in job order, that Hydra's basic sweeper makes of the command's (and of
    hydra.sweeper.params, which come first), as its split_arguments does: one list per key (a later value
    of a key replaces an earlier one in its place), their product. None for another sweeper (an Optuna study
    asks for its trials a batch at a time) or a sweep whose jobs are not known before it runs (a glob)."""
    if "BasicSweeper" not in str(OmegaConf.select(hydra_node, "sweeper._target_", default="")):
        return None
    choices: dict[str, list[str]] = {}
    try:  # the overrides as given (Hydra reads them unresolved: `${hydra:runtime.cwd}` has no resolver here)
        params = OmegaConf.to_container(hydra_node.sweeper, resolve=False).get("params") or {}
        task = OmegaConf.to_container(hydra_node.overrides, resolve=False)["task"]
        for override in OverridesParser.create().parse_overrides([*(f"{k}={v}" for k, v in params.items()), *task]):
            key = override.get_key_element()
            if override.is_sweep_override() and getattr(override.value(), "shuffle", False):
                return None  # shuffle(...): an order drawn anew each time
            choices[key] = ([f"{key}={value}" for value in override.sweep_string_iterator()]
                            if override.is_sweep_override() else [f"{key}={override.get_value_element_as_str()}"])
    except Exception:  # noqa: BLE001 - HydraException: a glob needs the config groups' options, an interval is
        return None  # not a grid; others: a multirun.yaml of another layout
    return [list(job) for job in itertools.product(*choices.values())]


def note_sweep_folder(sweep_dir: Path, hydra_node) -> None:
    folder = sweep_dir.absolute()
    top = folder  # the topmost folder this command will create for it (none when it exists)
    while not top.parent.exists():
        top = top.parent
    earlier = folder / "multirun.yaml"
    FOUND.clear()
    FOUND.update(folder=folder, created=None if folder.exists() else top,
                 multirun=earlier.read_bytes() if earlier.is_file() else None, hydra=hydra_node, shown=False,
                 since=time.time(), planned=planned_jobs(hydra_node))


def jobs_started() -> bool:
    """Whether a job of this command wrote its status.json (in the sweep folder this command noted)."""
    if not FOUND or not FOUND["folder"].is_dir():
        return False
    return any(path.stat().st_mtime >= FOUND["since"] for path in FOUND["folder"].rglob("status.json"))


def show_ended_sweep(fail_fast: bool = False) -> None:
    """A sweep ended in its launching process without Hydra's end-of-multirun callback (a stop while its
    jobs' processes started; with fail_fast, a job ending a parallel sweep, joblib then ending the other
    jobs): its summary so far, unless the callback showed it, and how to continue it."""
    if not FOUND or FOUND["shown"]:
        return
    FOUND["shown"] = True
    folder = summary_dir(FOUND["hydra"])
    summary = summarize(folder, objective=FOUND.get("objective")) if folder.is_dir() else None
    if summary is not None:
        print(summary.report(FOUND["planned"]), flush=True)
    if fail_fast:
        others = ("trials with it (failed in the study)" if interrupts.optuna_study(FOUND["hydra"]) is not None
                  else "jobs with it (each goes on from its last checkpoint, if it wrote one)")
        # this command's failed job (an earlier command's may have a lower number)
        failed = [job for job in summary.failed() if (job.folder / "status.json").is_file()
                  and (job.folder / "status.json").stat().st_mtime >= FOUND["since"]] if summary is not None else []
        line = (f"the sweep stopped at a failure (fail_fast=true), and its other running {others}; "
                f"{interrupts.rerun_command(FOUND['hydra'], failed[0].folder if failed else None)}")
    else:
        line = interrupts.sweep_rerun(FOUND["hydra"])
    print(line, file=sys.stderr, flush=True)


def undo_sweep_folder() -> None:
    """After a command error before any job started (a typo in a swept key), Hydra has written its
    multirun.yaml for that command: a folder this command created, holding only that, is removed with the
    folders created for it (no empty sweep left to be taken for a real one); in a folder that was there
    (a re-run into hydra.sweep.dir), the earlier multirun.yaml is put back, or the new one removed. A Slurm
    submission that sbatch refused leaves submitit's files for it at the top of .submitit/: those this
    command wrote go too, and .submitit/ if left empty, unless it submitted a job (a folder
    .submitit/<job id>/ made since it started, whose files say why the job ended)."""
    if not FOUND or not FOUND["folder"].is_dir():  # not a folder: Hydra wrote nothing there
        return
    folder, created, earlier = FOUND["folder"], FOUND["created"], FOUND["multirun"]
    submitit = folder / ".submitit"
    ours = [path for path in submitit.iterdir() if path.stat().st_mtime >= FOUND["since"]] if submitit.is_dir() else []
    if not any(path.is_dir() for path in ours):  # nothing submitted
        for path in ours:
            path.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            submitit.rmdir()  # only when empty
    if created is None:
        if earlier is not None:
            write_atomic(folder / "multirun.yaml", earlier.decode())
        else:
            (folder / "multirun.yaml").unlink(missing_ok=True)
        return
    if not folder.is_dir() or {path.name for path in folder.iterdir()} - {"multirun.yaml"}:
        return
    (folder / "multirun.yaml").unlink(missing_ok=True)
    while True:
        try:
            folder.rmdir()  # only when empty
        except OSError:
            return
        if folder == created:
            return
        folder = folder.parent


def refusals(sweep_dir: Path, before: dict | None = None) -> list[dict]:
    """The refused jobs recorded in sweep_dir; with before (stamps of the files as a command found them), only
    those that command recorded."""
    paths = [path for path in sweep_dir.glob(REFUSED)
             if before is None or before.get(path) != path.stat().st_mtime_ns]
    return sorted((yaml.safe_load(path.read_text()) for path in paths), key=lambda r: r["job"])


class SweepSummary(Callback):
    """Hydra callback (configs/train.yaml, hydra.callbacks): at the end of a multirun, write the summary,
    name the best job, and when a job launched by this command failed, print one line naming it and exit
    with status 1 (the other jobs ran to their end; fail_fast=true stops the sweep at the first instead)."""

    def __init__(self, plot: bool = True) -> None:
        self.plot = plot
        self.before: dict[Path, float] = {}
        self.refusals_before: dict[Path, int] = {}

    @staticmethod
    def _stamps(sweep_dir: Path) -> dict[Path, float]:
        # A job this command ran has a new or rewritten status.json (vae-train writes it as it starts,
        # runs and ends) or .hydra/overrides.yaml; an earlier command's jobs (a re-run's finished jobs,
        # a continued study's trials) keep theirs.
        if not sweep_dir.is_dir():
            return {}
        files = [*sweep_dir.rglob(".hydra/overrides.yaml"), *sweep_dir.rglob("status.json")]
        return {path: path.stat().st_mtime_ns for path in files}

    def _launched(self, sweep_dir: Path) -> set[Path]:
        return {path.parent.parent if path.name == "overrides.yaml" else path.parent
                for path, stamp in self._stamps(sweep_dir).items() if self.before.get(path) != stamp}

    def on_multirun_start(self, config, **kwargs) -> None:
        sweep_dir = Path(str(config.hydra.sweep.dir))
        self.before = self._stamps(summary_dir(config.hydra))
        note_sweep_folder(sweep_dir, config.hydra)
        FOUND["fail_fast"] = config.get("fail_fast") is True
        FOUND["objective"] = command_objective(config)
        # an earlier command's refusals: left in place until this command has run its jobs
        self.refusals_before = {path: path.stat().st_mtime_ns for path in sweep_dir.glob(REFUSED)}
        if study_dir(config.hydra) is not None:
            study_dir(config.hydra).mkdir(parents=True, exist_ok=True)  # SQLite creates the file, not its folder

    def on_multirun_end(self, config, **kwargs) -> None:
        # vae-train holds stderr back until a job starts (cli.HeldStderr); with a launcher whose jobs run in
        # other processes this process never starts one: released here, so that the failure line below
        # is printed as it is, not taken for a command-line error ("error: error: ...", status 2)
        getattr(sys.stderr, "release", lambda: None)()
        # An Optuna study in SQLite: the summary covers its folder, every command's trials.
        folder = summary_dir(config.hydra)
        if not folder.is_dir():
            return
        launched = self._launched(folder)
        sweep_dir = Path(str(config.hydra.sweep.dir))
        refused = refusals(sweep_dir, self.refusals_before)
        # a job refused as in use by the vae-train still running it (an earlier command's job, on Slurm) had its
        # status.json rewritten by that process meanwhile: it is the refusal, not a job this command ran
        in_use = {sweep_dir / str(r["job"]) for r in refused}
        restore = bool(refused) and not launched - in_use and FOUND.get("multirun") is not None
        if restore:
            # every job refused: the folder is still the earlier command's sweep, which its multirun.yaml tells
            # (the summary's not-started jobs, the command that continues it); Hydra had replaced it
            write_atomic(sweep_dir / "multirun.yaml", FOUND["multirun"].decode())
        summary = summarize(folder, plot=self.plot, objective=command_objective(config))
        print(summary.report(None if restore else FOUND.get("planned")), flush=True)
        FOUND["shown"] = True
        if interrupts.FORWARDED:  # a stopped parallel sweep: each job said how it stopped; cli.main ends it
            print(interrupts.sweep_rerun(config.hydra), file=sys.stderr, flush=True)
            return
        ran = [job for job in summary.jobs if job.folder in launched and job.folder not in in_use]
        failed = [job for job in ran if job.state != "finished"]
        for path, stamp in self.refusals_before.items():  # an earlier command's, not recorded again
            if path.is_file() and path.stat().st_mtime_ns == stamp:
                path.unlink()
        if failed or refused:
            print(failure_line(failed, len(ran) + len(refused), refused, sweep_dir), file=sys.stderr, flush=True)
            sys.exit(1)  # SystemExit passes Hydra's error reporting: no traceback


def study_dir(hydra_node) -> Path | None:
    """The folder of the sweeper's SQLite storage (sqlite:///PATH), for an Optuna study; else None. hydra_node:
    the config's `hydra` node (HydraConfig.get() in a job)."""
    storage = OmegaConf.select(hydra_node, "sweeper.storage", default=None)
    if not isinstance(storage, str) or not storage.startswith("sqlite:///"):
        return None
    return Path(storage[len("sqlite:///"):]).absolute().parent  # relative: to the launch folder, the cwd


def summary_dir(hydra_node) -> Path:
    """The folder a sweep's summary covers: an Optuna study's folder (every command's trials, each command's
    jobs in a folder beside its database), unless hydra.sweep.dir puts this command's jobs elsewhere; then,
    as for a grid, the sweep folder."""
    sweep_dir = Path(str(hydra_node.sweep.dir))
    study = study_dir(hydra_node)
    if study is not None and sweep_dir.resolve().is_relative_to(study.resolve()):
        return study
    return sweep_dir


def main(argv: list[str] | None = None) -> None:
    """vae-sweep SWEEP_FOLDER: write and show the summary of a sweep, finished, running or run elsewhere."""
    parser = argparse.ArgumentParser(
        prog="vae-sweep", description="Summarize a vae-train multirun folder: summary.csv, summary.md and "
        "summary.png (objective against each swept key), best job first. Exit status 1 when a job failed.")
    parser.add_argument("sweep_dir", metavar="SWEEP_FOLDER", type=Path,
                        help="the multirun folder, e.g. outputs/multirun/2026-12-01/10-00-00")
    parser.add_argument("--no-plot", action="store_true", help="skip summary.png (no matplotlib import)")
    args = parser.parse_args(argv)
    if not args.sweep_dir.is_dir():
        print(f"error: {args.sweep_dir} is not a folder; give a sweep folder, e.g. outputs/multirun/<date>/<time>",
              file=sys.stderr)
        sys.exit(2)
    # refused before anything is written there (a job's own folder was given summary files)
    if (args.sweep_dir / ".hydra" / "overrides.yaml").is_file():
        if single_run(args.sweep_dir):  # its parent is no sweep either
            print(f"error: {args.sweep_dir} is a single run's folder (vae-train without -m), not a sweep's: its "
                  "figures are in its metrics.json; give vae-sweep the folder vae-train -m printed", file=sys.stderr)
        else:
            print(f"error: {args.sweep_dir} is one job's folder; give the sweep folder that holds it: "
                  f"{args.sweep_dir.resolve().parent}", file=sys.stderr)
        sys.exit(2)
    if not find_jobs(args.sweep_dir):
        print(f"error: {args.sweep_dir} holds no sweep's job folders (none has .hydra/overrides.yaml of a "
              "vae-train -m job); give the sweep folder that vae-train -m printed", file=sys.stderr)
        sys.exit(2)
    sweep_dir = args.sweep_dir.resolve()  # the paths vae-train -m prints
    summary = summarize(sweep_dir, plot=not args.no_plot)
    hydra_node = command_node(sweep_dir)
    print(summary.report(planned_jobs(hydra_node) if hydra_node is not None else None))
    states, failed = {job.state for job in summary.jobs}, summary.failed()
    if hydra_node is not None and states & {"interrupted", "killed", NOT_STARTED} and "running" not in states:
        # a stopped sweep (fail_fast's too), as its own last line said; or one still launching its jobs (the
        # next one loading, Slurm's queue), which this process cannot tell from here
        on_slurm = interrupts.launcher_kind(hydra_node) == "slurm"
        print(f"if the sweep's command has ended (its jobs too{': squeue' if on_slurm else ''}): "
              + interrupts.rerun_command(hydra_node, failed[0].folder if failed else None))
    if failed:
        print(failure_line(failed, len(summary.jobs), sweep_dir=sweep_dir), file=sys.stderr)
        sys.exit(1)


def command_node(sweep_dir: Path):
    """The `hydra` node of the command that last ran in sweep_dir (its multirun.yaml, written by Hydra), its
    sweep.dir set to sweep_dir (a folder moved since); None when absent, damaged or of another layout."""
    try:
        hydra_node = OmegaConf.load(sweep_dir / "multirun.yaml").hydra
        hydra_node.sweep.dir = str(sweep_dir)
        hydra_node.overrides.task  # noqa: B018 - the layout the callers read
        return hydra_node
    except Exception:  # noqa: BLE001 - the jobs found are all there is to say
        return None


if __name__ == "__main__":  # python -m vae_cli.sweep: vae-sweep, run from the imported module (its one copy)
    from vae_cli.sweep import main as command

    command()
