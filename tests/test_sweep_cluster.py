"""Sweeps on real clusters started by the tests: a single-node Slurm with accounting (tests/services.py,
.ci/slurm.sh) through hydra/launcher=slurm, including a preempted job requeued by submitit that resumes
from its checkpoint; and a Ray head on 127.0.0.1 through hydra/launcher=ray_jobs."""
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from conftest import vae_train_exe
from services import RAY_ENV, python_env, ray_head, slurm_cluster  # noqa: F401 - a fixture
from test_sweep_runs import SMOKE, StatusWatcher, read_tail, status, summary_rows, vae_train

pytestmark = pytest.mark.slow
# Slurm jobs of one CPU and 1 GB each: two run at once on a 2-core node.
SLURM = ("hydra/launcher=slurm", "hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=1",
         "hydra.launcher.timeout_min=30")


def slurm_ids(sweep: Path) -> list[str]:
    """The Slurm ids of a sweep's jobs, from submitit's folders: ARRAY_TASK for an array (beside the array's
    own folder, ARRAY), or JOB alone for a one-job sweep."""
    names = [p.name for p in (sweep / ".submitit").iterdir() if p.is_dir() and p.name[0].isdigit()]
    tasks = sorted(name for name in names if "_" in name)
    return tasks or names


def sacct_states(job_id: str, timeout: float = 60) -> list[str]:
    """Every state Slurm's accounting recorded for the job, requeued attempts included (-D), once the last
    is COMPLETED (slurmctld reports to slurmdbd a moment after the job ends)."""
    deadline = time.monotonic() + timeout
    while True:
        result = subprocess.run(["sacct", "-D", "-X", "-n", "-P", "-o", "State", "-j", job_id],
                                capture_output=True, text=True, timeout=30)
        assert result.returncode == 0, result.stderr
        states = result.stdout.split()
        if (states and states[-1] == "COMPLETED") or time.monotonic() > deadline:
            return states
        time.sleep(0.5)


def test_slurm_sweep_of_two_jobs(tmp_path, slurm_cluster):  # noqa: F811
    result = vae_train("-m", *SMOKE, *SLURM, "seed=0,1", "hydra.sweep.dir=sweep", cwd=tmp_path, timeout=400)
    assert result.returncode == 0, result.stderr[-3000:]
    sweep = tmp_path / "sweep"
    statuses = [status(sweep / str(i)) for i in range(2)]
    assert [s["state"] for s in statuses] == ["finished", "finished"]
    assert [s["threads"] for s in statuses] == [1, 1]  # SLURM_CPUS_PER_TASK
    ids = slurm_ids(sweep)
    assert len(ids) == 2 and [sacct_states(i) for i in ids] == [["COMPLETED"], ["COMPLETED"]]
    assert len(summary_rows(sweep)) == 2 and "best: job" in result.stdout


def test_slurm_job_preempted_by_usr2_is_requeued_and_resumes(tmp_path, slurm_cluster):  # noqa: F811
    """scancel --signal=USR2 mid-training: vae-train checkpoints, submitit requeues the job, the next
    attempt continues from the checkpoint (its step never back to 0) and ends with the metrics of an
    uninterrupted run of the same config."""
    run = (*SMOKE, "epochs=30", "seed=3", "threads=1")
    sweep = tmp_path / "sweep"
    log = open(tmp_path / "master.log", "w")  # a file, not a pipe: nothing blocks on a full pipe
    master = subprocess.Popen([vae_train_exe(), "-m", *run, *SLURM, "hydra.sweep.dir=sweep"], cwd=tmp_path,
                              stdout=log, stderr=subprocess.STDOUT, env=python_env())
    job = sweep / "0"
    watcher = StatusWatcher(job)
    try:
        deadline = time.monotonic() + 240
        while not (job / "status.json").exists() or status(job)["step"] == 0:
            assert master.poll() is None, read_tail(tmp_path / "master.log")
            assert time.monotonic() < deadline, "the Slurm job never started training"
            time.sleep(0.05)
        (slurm_id,) = slurm_ids(sweep)
        signal = subprocess.run(["scancel", "--signal=USR2", slurm_id], capture_output=True, text=True, timeout=30)
        assert signal.returncode == 0, signal.stderr
        master.wait(timeout=400)
    finally:
        if master.poll() is None:
            master.kill()
        log.close()
        seen = watcher.close()
    assert master.returncode == 0, read_tail(tmp_path / "master.log")
    final = status(job)
    assert final["state"] == "finished" and final["attempts"] == 2, (final, seen)
    stopped = [step for attempts, state, step in seen if attempts == 1 and state == "interrupted"]
    assert stopped and stopped[-1] > 0, seen
    second = [step for attempts, _, step in seen if attempts == 2]
    assert second and min(second) >= stopped[-1], seen
    states = sacct_states(slurm_id)
    assert states[-1] == "COMPLETED" and len(states) >= 2, states  # the requeued attempt, then the last

    reference = vae_train(*run, "hydra.run.dir=reference", cwd=tmp_path)
    assert reference.returncode == 0, reference.stderr[-3000:]
    expected = json.loads((tmp_path / "reference" / "metrics.json").read_text())
    assert json.loads((job / "metrics.json").read_text()) == expected


def test_a_submission_sbatch_refuses_is_one_line_and_leaves_no_sweep_behind(tmp_path, slurm_cluster):  # noqa: F811
    """A partition the cluster lacks: sbatch refuses the array. It printed submitit's 'FailedJobError' with its
    module path and left a sweep folder of multirun.yaml and submitit's pickles, though nothing ran. Into a
    folder of an earlier sweep, that sweep's files are left as they were."""
    earlier = tmp_path / "earlier"
    (earlier / ".submitit" / "41_0").mkdir(parents=True)
    (earlier / "multirun.yaml").write_text("hydra: {}\n")
    (earlier / ".submitit" / "41_0" / "41_0_log.out").write_text("the earlier job's log\n")
    before = sorted((str(p.relative_to(earlier)), p.read_bytes()) for p in earlier.rglob("*") if p.is_file())
    for sweep in (tmp_path / "new", earlier):
        result = vae_train("-m", *SMOKE, *SLURM, "hydra.launcher.partition=no_such_partition", "seed=0,1",
                           f"hydra.sweep.dir={sweep}", cwd=tmp_path, timeout=120)
        assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
        assert result.stderr.splitlines() == [
            "error: sbatch refused the sweep's jobs (invalid partition specified: no_such_partition; Batch job "
            "submission failed: Invalid partition name specified), so none was submitted; check the hydra.launcher "
            "keys it names against `sinfo` (partitions, limits), or that Slurm's controller is up"], result.stderr
    assert not (tmp_path / "new").exists()
    assert sorted((str(p.relative_to(earlier)), p.read_bytes()) for p in earlier.rglob("*") if p.is_file()) == before


def test_a_cancelled_slurm_job_and_a_ctrl_c_of_the_launcher_say_what_became_of_the_sweep(tmp_path, slurm_cluster):  # noqa: F811
    """scancel of one job made submitit's launcher give up: it printed a traceback and 'the sweep stopped at
    a failure (fail_fast=true)' though fail_fast was off. Ctrl-C of the launching process said 'stopped
    before training started; nothing of the run was written' while its Slurm jobs trained on."""
    for stop in ("scancel", "ctrl-c"):
        sweep, log_path = tmp_path / stop, tmp_path / f"{stop}.log"
        command = [vae_train_exe(), "-m", *SMOKE, *SLURM, "epochs=100000", "seed=0,1", f"hydra.sweep.dir={sweep}"]
        with open(log_path, "w") as log:
            master = subprocess.Popen(command, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT, env=python_env(),
                                      start_new_session=True)
        try:
            deadline = time.monotonic() + 240
            while not (sweep / "0" / "status.json").exists() or status(sweep / "0")["step"] == 0:
                assert master.poll() is None, read_tail(log_path)
                assert time.monotonic() < deadline, "the Slurm job never started training"
                time.sleep(0.05)
            if stop == "scancel":
                job = next(i for i in slurm_ids(sweep) if i.endswith("_0"))
                subprocess.run(["scancel", job], capture_output=True, text=True, timeout=30, check=True)
            else:
                os.killpg(master.pid, signal.SIGINT)  # as the terminal sends it
            master.wait(timeout=120)
        finally:
            if master.poll() is None:
                master.kill()
            arrays = {i.split("_")[0] for i in slurm_ids(sweep)}  # the jobs still running: not the test's to keep
            subprocess.run(["scancel", *arrays], capture_output=True, timeout=30)
        output = read_tail(log_path)
        assert "Traceback" not in output and "fail_fast" not in output, output
        if stop == "scancel":
            assert master.returncode == 1, output
            assert "error: the launcher ended the sweep: UncompletedJobError: Job " in output, output
            assert "(state: CANCELLED" in output, output
        else:
            assert master.returncode == -signal.SIGINT, output
            assert "stopped by SIGINT: this command ends; Slurm runs the jobs it was given on" in output, output
        assert "sweep summary: " in output and "the rest run), run: vae-train -m " in output, output
        assert f" hydra.sweep.dir={sweep}\n" in output, output


def test_ray_sweep_on_a_local_head(tmp_path):
    """Joining a running cluster, launched from another folder than `ray start`'s, where the cluster's
    workers run: the default sweep folder is under the launching folder (configs/train.yaml's
    ${launch_dir:}), and every job writes there."""
    launch = tmp_path / "launch"
    launch.mkdir()
    with ray_head(tmp_path) as address:
        result = vae_train("-m", *SMOKE, "seed=0,1", "hydra/launcher=ray_jobs",
                           f"hydra.launcher.ray.init.address={address}", cwd=launch, timeout=400, **RAY_ENV)
    assert result.returncode == 0, result.stderr[-3000:]
    assert not (tmp_path / "outputs").exists()  # nothing in the workers' folder
    [sweep] = (launch / "outputs" / "multirun").glob("*/*")
    statuses = [status(sweep / str(i)) for i in range(2)]
    assert [s["state"] for s in statuses] == ["finished", "finished"]
    assert [s["threads"] for s in statuses] == [1, 1]  # remote.num_cpus, by OMP_NUM_THREADS
    assert len(summary_rows(sweep)) == 2 and "best: job" in result.stdout
