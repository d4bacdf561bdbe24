"""Stopping and resuming as a user does it: a real vae-train process sent SIGTERM mid-epoch, resumed by
the command it printed, ends with the uninterrupted run's metrics.json, byte for byte."""
import json
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import run_cli, vae_train_exe

# 3,600 training images in batches of 32: 112 steps an epoch; twenty epochs, long enough on a quiet
# machine to be stopped inside one; checkpoints at epoch ends only
EPOCHS, STEPS_PER_EPOCH = 20, 112
ARGS = ("debug=smoke", "~eval", "data.num_train=4000", "model.hidden_sizes=[256]", f"epochs={EPOCHS}",
        "checkpoint.every_minutes=0")
# Checkpoints every 0.03 s, several inside each epoch even where an epoch takes ~0.1 s (a fast CPU): the
# timer restarts at each epoch's end, so an interval longer than an epoch would never fall inside one.
OFTEN = "checkpoint.every_minutes=0.0005"


def wait_until_mid_epoch(process, run_dir, after: int = STEPS_PER_EPOCH, timeout=300) -> None:
    """Until status.json (updated at each checkpoint) shows a step past `after`, inside an epoch."""
    deadline, step = time.monotonic() + timeout, 0
    while step <= after or step % STEPS_PER_EPOCH == 0:
        if process.poll() is not None:
            raise AssertionError(f"the run ended (status {process.returncode}) before a step past {after} inside an "
                                 f"epoch showed, last seen {step}: {process.communicate()[1][-2000:]}")
        assert time.monotonic() < deadline, f"the run never passed step {after}"
        try:
            step = json.loads((run_dir / "status.json").read_text())["step"]
        except (OSError, ValueError):
            pass
        time.sleep(0.01)


@pytest.mark.slow
def test_sigterm_mid_epoch_then_the_printed_command_resumes_to_the_same_metrics(tmp_path):
    reference = run_cli(*ARGS, "hydra.run.dir=reference", cwd=tmp_path)
    assert reference.returncode == 0, reference.stderr
    run_dir = tmp_path / "run"
    # checkpoints every 0.03 s update status.json's step, so the signal can be sent inside an epoch (they
    # change no draw: the reference, without them, takes the same steps). A signal that arrives while an
    # epoch's end is being processed stops the run on that epoch's end: then resume and stop it again.
    command = [vae_train_exe(), *ARGS[:-1], OFTEN, f"hydra.run.dir={run_dir}"]
    stops = []
    while not stops or stops[-1] % STEPS_PER_EPOCH == 0:
        assert len(stops) < 5, stops
        process = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            wait_until_mid_epoch(process, run_dir, after=max(stops, default=STEPS_PER_EPOCH))
            process.send_signal(signal.SIGTERM)
            _, stderr = process.communicate(timeout=120)
        finally:
            process.kill()
        assert process.returncode == 143, stderr  # 128 + SIGTERM, as a shell reports it
        assert "Traceback" not in stderr
        (line,) = [line for line in stderr.splitlines() if line.startswith("stopped by SIGTERM")]
        assert line in (run_dir / "vae-train.log").read_text()  # the log ends as the terminal did
        # asked for, not an error (it was logged at ERROR, for tools that scan logs for failures)
        assert f"[vae_cli.cli][WARNING] - {line}" in (run_dir / "vae-train.log").read_text()
        status = json.loads((run_dir / "status.json").read_text())
        assert status["state"] == "interrupted" and not (run_dir / "metrics.json").exists()
        assert f"at step {status['step']} of {EPOCHS * STEPS_PER_EPOCH}" in line
        stops.append(status["step"])
        resume = line.split("resume with: ")[1]
        assert resume == f"vae-train resume={run_dir.resolve()}" == status["resume_command"]
        command = [vae_train_exe(), *shlex.split(resume)[1:], OFTEN]
    resumed = subprocess.run([vae_train_exe(), *shlex.split(resume)[1:]], cwd=tmp_path, capture_output=True,
                             text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming at step {stops[-1]}" in resumed.stdout + resumed.stderr
    assert (run_dir / "metrics.json").read_bytes() == (tmp_path / "reference" / "metrics.json").read_bytes()
    # a finished run is reported, not trained again; resume= can extend it by epochs
    again = run_cli(f"resume={run_dir}", cwd=tmp_path)
    assert again.returncode == 0 and "is finished" in again.stdout + again.stderr
    longer = run_cli(f"resume={run_dir}", f"epochs={EPOCHS + 1}", cwd=tmp_path)
    assert longer.returncode == 0, longer.stderr
    assert json.loads((run_dir / "metrics.json").read_text())["step"] == (EPOCHS + 1) * STEPS_PER_EPOCH


def test_resume_of_a_run_started_with_overwrite_keeps_it(tmp_path):
    """overwrite=true is the first command's request, stored in the checkpoint's config: resume= read it
    back and started afresh, deleting the run's checkpoint, events and metrics (a finished run retrained,
    a stopped one back at step 0)."""
    first = run_cli("debug=smoke", "~eval", "overwrite=true", "hydra.run.dir=run", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    run_dir = tmp_path / "run"
    kept = {path.name: path.read_bytes() for path in run_dir.iterdir() if path.is_file()
            and (path.name.startswith("events.out") or path.suffix in (".pt", ".json"))}
    again = run_cli(f"resume={run_dir}", cwd=tmp_path)
    assert again.returncode == 0 and "is finished" in again.stdout + again.stderr, again.stderr
    assert {name: (run_dir / name).read_bytes() for name in kept} == kept
    # the last resume= counts, as Hydra takes a key's last value (its first was checked: "no such folder")
    # and overwrite= too (overwrite=true anywhere on the line refused resume=, whatever came after it)
    last = run_cli("overwrite=true", "resume=nowhere", f"resume={run_dir}", "overwrite=false", cwd=tmp_path)
    assert last.returncode == 0 and "is finished" in last.stdout + last.stderr, last.stderr
    assert not (tmp_path / "nowhere").exists()


@pytest.mark.parametrize("nohup", [False, True], ids=["terminal", "nohup"])
def test_a_closed_terminal_sighup_checkpoints_the_run_unless_started_with_nohup(nohup, tmp_path):
    """SIGHUP (a dropped ssh session) killed the run with no checkpoint and status.json left `running`.
    Under nohup, which ignores SIGHUP, the run must go on as nohup promises."""
    run_dir = tmp_path / "run"
    disposition = signal.SIG_IGN if nohup else signal.SIG_DFL
    process = subprocess.Popen([vae_train_exe(), *ARGS[:-1], OFTEN, "epochs=100000", f"hydra.run.dir={run_dir}"],
                               cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               preexec_fn=lambda: signal.signal(signal.SIGHUP, disposition))
    try:
        wait_until_mid_epoch(process, run_dir)
        process.send_signal(signal.SIGHUP)
        if nohup:
            time.sleep(1)
            assert process.poll() is None  # still training
            process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=120)
    finally:
        process.kill()
    name, status = ("SIGTERM", 143) if nohup else ("SIGHUP", 129)
    assert process.returncode == status, stderr
    assert f"stopped by {name} at step" in stderr and "checkpoint written" in stderr and "Traceback" not in stderr
    assert json.loads((run_dir / "status.json").read_text())["state"] == "interrupted"


SECOND_CTRL_C = """
import os, signal, time
from vae_cli.interrupts import StopSignals
with StopSignals() as signals:
    signals.immediate = False  # inside the training loop: the first Ctrl-C waits for a step boundary
    os.kill(os.getpid(), signal.SIGINT)
    assert signals.pending
    os.kill(os.getpid(), signal.SIGINT)  # the same Ctrl-C handed on by `timeout` or srun: one stop
    print("one stop")
    time.sleep(1.2)
    os.kill(os.getpid(), signal.SIGINT)  # the second exits at once
    time.sleep(5)
print("not reached")
"""


def test_a_second_ctrl_c_exits_at_once_and_one_delivered_twice_is_one_stop():
    """Under `timeout` (or srun), a Ctrl-C reaches vae-train from the terminal and again from the wrapper,
    which hands it on: that counted as a second Ctrl-C, and the run ended without its checkpoint."""
    result = subprocess.run([sys.executable, "-c", SECOND_CTRL_C], capture_output=True, text=True, timeout=60)
    assert result.returncode == -signal.SIGINT and "not reached" not in result.stdout  # ended by SIGINT itself
    assert result.stdout.strip() == "one stop"
    assert "second Ctrl-C" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.slow
def test_sigkill_loses_at_most_the_checkpoint_interval(tmp_path):
    """checkpoint.every_minutes writes checkpoint.pt inside epochs too: killed outright (no handler runs),
    the run resumes from the last one and still ends with the uninterrupted run's metrics."""
    args = (*ARGS[:-1], OFTEN)
    reference = run_cli(*args, "hydra.run.dir=reference", cwd=tmp_path)
    assert reference.returncode == 0, reference.stderr
    run_dir = tmp_path / "run"
    process = subprocess.Popen([vae_train_exe(), *args, f"hydra.run.dir={run_dir}"], cwd=tmp_path,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_until_mid_epoch(process, run_dir)
        process.kill()
        process.wait(timeout=60)
    finally:
        process.kill()
    assert json.loads((run_dir / "status.json").read_text())["state"] == "running"  # nothing could record it
    resumed = run_cli(*args, f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert (run_dir / "metrics.json").read_bytes() == (tmp_path / "reference" / "metrics.json").read_bytes()


FORWARD = """
import os, signal
from vae_cli.interrupts import StopSignals
got = []
signal.signal(signal.SIGUSR2, lambda signum, frame: got.append(signum))  # as submitit installs its requeue
with StopSignals() as signals:
    signals.immediate = False
    os.kill(os.getpid(), signal.SIGUSR2)
    assert signals.pending and not got  # ours ran, not the scheduler's: the checkpoint comes first
assert signal.getsignal(signal.SIGUSR2) is not signals._handle  # the scheduler's handler is back
signals.forward()  # after the checkpoint: the scheduler's handler gets the signal (submitit requeues)
print("forwarded", got)
"""


def test_the_schedulers_own_handler_gets_the_signal_after_the_checkpoint():
    result = subprocess.run([sys.executable, "-c", FORWARD], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert f"forwarded [{int(signal.SIGUSR2)}]" in result.stdout


REQUEUED = """
import os, signal, sys
sys.path.insert(0, TESTS)
from conftest import compose_config
from vae_cli import loop
from vae_cli.train import train
def requeue(signum, frame):  # submitit's handler, installed before the task runs: it requeues and exits
    print("requeued", flush=True)
    os._exit(0)
signal.signal(signal.SIGUSR2, requeue)
next_batch = loop.Loop.next_batch
def sending(self):
    if self.step == 5:
        os.kill(os.getpid(), signal.SIGUSR2)
    return next_batch(self)
loop.Loop.next_batch = sending
train(compose_config("debug=smoke", "~eval"), RUN)
"""


def test_a_job_the_scheduler_requeues_says_where_it_stopped_before_it_exits(tmp_path):
    """A Slurm preemption (USR2): submitit's handler exits the process after our checkpoint, so the stop line
    that vae-train prints at its end was never printed (nor written to vae-train.log)."""
    run_dir = tmp_path / "run"
    script = REQUEUED.replace("TESTS", repr(str(Path(__file__).parent))).replace("RUN", repr(str(run_dir)))
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 0 and result.stdout.strip().endswith("requeued"), result.stderr
    line = f"stopped by SIGUSR2 at step 6 of 28 (in epoch 1); checkpoint written; resume with: vae-train resume={run_dir}"
    assert result.stderr.strip().splitlines()[-1] == line


@pytest.mark.slow
def test_the_printed_resume_command_pastes_whatever_the_folders_name(tmp_path):
    """A folder named like `run (copy), 2`: the command was printed unquoted, so a shell split it at the
    space ('resume=/.../run: no such folder'), and Hydra read the comma as a sweep and '(' as an error."""
    run_dir = tmp_path / "run (copy), 2"
    command = [vae_train_exe(), *ARGS[:-1], OFTEN, f'hydra.run.dir="{run_dir}"']  # quoted for Hydra
    process = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_until_mid_epoch(process, run_dir)
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=120)
    finally:
        process.kill()
    assert process.returncode == 143, stderr
    (line,) = [line for line in stderr.splitlines() if line.startswith("stopped by SIGTERM")]
    resume = line.split("resume with: ")[1]
    assert resume == json.loads((run_dir / "status.json").read_text())["resume_command"]
    words = shlex.split(resume)  # what a shell hands vae-train
    assert len(words) == 2, words
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    resumed = subprocess.run([vae_train_exe(), *words[1:], "epochs=3"], cwd=elsewhere, capture_output=True,
                             text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming at step" in resumed.stdout + resumed.stderr
    assert json.loads((run_dir / "status.json").read_text())["state"] == "finished"


def test_resume_reads_the_folder_as_hydra_does():
    """Hydra's escapes and quotes are undone before the folder is checked: `resume=/x/run\\ \\(copy\\)` was
    refused as 'no such folder' (the raw string), where Hydra reads the folder /x/run (copy) (a review)."""
    from vae_cli.cli import given_path

    for spelled in (r"/x/run\ \(copy\)\,\ 2", '"/x/run (copy), 2"', "'/x/run (copy), 2'"):
        assert given_path([f"resume={spelled}"], "resume") == "/x/run (copy), 2", spelled
    assert given_path(["resume=/x/a", "resume=null"], "resume") is None and given_path([], "resume") is None


def test_a_run_folder_named_by_a_number_resumes(tmp_path):
    """`resume=7` (a sweep's job folder, from the sweep's folder): Hydra read the int 7, and the run ended in
    a TypeError traceback; `resume=0` was taken as no folder (a review)."""
    for name in ("7", "0"):
        trained = run_cli("debug=smoke", "~eval", "max_steps=2", f"hydra.run.dir={name}", cwd=tmp_path)
        assert trained.returncode == 0, trained.stderr
        resumed = run_cli(f"resume={name}", "max_steps=4", cwd=tmp_path)
        assert resumed.returncode == 0, resumed.stderr[-2000:]
        assert "resuming at step 2" in resumed.stdout + resumed.stderr
        assert json.loads((tmp_path / name / "status.json").read_text())["step"] == 4
