"""The sweep summary (vae_cli/sweep.py) on job folders written as vae-train documents them: .hydra/
overrides.yaml, status.json, metrics.json; the vae-sweep command and the SweepSummary callback."""
import csv
import json
import os
import shutil
import shlex
import socket
import string
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

from conftest import run_cli
from services import free_port

from vae_cli.sweep import SweepSummary, planned_jobs, summarize


def make_job(sweep, name, overrides, state, value=None, direction="maximize", error=None, step=40):
    """A job folder as vae-train leaves it (metrics.json only when finished)."""
    folder = sweep / name
    (folder / ".hydra").mkdir(parents=True, exist_ok=True)
    (folder / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    status = {"state": state, "step": step, "total_steps": 40, "epoch": 2, "error": error,
              "wall_seconds": 3.5, "objective": {"metric": "val/elbo", "direction": direction, "value": value}}
    (folder / "status.json").write_text(json.dumps(status))
    if state == "finished":
        metrics = {"val/elbo": value, "val/elbo_stderr": 0.5, "test/elbo": value - 1.0, "test/elbo_stderr": 0.6,
                   "test/L_K": value + 2.0, "test/L_K_stderr": 0.7, "step": step}
        (folder / "metrics.json").write_text(json.dumps(metrics))
    return folder


@pytest.fixture
def sweep(tmp_path):
    """Five jobs over beta and lr: three finished, one failed, one still running."""
    root = tmp_path / "sweep"
    make_job(root, "0", ["beta=0.5", "optimizer.lr=0.001"], "finished", -150.25)
    make_job(root, "1", ["beta=1", "optimizer.lr=0.01"], "finished", -140.5)
    make_job(root, "2", ["beta=-1", "optimizer.lr=0.001"], "failed",
             error="beta=-1 is not accepted: the KL weight must be >= 0")
    make_job(root, "3", ["beta=2", "optimizer.lr=0.0001"], "running", step=12)
    make_job(root, "10", ["beta=4", "optimizer.lr=0.001"], "finished", -160.0)
    return root


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_summary_rows_sorted_by_objective_failed_and_unfinished_last(sweep):
    summary = summarize(sweep)
    rows = read_csv(sweep / "summary.csv")
    assert [r["job"] for r in rows] == ["1", "0", "10", "3", "2"]
    assert [r["state"] for r in rows] == ["finished", "finished", "finished", "running", "failed"]
    assert [float(r["objective"]) for r in rows[:3]] == [-140.5, -150.25, -160.0]
    best = rows[0]
    assert (best["beta"], best["optimizer.lr"], best["overrides"]) == ("1", "0.01", "beta=1 optimizer.lr=0.01")
    assert float(best["test/elbo"]) == -141.5 and float(best["test/L_K_stderr"]) == 0.7
    assert (best["step"], best["total_steps"], best["wall_seconds"]) == ("40", "40", "3.5")
    assert rows[4]["error"].startswith("beta=-1 is not accepted")
    assert summary.best.name == "1"
    table = (sweep / "summary.md").read_text()
    lines = [line for line in table.splitlines() if line.startswith("| ")]
    assert lines[0].startswith("| job | beta | optimizer.lr | state | objective |")
    assert lines[1].startswith("| 1 | 1 | 0.01 | finished | -140.50 | -140.50 ± 0.50 | -141.50 ± 0.60 |")
    assert "failed: beta=-1 is not accepted" in lines[5]
    png = (sweep / "summary.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000


def test_minimize_puts_the_smallest_first_and_unswept_keys_are_no_columns(tmp_path):
    for i, value in enumerate([3.0, 1.0, 2.0]):
        make_job(tmp_path, str(i), [f"seed={i}", "debug=smoke"], "finished", value, direction="minimize")
    summarize(tmp_path, plot=False)
    rows = read_csv(tmp_path / "summary.csv")
    assert [r["job"] for r in rows] == ["1", "2", "0"]
    assert "seed" in rows[0] and "debug" not in rows[0]  # debug=smoke is the same in every job
    assert not (tmp_path / "summary.png").exists()


def test_every_job_is_ranked_by_the_objective_of_the_command_that_last_ran(tmp_path):
    """A re-run with objective.metric=val/kl ranks the earlier command's finished jobs (status.json: val/elbo)
    by val/kl from their metrics.json, as the objective given to summarize() does."""
    for name, elbo, kl in (("0", -150.0, 9.0), ("1", -140.0, 30.0), ("2", -160.0, 3.0)):
        folder = make_job(tmp_path, name, [f"beta={name}"], "finished", elbo)
        metrics = json.loads((folder / "metrics.json").read_text()) | {"val/kl": kl}
        (folder / "metrics.json").write_text(json.dumps(metrics))
    assert [job.name for job in summarize(tmp_path, plot=False).jobs] == ["1", "0", "2"]  # val/elbo
    (tmp_path / "multirun.yaml").write_text(yaml.safe_dump({"objective": {"metric": "val/kl",
                                                                          "direction": "minimize"}}))
    summary = summarize(tmp_path, plot=False)
    assert [(job.name, job.value) for job in summary.jobs] == [("2", 3.0), ("0", 9.0), ("1", 30.0)]
    assert "objective val/kl (minimize)" in (tmp_path / "summary.md").read_text()
    summary = summarize(tmp_path, plot=False, objective=("val/kl", "maximize"))
    assert [job.name for job in summary.jobs] == ["1", "0", "2"]
    # an Optuna study's folder: each command's multirun.yaml is in its own folder; the newest one counts
    study = tmp_path / "study"
    for command, (metric, elbo) in enumerate((("val/elbo", -150.0), ("val/recon", -140.0))):
        folder = make_job(study / f"command{command}", "0", [f"beta={command}"], "finished", elbo)
        metrics = json.loads((folder / "metrics.json").read_text()) | {"val/recon": -100.0 - command}
        (folder / "metrics.json").write_text(json.dumps(metrics))
        (study / f"command{command}" / "multirun.yaml").write_text(
            yaml.safe_dump({"objective": {"metric": metric, "direction": "maximize"}}))
        time.sleep(0.01)
    summary = summarize(study, plot=False)
    assert [(job.name, job.value) for job in summary.jobs] == [("command0/0", -100.0), ("command1/0", -101.0)]


def vae_sweep(*args, timeout=120):
    exe = shutil.which("vae-sweep")
    assert exe, "vae-sweep is not on PATH: install the package (pip install -e '.[test]')"
    return subprocess.run([exe, *map(str, args)], capture_output=True, text=True, timeout=timeout)


def test_vae_sweep_names_the_best_job_and_exits_1_naming_the_failed_one(sweep):
    result = vae_sweep(sweep)
    assert result.returncode == 1, result.stderr
    assert "best: job 1 (beta=1 optimizer.lr=0.01): val/elbo = -140.5000 (maximize)" in result.stdout
    assert "5 jobs: 3 finished, 1 running, 1 failed" in result.stdout
    errors = result.stderr.strip().splitlines()
    assert errors == ["error: 1 of 5 jobs failed: job 2 (beta=-1 optimizer.lr=0.001): beta=-1 is not "
                      "accepted: the KL weight must be >= 0"]
    assert len(read_csv(sweep / "summary.csv")) == 5


def test_vae_sweep_of_a_relative_folder_writes_and_prints_absolute_paths(sweep):
    """`vae-sweep grid` printed and wrote relative paths (summary.md's title and folder column), where
    vae-train -m prints absolute ones (a review)."""
    result = subprocess.run([shutil.which("vae-sweep"), sweep.name, "--no-plot"], cwd=sweep.parent,
                            capture_output=True, text=True, timeout=120)
    assert f"sweep summary: {sweep / 'summary.md'} (" in result.stdout and f"{sweep / '1'}" in result.stdout
    assert all(row["folder"].startswith(str(sweep)) for row in read_csv(sweep / "summary.csv"))


def test_vae_sweep_of_a_stopped_sweep_says_how_to_continue_it(tmp_path):
    """As the sweep's own last line did when it stopped: vae-sweep on it later said nothing of how to go on."""
    sweep = tmp_path / "moved"  # a folder moved since: the command names where it is now
    make_job(sweep, "0", ["seed=0"], "finished", -150.0)
    make_job(sweep, "1", ["seed=1"], "interrupted", step=12)
    # stopped as it started (a parallel sweep's job, a review): a folder with its log and no status.json
    (make_job(sweep, "2", ["seed=2"], "interrupted") / "status.json").unlink()
    (sweep / "multirun.yaml").write_text(yaml.safe_dump({"hydra": {
        "sweeper": {"_target_": BASIC_SWEEPER, "params": None}, "sweep": {"dir": "/elsewhere", "subdir": "${hydra.job.num}"},
        "overrides": {"hydra": ["hydra/launcher=parallel", "hydra.mode=MULTIRUN"], "task": ["seed=0,1,2"]}}}))
    result = vae_sweep(sweep, "--no-plot")
    assert result.returncode == 0, result.stderr
    # it cannot tell a stopped sweep from one still launching its jobs (the next loading, Slurm's queue)
    assert result.stdout.strip().splitlines()[-1] == (
        "if the sweep's command has ended (its jobs too): to continue the sweep (finished jobs skipped, "
        f"stopped ones resumed, the rest run), run: vae-train -m seed=0,1,2 hydra/launcher=parallel "
        f"hydra.sweep.dir={sweep}"), result.stdout
    assert "(3 jobs: 1 finished, 1 interrupted, 1 not started)" in result.stdout
    assert [(r["job"], r["state"], r["folder"]) for r in read_csv(sweep / "summary.csv")][2] == (
        "2", "not started", str(sweep / "2"))
    make_job(sweep, "1", ["seed=1"], "finished", -151.0)  # only the job stopped as it started is left to run
    result = vae_sweep(sweep, "--no-plot")
    assert "(3 jobs: 2 finished, 1 not started)" in result.stdout, result.stdout
    assert result.stdout.strip().splitlines()[-1].startswith("if the sweep's command has ended (its jobs too): "
                                                             "to continue the sweep"), result.stdout
    # stopped by fail_fast at a bad value: the line says where the changed value goes, as the sweep's did
    make_job(sweep, "1", ["seed=1"], "failed", error="seed=1 is refused")
    result = vae_sweep(sweep, "--no-plot")
    assert result.returncode == 1 and result.stdout.strip().splitlines()[-1].startswith(
        "if the sweep's command has ended (its jobs too): change the failing value in the sweep's command "
        "and run it again: the failed job's folder takes"), result.stdout
    # Slurm's jobs outlive the command that submitted them: the line says where to look (a local sweep's
    # line named squeue too, a user review)
    command = yaml.safe_load((sweep / "multirun.yaml").read_text())
    command["hydra"]["launcher"] = {"_target_": "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"}
    (sweep / "multirun.yaml").write_text(yaml.safe_dump(command))
    result = vae_sweep(sweep, "--no-plot")
    assert result.stdout.strip().splitlines()[-1].startswith("if the sweep's command has ended (its jobs too: squeue): ")


def test_vae_sweep_counts_the_jobs_its_command_has_not_started(sweep):
    """A stopped 3 x 4 sweep with 5 job folders: `5 jobs`, as if it had no more (multirun.yaml, which Hydra
    writes, holds the command). The summary has a row for each job not started, with its overrides as
    Hydra's basic sweeper makes them (job 4: the second beta with the first lr), where it had none."""
    (sweep / "multirun.yaml").write_text(yaml.safe_dump({"hydra": {
        "sweeper": {"_target_": BASIC_SWEEPER, "params": {"seed": "7"}}, "sweep": {"dir": str(sweep),
                                                                                    "subdir": "${hydra.job.num}"},
        "overrides": {"task": ["beta=0.5,1,2", "optimizer.lr=0.001,0.01,0.0001,0.1", "epochs=2"]}}}))
    result = vae_sweep(sweep, "--no-plot")
    assert "(12 jobs: 3 finished, 1 running, 1 failed, 7 not started)" in result.stdout, result.stdout
    rows = read_csv(sweep / "summary.csv")
    waiting = [(r["job"], r["overrides"], r["beta"], r["optimizer.lr"], r["folder"]) for r in rows
               if r["state"] == "not started"]
    lrs = ["0.001", "0.01", "0.0001", "0.1"]
    assert waiting == [(str(n), f"seed=7 beta={b} optimizer.lr={lr} epochs=2", b, lr, "")
                       for n, (b, lr) in enumerate((b, lr) for b in ["0.5", "1", "2"] for lr in lrs)
                       if n in (4, 5, 6, 7, 8, 9, 11)], waiting
    assert [r["job"] for r in rows[:5]] == ["1", "0", "10", "3", "2"]  # the jobs that ran come first
    (line,) = [line for line in (sweep / "summary.md").read_text().splitlines() if line.startswith("| 11 | 2 | 0.1 |")]
    assert "| not started |" in line


def test_vae_sweep_on_a_running_sweep_exits_0(sweep):
    shutil.rmtree(sweep / "2")
    result = vae_sweep(sweep, "--no-plot")
    assert result.returncode == 0, result.stderr
    assert result.stderr == "" and "best: job 1" in result.stdout
    assert not (sweep / "summary.png").exists()


def test_a_running_job_whose_process_is_gone_is_killed(tmp_path):
    """status.json says running; the pid on this host is gone (SIGKILL, out of memory): killed. A live pid,
    or a pid on another host, stays running."""
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait(timeout=60)
    for name, pid, host in (("0", gone.pid, socket.gethostname()), ("1", os.getpid(), socket.gethostname()),
                            ("2", gone.pid, "another-host")):
        folder = make_job(tmp_path, name, [f"seed={name}"], "running", step=12)
        status = json.loads((folder / "status.json").read_text())
        (folder / "status.json").write_text(json.dumps({**status, "pid": pid, "host": host}))
    states = {job.name: job.state for job in summarize(tmp_path, plot=False).jobs}
    assert states == {"0": "killed", "1": "running", "2": "running"}


def test_vae_sweep_refuses_a_folder_without_jobs(tmp_path):
    result = vae_sweep(tmp_path)
    assert result.returncode == 2
    assert result.stderr.startswith("error: ") and "holds no sweep's job folders" in result.stderr
    assert vae_sweep(tmp_path / "absent").returncode == 2


def multirun_config(sweep_dir, storage=None):
    hydra = {"sweep": {"dir": str(sweep_dir)}, "sweeper": {"storage": storage}}
    return OmegaConf.create({"hydra": hydra})


BASIC_SWEEPER = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"


@pytest.mark.parametrize("task, params, expected", [
    (["beta=0.5,1", "seed=range(0,3)", "epochs=1"], None, 6),  # 2 x 3, the fixed key counting once
    (["beta=0.5,1"], {"seed": "0,1", "model.hidden": "[400],[200],[100]"}, 12),  # hydra.sweeper.params too
    (["epochs=1"], None, 1),
    (["model=glob(*)"], None, None),  # its options are known only to Hydra's config loader
    (["seed=shuffle(0,1,2)"], None, None),  # an order drawn anew each time: not the jobs' order
    (["seed=0,1", "data.root=${hydra:runtime.cwd}/d"], None, 2),  # read as given: no resolver for hydra: here
])
def test_planned_jobs_counts_the_grid_of_the_basic_sweeper(task, params, expected):
    hydra_node = OmegaConf.create({"sweeper": {"_target_": BASIC_SWEEPER, "params": params},
                                   "overrides": {"task": task}})
    assert planned_jobs(hydra_node) == expected
    study = OmegaConf.create({"sweeper": {"_target_": "hydra_plugins.vae_cli_sweeper.optuna_study."
                                                      "OptunaStudySweeper", "params": params}, "overrides": {"task": task}})
    assert planned_jobs(study) is None  # an Optuna study asks for its trials a batch at a time


def test_the_report_counts_the_jobs_a_stopped_sweep_did_not_start(sweep):
    summary = summarize(sweep, plot=False)
    assert "(5 jobs: 3 finished, 1 running, 1 failed)" in summary.report()
    assert "(7 jobs: 3 finished, 1 running, 1 failed, 2 not started)" in summary.report(planned=7)
    assert "(5 jobs: 3 finished, 1 running, 1 failed)" in summary.report(planned=4)  # an earlier command's too


@pytest.mark.parametrize("task, hydra, command", [
    (["beta=0.5,1"], [], "vae-train -m beta=0.5,1 hydra.sweep.dir={dir}"),
    # overwrite=true would start every job afresh, the finished ones too; Hydra's own overrides stay
    (["beta=0.5,1", "overwrite=true", "~eval", "model.hidden_sizes=[64,32]"],
     ["hydra.sweep.dir=x", "hydra/launcher=parallel", "hydra.launcher.n_jobs=2", "hydra.mode=MULTIRUN"],
     "vae-train -m beta=0.5,1 '~eval' 'model.hidden_sizes=[64,32]' hydra/launcher=parallel "
     "hydra.launcher.n_jobs=2 hydra.sweep.dir={dir}"),
])
def test_the_rerun_line_ends_in_the_command_to_paste_without_overwrite(task, hydra, command, tmp_path):
    from vae_cli.interrupts import rerun_command

    hydra_node = OmegaConf.create({"sweeper": {"_target_": BASIC_SWEEPER}, "overrides": {"task": task, "hydra": hydra},
                                   "sweep": {"dir": str(tmp_path / "sweep")}})
    line = rerun_command(hydra_node)
    assert line == ("to continue the sweep (finished jobs skipped, stopped ones resumed, the rest run), run: "
                    + command.format(dir=tmp_path / "sweep"))
    pasted = shlex.split(line.split(", run: ")[1])  # what a shell hands vae-train
    assert pasted[2:] == [o for o in task if o != "overwrite=true"] + hydra[1:3] + [f"hydra.sweep.dir={tmp_path / 'sweep'}"]


def test_the_rerun_command_quotes_the_sweep_folder_for_hydra_too(tmp_path):
    """A folder with a comma, brackets or a space: Hydra read `hydra.sweep.dir=/data/a,b` as a sweep over two
    folders, and `(copy)` as a parse error (a review)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from vae_cli.interrupts import hydra_value, sweep_command

    # every printable character but the separator (`R&D`, `run #2` and `~` were parse errors, a review),
    # backslashes before a quote or at the end (doubled inside Hydra's quotes), letters beyond ASCII
    names = [f"a{char}b" for char in string.printable.strip() if char != "/"]
    for name in [*names, "a,b", "run (copy)", "it's", 'q"uote', "k=v[1]", "x\\", 'a\\"b', "é", "日本", "a b\\\\"]:
        node = OmegaConf.create({"sweep": {"dir": str(tmp_path / name)}, "overrides": {"task": ["seed=0,1"]}})
        (override,) = OverridesParser.create().parse_overrides(shlex.split(sweep_command(node))[-1:])
        assert not override.is_sweep_override() and override.value() == str(tmp_path / name), name
        assert hydra_value("hydra.sweep.dir", shlex.split(sweep_command(node))[-1].split("=", 1)[1]) == str(
            tmp_path / name)
    # in Hydra's quotes, the two backslashes at the end doubled
    assert shlex.split(sweep_command(node))[-1] == f'hydra.sweep.dir="{tmp_path}/a b' + 4 * "\\" + '"'


def test_the_rerun_command_names_a_primary_config_source_of_any_schema(tmp_path):
    """--config-path pkg://theirs.conf (a package's configs) was dropped where a file's was kept: the pasted
    command looked for their --config-name among vae-train's configs (a review). vae-train's own source and
    Hydra's are not named."""
    from vae_cli.interrupts import sweep_command

    sources = [{"path": "hydra.conf", "schema": "pkg", "provider": "hydra"},
               {"path": "theirs.conf", "schema": "pkg", "provider": "main"},
               {"path": "/home/me/more", "schema": "file", "provider": "command-line"},
               {"path": "", "schema": "structured", "provider": "schema"}]
    node = OmegaConf.create({"sweep": {"dir": str(tmp_path)}, "overrides": {"task": ["seed=0,1"]},
                             "runtime": {"config_sources": sources}, "job": {"config_name": "mine"}})
    assert shlex.split(sweep_command(node))[2:8] == ["--config-path", "pkg://theirs.conf", "--config-dir",
                                                     "/home/me/more", "--config-name", "mine"]
    sources[1] = {"path": "vae_cli.configs", "schema": "pkg", "provider": "main"}
    node = OmegaConf.create({"sweep": {"dir": str(tmp_path)}, "overrides": {"task": ["seed=0,1"]},
                             "runtime": {"config_sources": sources[:2]}, "job": {"config_name": "train"}})
    assert shlex.split(sweep_command(node))[2:] == ["seed=0,1", f"hydra.sweep.dir={tmp_path}"]


def test_parallel_jobs_number_their_console_lines_in_the_consoles_own_format(tmp_path, monkeypatch):
    """The prefix wraps the formatter Hydra installed: rebuilt from its format string, a '{' style printed
    its fields literally and colorlog's fields raised a logging error on every line (a review)."""
    import io
    import logging

    from vae_cli import interrupts
    from vae_cli.cli import number_console_lines

    monkeypatch.setattr(interrupts, "TERMINAL_PREFIX", "")  # restored after: number_console_lines sets it

    root, console = logging.getLogger(), io.StringIO()
    handlers = [logging.StreamHandler(console), logging.FileHandler(tmp_path / "vae-train.log")]
    handlers[0].setFormatter(logging.Formatter("<{levelname}> {message}", style="{"))
    saved = root.handlers[:]
    root.handlers[:] = handlers
    try:
        number_console_lines(3)
        logging.getLogger("vae_cli.train").warning("epoch %d", 2)
        logging.getLogger("vae_cli.train").warning("two\nlines")  # each numbered (a review: the second was not)
    finally:
        root.handlers[:] = saved
        handlers[1].close()
    assert console.getvalue() == "[job 3]<WARNING> epoch 2\n[job 3]<WARNING> two\n[job 3]lines\n"
    assert (tmp_path / "vae-train.log").read_text() == "epoch 2\ntwo\nlines\n"  # a job folder's log keeps its format
    assert interrupts.TERMINAL_PREFIX == "[job 3] "  # the job's stop line, printed, names it too


def test_after_a_failure_the_rerun_line_says_what_the_failed_jobs_folder_takes(tmp_path):
    """fail_fast: a job refused before training (a bad value) takes the changed value in its folder, where
    the line said 'in a new hydra.sweep.dir' (a review: the mended command ran there); one that trained keeps
    its run there, which the same command resumes and a changed value is refused."""
    from vae_cli.interrupts import rerun_command

    hydra_node = OmegaConf.create({"sweeper": {"_target_": BASIC_SWEEPER}, "overrides": {"task": ["beta=1,-1"]},
                                   "sweep": {"dir": str(tmp_path)}})
    job = make_job(tmp_path, "1", ["beta=-1"], "failed", error="beta=-1 must be a finite number >= 0")
    command = f"The command: vae-train -m beta=1,-1 hydra.sweep.dir={tmp_path}"
    assert rerun_command(hydra_node, job) == ("change the failing value in the sweep's command and run it again: the "
                                              f"failed job's folder takes the change (finished jobs skipped, the rest run). {command}")
    (job / "checkpoint.pt").write_bytes(b"")  # a run that trained, then failed (diverged, a full disk)
    line = rerun_command(hydra_node, job)
    assert line.startswith("the failed job's folder keeps its run: the same command runs it again there, from its "
                           "last checkpoint if it wrote one") and "a changed value needs a new hydra.sweep.dir" in line and line.endswith(command)


def test_the_rerun_line_of_a_job_gives_its_sweeps_command_from_multirun_yaml(tmp_path):
    """A job's own Hydra node holds that job's values (beta=-1 of beta=1,-1, fail_fast=True as Hydra renders
    it); the command is the one Hydra recorded in the sweep folder as it started."""
    from vae_cli.interrupts import rerun_command

    sweep = tmp_path / "sweep"
    sweep.mkdir()
    (sweep / "multirun.yaml").write_text(yaml.safe_dump({"hydra": {"overrides": {
        "hydra": [f"hydra.sweep.dir={sweep}", "hydra.mode=MULTIRUN"], "task": ["beta=1,-1", "fail_fast=true"]}}}))
    job = OmegaConf.create({"sweeper": {"_target_": BASIC_SWEEPER}, "sweep": {"dir": str(sweep)},
                            "overrides": {"task": ["beta=-1", "fail_fast=True"], "hydra": ["hydra.mode=MULTIRUN"]}})
    assert rerun_command(job).endswith(f", run: vae-train -m beta=1,-1 fail_fast=true hydra.sweep.dir={sweep}")


def test_callback_fails_only_for_jobs_this_command_ran(tmp_path, capsys):
    """An old failed job (a study's or a re-run's) is listed but not blamed; a new one is, with exit 1."""
    root = tmp_path / "sweep"
    make_job(root, "0", ["beta=1"], "finished", -140.0)
    make_job(root, "1", ["beta=-1"], "failed", error="beta=-1 is not accepted")
    config = multirun_config(root)
    callback = SweepSummary(plot=False)
    callback.on_multirun_start(config=config)
    time.sleep(0.05)
    make_job(root, "2", ["beta=2"], "finished", -150.0)
    callback.on_multirun_end(config=config)  # no SystemExit: job 1 was not run by this command
    out = capsys.readouterr().out
    assert "3 jobs: 2 finished, 1 failed" in out and "best: job 0 (beta=1)" in out

    callback.on_multirun_start(config=config)
    time.sleep(0.05)
    make_job(root, "3", ["beta=-2"], "failed", error="beta=-2 is not accepted")
    make_job(root, "4", ["beta=3"], "finished", -145.0)
    with pytest.raises(SystemExit) as stop:
        callback.on_multirun_end(config=config)
    assert stop.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: 1 of 2 jobs failed: job 3 (beta=-2): beta=-2 is not accepted"]
    assert [r["job"] for r in read_csv(root / "summary.csv")] == ["0", "4", "2", "1", "3"]

    # a re-run while an earlier command's job 5 still runs on Slurm: refused as in use, while its process
    # rewrites its status.json; it was counted twice ("2 of 2 jobs failed: job 5: running; job 5: ... in use")
    make_job(root, "5", ["beta=5"], "running")
    callback.on_multirun_start(config=config)
    time.sleep(0.05)
    make_job(root, "5", ["beta=5"], "running", step=12)
    from vae_cli.sweep import record_refusal
    record_refusal(root, 5, ["beta=5"], f"{root / '5'} is in use by another vae-train (pid 1 on vm)")
    with pytest.raises(SystemExit):
        callback.on_multirun_end(config=config)
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: 1 of 1 jobs were refused (each refused job's folder is left as it was: the summary "
                   f"shows the run it holds): job 5 (beta=5): {root / '5'} is in use by another vae-train (pid 1 on vm)"]


def test_callback_with_an_optuna_sqlite_study_summarizes_its_folder(tmp_path, capsys):
    """Storage sqlite:///DIR/optuna.db: DIR is created before the study is, and the summary covers every
    command's jobs under it."""
    study = tmp_path / "outputs" / "study"
    config = multirun_config(study / "second", storage=f"sqlite:///{study}/optuna.db")
    callback = SweepSummary(plot=False)
    callback.on_multirun_start(config=config)
    assert study.is_dir()
    make_job(study / "first", "0", ["beta=1.5"], "finished", -141.0)
    make_job(study / "second", "4", ["beta=0.7"], "finished", -139.0)
    callback.on_multirun_end(config=config)
    assert [r["job"] for r in read_csv(study / "summary.csv")] == ["second/4", "first/0"]
    assert "best: job second/4 (beta=0.7)" in capsys.readouterr().out


def test_a_study_in_a_relative_sqlite_path_is_reported_by_absolute_paths(tmp_path, capsys, monkeypatch):
    """sqlite:///outputs/study/optuna.db (configs/hparams_search's form): the summary's paths are absolute,
    like a grid sweep's, not relative to wherever vae-train was started."""
    monkeypatch.chdir(tmp_path)
    study = tmp_path / "outputs" / "study"
    config = multirun_config(study / "second", storage="sqlite:///outputs/study/optuna.db")
    callback = SweepSummary(plot=False)
    callback.on_multirun_start(config=config)
    make_job(study / "second", "0", ["beta=0.7"], "finished", -139.0)
    callback.on_multirun_end(config=config)
    out = capsys.readouterr().out
    assert f"sweep summary: {study / 'summary.md'} (1 job: 1 finished)" in out
    assert out.rstrip().endswith(f", {study / 'second' / '0'}")


def test_a_study_whose_jobs_run_elsewhere_is_summarized_where_they_are(tmp_path, capsys):
    """hydra.sweep.dir outside the study's folder: the summary covered the study's folder, which held none of
    this command's jobs ('no job started'), and the jobs' own folder got no summary."""
    study, elsewhere = tmp_path / "outputs" / "study", tmp_path / "mine"
    config = multirun_config(elsewhere, storage=f"sqlite:///{study}/optuna.db")
    callback = SweepSummary(plot=False)
    callback.on_multirun_start(config=config)
    assert study.is_dir()  # the database's folder still made for SQLite
    make_job(elsewhere, "0", ["beta=0.7"], "finished", -139.0)
    callback.on_multirun_end(config=config)
    assert [r["job"] for r in read_csv(elsewhere / "summary.csv")] == ["0"]
    assert "best: job 0 (beta=0.7)" in capsys.readouterr().out


def test_vae_sweep_of_a_job_folder_names_its_sweep_and_writes_nothing(sweep):
    result = vae_sweep(sweep / "1")
    assert result.returncode == 2 and result.stderr.strip() == (
        f"error: {sweep / '1'} is one job's folder; give the sweep folder that holds it: {sweep.resolve()}")
    assert not list((sweep / "1").glob("summary.*"))  # they were written there before the refusal


def test_vae_sweep_leaves_single_runs_out(tmp_path):
    """A run of vae-train without -m (Hydra's record: mode RUN) is no sweep's job: vae-sweep on its folder
    named the date folder above it as 'the sweep', and on outputs/ ranked unrelated runs as one (a review)."""
    outputs = tmp_path / "outputs"
    single = make_job(outputs / "2026-12-03", "18-08-56", ["likelihood=gaussian"], "finished", 1314.0)
    (single / ".hydra" / "hydra.yaml").write_text("hydra:\n  run:\n    dir: x\n  mode: RUN\n")
    job = make_job(outputs / "multirun" / "2026-12-03" / "18-10-00", "0", ["seed=0"], "finished", -150.0)
    (job / ".hydra" / "hydra.yaml").write_text("hydra:\n  mode: MULTIRUN\n")
    result = vae_sweep(single, "--no-plot")
    assert result.returncode == 2 and result.stderr.strip() == (
        f"error: {single} is a single run's folder (vae-train without -m), not a sweep's: its figures are in its "
        "metrics.json; give vae-sweep the folder vae-train -m printed")
    result = vae_sweep(outputs, "--no-plot")
    assert result.returncode == 0, result.stderr
    assert [r["job"] for r in read_csv(outputs / "summary.csv")] == ["multirun/2026-12-03/18-10-00/0"]
    result = vae_sweep(outputs / "2026-12-03", "--no-plot")
    assert result.returncode == 2 and "holds no sweep's job folders" in result.stderr
    # a sweep's job re-run as a single run into its own folder (a refused job started afresh): still the sweep's
    (job.parent / "multirun.yaml").write_text(yaml.safe_dump({"hydra": {"sweep": {"dir": str(job.parent)}}}))
    (job / ".hydra" / "hydra.yaml").write_text("hydra:\n  mode: RUN\n")
    result = vae_sweep(job.parent, "--no-plot")
    assert result.returncode == 0 and "(1 job: 1 finished)" in result.stdout, result.stdout + result.stderr


def hydra_config(*overrides):
    from hydra import compose, initialize_config_module

    with initialize_config_module("vae_cli.configs", version_base="1.3"):
        return compose("train", overrides=list(overrides), return_hydra_config=True)


def test_launcher_configs_extend_the_plugins_and_give_each_job_its_threads():
    parallel = hydra_config("hydra/launcher=parallel", "hydra.launcher.n_jobs=3").hydra
    assert parallel.launcher._target_.endswith("JoblibLauncher") and parallel.launcher.prefer == "processes"
    assert OmegaConf.to_container(parallel.job.env_set, resolve=True) == {"VAE_CLI_PARALLEL_JOBS": "3"}
    slurm = hydra_config("hydra/launcher=slurm", "hydra.launcher.partition=gpu").hydra.launcher
    assert slurm._target_.endswith("SlurmLauncher") and slurm.partition == "gpu"
    assert slurm.max_num_timeout >= 1 and slurm.cpus_per_task == 2 and slurm.timeout_min == 240
    assert slurm.signal_delay_s < 60 * slurm.timeout_min
    local = hydra_config("hydra/launcher=slurm_local").hydra.launcher
    assert local._target_.endswith("LocalLauncher")
    ray = hydra_config("hydra/launcher=ray_jobs", "hydra.launcher.ray.remote.num_cpus=2").hydra
    assert ray.launcher.ray.init.address == "local" and ray.launcher.ray.init.object_store_memory is None
    assert OmegaConf.to_container(ray.job.env_set, resolve=True) == {"OMP_NUM_THREADS": "2"}


def test_optuna_search_maximizes_the_objective_in_sqlite_beside_the_sweep_folders():
    cfg = hydra_config("hparams_search=optuna_mlp", "objective.direction=minimize",
                       "hydra.sweeper.study_name=mine")
    sweeper = cfg.hydra.sweeper
    assert sweeper._target_.endswith("OptunaStudySweeper") and sweeper.direction == "minimize"
    assert sweeper.sampler._target_.endswith("TPESampler") and sweeper.max_failure_rate == 1.0  # optuna@sweeper
    assert sweeper.storage == "sqlite:///outputs/mine/optuna.db"
    assert cfg.hydra.sweep.dir.startswith(f"{os.getcwd()}/outputs/mine/")  # ${launch_dir:}: absolute
    assert set(sweeper.params) == {"optimizer.lr", "beta", "model.latent_dim", "model.hidden_sizes"}
    assert hydra_config("hparams_search=optuna_mlp").hydra.sweeper.direction == "maximize"


@pytest.mark.parametrize("address,reason", [("127.0.0.1:{port}", "no Ray cluster answers there"),
                                            ("ray://127.0.0.1:{port}", "no Ray cluster answers there"),
                                            ("my-head", "not HOST:PORT")])
def test_a_ray_address_nothing_answers_at_is_one_line_at_once(tmp_path, address, reason):
    """ray.init would retry for minutes; vae-train names the key and stops before composing anything."""
    address = address.format(port=free_port())  # a port nothing listens on: bound, then released
    start = time.monotonic()
    result = run_cli("-m", "debug=smoke", "seed=0,1", "hydra/launcher=ray_jobs",
                     f"hydra.launcher.ray.init.address={address}", cwd=tmp_path)
    assert result.returncode == 2 and time.monotonic() - start < 30, result.stderr
    assert len(result.stderr.splitlines()) == 1 and "Traceback" not in result.stderr
    assert result.stderr.startswith(f"error: hydra.launcher.ray.init.address={address}: {reason}")
    assert not (tmp_path / "outputs").exists()


def test_a_ray_address_set_in_a_config_file_is_checked_as_the_sweep_starts(tmp_path):
    """An experiment of the user's own (--config-dir) that names the cluster: the command line does not show
    it, so ray_jobs' launcher checks the composed config before ray.init, and the sweep folder goes."""
    address = f"127.0.0.1:{free_port()}"
    (tmp_path / "mine" / "experiment").mkdir(parents=True)
    (tmp_path / "mine" / "experiment" / "cluster.yaml").write_text(
        "# @package _global_\ndefaults:\n  - override /hydra/launcher: ray_jobs\n"
        f"hydra:\n  launcher:\n    ray:\n      init:\n        address: {address}\n")
    start = time.monotonic()
    result = run_cli("-m", "--config-dir", str(tmp_path / "mine"), "experiment=cluster", "debug=smoke", "seed=0,1",
                     cwd=tmp_path)
    assert result.returncode == 2 and time.monotonic() - start < 60, result.stderr
    assert len(result.stderr.splitlines()) == 1 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.startswith(f"error: hydra.launcher.ray.init.address={address}: no Ray cluster answers there")
    assert not (tmp_path / "outputs").exists()


def test_a_ray_address_held_by_another_service_is_one_line_at_once(tmp_path):
    """A port that accepts connections but is no Ray head (here an HTTP server): ray.init hung in its retries."""
    port = free_port()
    web = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=tmp_path)
    try:
        deadline = time.monotonic() + 30
        while True:  # listening
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline and web.poll() is None, "the HTTP server did not start"
                time.sleep(0.1)
        result = run_cli("-m", "debug=smoke", "seed=0,1", "hydra/launcher=ray_jobs",
                         f"hydra.launcher.ray.init.address=127.0.0.1:{port}", cwd=tmp_path)
    finally:
        web.kill()
        web.wait(timeout=30)
    assert result.returncode == 2 and len(result.stderr.splitlines()) == 1, result.stderr
    assert result.stderr.startswith(f"error: hydra.launcher.ray.init.address=127.0.0.1:{port}: something listens "
                                    "there but answers no gRPC handshake")
    assert not (tmp_path / "outputs").exists()


def test_a_ray_address_auto_checks_the_cluster_ray_address_names(tmp_path, monkeypatch):
    """address=auto makes ray.init join RAY_ADDRESS's cluster, retrying for minutes when nothing answers."""
    address = f"127.0.0.1:{free_port()}"
    monkeypatch.setenv("RAY_ADDRESS", address)
    result = run_cli("-m", "debug=smoke", "seed=0,1", "hydra/launcher=ray_jobs",
                     "hydra.launcher.ray.init.address=auto", cwd=tmp_path)
    assert result.returncode == 2 and len(result.stderr.splitlines()) == 1, result.stderr
    assert result.stderr.startswith(f"error: RAY_ADDRESS={address} (read for hydra.launcher.ray.init.address=auto): "
                                    "no Ray cluster answers there")
    assert not (tmp_path / "outputs").exists()


@pytest.mark.parametrize("times,words", [(("hydra.launcher.timeout_min=1",), "signal_delay_s=120 is not below the time "
                                          "limit hydra.launcher.timeout_min=1 (60 s)"),
                                         (("hydra.launcher.signal_delay_s=14400",), "signal_delay_s=14400 is not below")])
def test_a_slurm_signal_delay_not_below_the_time_limit_is_refused_before_submitting(times, words, tmp_path):
    """USR2 signal_delay_s before the limit: as long as the limit, it signals each job as it starts, which is
    requeued until max_num_timeout runs out, never training."""
    result = run_cli("-m", "hydra/launcher=slurm", "debug=smoke", "seed=0,1", *times, cwd=tmp_path)
    assert result.returncode == 2 and len(result.stderr.splitlines()) == 1, result.stderr
    assert result.stderr.startswith(f"error: hydra.launcher.{words}")
    assert not (tmp_path / "outputs").exists()


def test_a_mistyped_launcher_key_is_named_by_submitits_own_line(tmp_path):
    """submitit's NameError is followed by lines of advice; the error line was the last of those ('As a
    reminder, shared/generic (non-prefixed) parameters are: ...'), without the key."""
    result = run_cli("-m", "hydra/launcher=slurm", "debug=smoke", "~eval", "seed=0,1", "+hydra.launcher.partitionn=x",
                     cwd=tmp_path)
    assert result.returncode == 2 and len(result.stderr.splitlines()) == 1, result.stderr
    assert result.stderr.startswith("error: NameError: Unknown argument 'partitionn' for executor 'slurm'")
    assert not (tmp_path / "outputs").exists()


def test_a_relative_sweep_folder_for_ray_is_made_absolute_from_the_launch_folder(tmp_path, monkeypatch):
    """Jobs on a running Ray cluster start in the folder of `ray start`: a relative hydra.sweep.dir put their
    folders there, and the summary here said 'no job started'."""
    from vae_cli.cli import absolute_sweep_dir_for_ray
    monkeypatch.chdir(tmp_path)
    args = ["-m", "hydra/launcher=ray_jobs", "hydra.sweep.dir=rel/r3", "seed=0,1"]
    assert absolute_sweep_dir_for_ray(args) == ["-m", "hydra/launcher=ray_jobs", f"hydra.sweep.dir={tmp_path}/rel/r3",
                                                "seed=0,1"]
    # quoted for Hydra (a review: the quotes were kept inside the path, `{tmp_path}/"rel/R&D 1"`)
    args = ["-m", "hydra/launcher=ray_jobs", 'hydra.sweep.dir="rel/R&D 1"']
    assert absolute_sweep_dir_for_ray(args)[-1] == f'hydra.sweep.dir="{tmp_path}/rel/R&D 1"'
    kept = ["-m", "hydra/launcher=ray_jobs", "hydra.sweep.dir=/abs/r3", "hydra.sweep.dir=${launch_dir:}/x",
            "hydra.sweep.dir='/abs/R&D 1'"]
    assert absolute_sweep_dir_for_ray(kept) == kept
    assert absolute_sweep_dir_for_ray(["-m", "hydra.sweep.dir=rel"]) == ["-m", "hydra.sweep.dir=rel"]  # local jobs


def test_the_failure_line_groups_the_refusals_of_a_relative_sweep_folder(tmp_path, monkeypatch):
    """hydra.sweep.dir=sweep: the errors name the absolute folders, of which the relative ones are a part;
    the grouping depended on the order of a set (PYTHONHASHSEED), and could print '/abs/JOB_FOLDER' (a review)."""
    from vae_cli.sweep import failure_line

    monkeypatch.chdir(tmp_path)
    refused = [{"job": n, "overrides": [f"seed={n}"], "error": f"{tmp_path / 'sweep' / str(n)} holds another run"}
               for n in (0, 1)]
    assert failure_line([], 2, refused, Path("sweep")).endswith(
        f": jobs 0, 1 (JOB_FOLDER: {tmp_path / 'sweep'}/<job>): JOB_FOLDER holds another run")


def test_the_failure_line_names_jobs_with_the_same_error_once(tmp_path):
    """A re-run refused job by job repeated the same long refusal, its folder aside, once per job (a review):
    such jobs share one entry, JOB_FOLDER standing for each one's folder; other errors keep their own."""
    from vae_cli.sweep import failure_line
    from vae_cli.sweep_jobs import Job

    def refusal(num):
        folder = tmp_path / str(num)
        return {"job": num, "overrides": [f"seed={num}", "epochs=3"],
                "error": f"{folder} holds this job number's run of an earlier command (epochs: 2 -> 3); continue "
                         f"that run alone: vae-train resume={folder} epochs=3"}

    bad = [Job(str(n), tmp_path / str(n), [f"seed={n}", "beta=-1"], {"state": "failed", "error": "beta=-1 is refused"})
           for n in (4, 5)]
    odd = Job("6", tmp_path / "6", ["seed=6"], {"state": "failed", "error": "diverged at step 3"})
    line = failure_line([*bad, odd], 7, [refusal(0), refusal(1)], tmp_path)
    assert line == (
        "error: 5 of 7 jobs failed or were refused (each refused job's folder is left as it was: the summary shows "
        f"the run it holds): jobs 0, 1 (JOB_FOLDER: {tmp_path.resolve()}/<job>): JOB_FOLDER holds this job number's "
        "run of an earlier command (epochs: 2 -> 3); continue that run alone: vae-train resume=JOB_FOLDER epochs=3; "
        "jobs 4, 5: beta=-1 is refused; job 6 (seed=6): diverged at step 3"), line
    # in the order of their numbers, whatever the summary's ranking (it listed 'jobs 2, 1', a user review)
    assert failure_line([*reversed(bad), odd], 7).startswith("error: 3 of 7 jobs failed: jobs 4, 5: beta")
    assert failure_line([odd], 1) == "error: 1 of 1 jobs failed: job 6 (seed=6): diverged at step 3"


def test_a_job_folder_a_stopping_sweep_made_but_never_used_is_removed(tmp_path):
    """What Hydra makes for a job the stopping sweep does not start, an empty log or (with a job_logging that
    writes no file) nothing, goes; a folder holding anything more stays."""
    from vae_cli.cli import remove_unstarted

    for name, files in {"empty": {}, "log": {"vae-train.log": ""}, "said": {"vae-train.log": "stopped"},
                        "earlier": {"vae-train.log": "", "status.json": "{}"}}.items():
        (tmp_path / name).mkdir()
        for file, text in files.items():
            (tmp_path / name / file).write_text(text)
        remove_unstarted(tmp_path / name)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["earlier", "said"]
