"""Stopping and resuming as a user does it: a real vae-train process sent SIGTERM mid-epoch, resumed by
the command it printed, ends with the uninterrupted run's metrics.json, byte for byte."""
import json
import shlex
import signal
import subprocess
import sys
import time

import pytest

from conftest import run_cli, vae_train_exe

# 3,600 training images in batches of 32: 112 steps an epoch, three epochs; checkpoints at epoch ends only
ARGS = ("debug=smoke", "~eval", "data.num_train=4000", "epochs=3", "checkpoint.every_minutes=0")


@pytest.mark.slow
def test_sigterm_mid_epoch_then_the_printed_command_resumes_to_the_same_metrics(tmp_path):
    reference = run_cli(*ARGS, "hydra.run.dir=reference", cwd=tmp_path)
    assert reference.returncode == 0, reference.stderr
    run_dir = tmp_path / "run"
    process = subprocess.Popen([vae_train_exe(), *ARGS, f"hydra.run.dir={run_dir}"], cwd=tmp_path,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 300
        while not (run_dir / "checkpoint.pt").exists():  # written at the end of epoch 1
            assert process.poll() is None and time.monotonic() < deadline, process.communicate()
            time.sleep(0.02)
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=120)
    finally:
        process.kill()
    assert process.returncode == 143, stderr  # 128 + SIGTERM, as a shell reports it
    assert "Traceback" not in stderr
    (line,) = [line for line in stderr.splitlines() if line.startswith("stopped by SIGTERM")]
    status = json.loads((run_dir / "status.json").read_text())
    assert status["state"] == "interrupted" and 112 < status["step"] < 224  # inside epoch 2
    assert f"at step {status['step']} of 336" in line and not (run_dir / "metrics.json").exists()
    command = line.split("resume with: ")[1]
    assert command == f"vae-train resume={run_dir.resolve()}" == status["resume_command"]
    resumed = subprocess.run([vae_train_exe(), *shlex.split(command)[1:]], cwd=tmp_path, capture_output=True,
                             text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming at step {status['step']}" in resumed.stdout + resumed.stderr
    assert (run_dir / "metrics.json").read_bytes() == (tmp_path / "reference" / "metrics.json").read_bytes()
    # a finished run is reported, not trained again; resume= can extend it by epochs
    again = run_cli(f"resume={run_dir}", cwd=tmp_path)
    assert again.returncode == 0 and "is finished" in again.stdout + again.stderr
    longer = run_cli(f"resume={run_dir}", "epochs=4", cwd=tmp_path)
    assert longer.returncode == 0, longer.stderr
    assert json.loads((run_dir / "metrics.json").read_text())["step"] == 448


SECOND_CTRL_C = """
import os, signal, time
from vae_cli.interrupts import StopSignals
with StopSignals() as signals:
    signals.immediate = False  # inside the training loop: the first Ctrl-C waits for a step boundary
    os.kill(os.getpid(), signal.SIGINT)
    assert signals.pending
    os.kill(os.getpid(), signal.SIGINT)  # the second exits at once
    time.sleep(5)
print("not reached")
"""


def test_a_second_ctrl_c_exits_at_once():
    result = subprocess.run([sys.executable, "-c", SECOND_CTRL_C], capture_output=True, text=True, timeout=60)
    assert result.returncode == 130 and "not reached" not in result.stdout
    assert "second Ctrl-C" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.slow
def test_sigkill_loses_at_most_the_checkpoint_interval(tmp_path):
    """checkpoint.every_minutes writes checkpoint.pt inside epochs too: killed outright (no handler runs),
    the run resumes from the last one and still ends with the uninterrupted run's metrics."""
    args = (*ARGS[:-1], "checkpoint.every_minutes=0.002")  # every ~0.1 s
    reference = run_cli(*args, "hydra.run.dir=reference", cwd=tmp_path)
    assert reference.returncode == 0, reference.stderr
    run_dir = tmp_path / "run"
    process = subprocess.Popen([vae_train_exe(), *args, f"hydra.run.dir={run_dir}"], cwd=tmp_path,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline, step = time.monotonic() + 300, 0
        while step <= 112 or step % 112 == 0:  # until a checkpoint inside epoch 2 or 3
            assert process.poll() is None and time.monotonic() < deadline
            status = json.loads((run_dir / "status.json").read_text()) if (run_dir / "status.json").exists() else {}
            step = status.get("step", 0)
            time.sleep(0.01)
        process.kill()
        process.wait(timeout=60)
    finally:
        process.kill()
    assert json.loads((run_dir / "status.json").read_text())["state"] == "running"  # nothing could record it
    resumed = run_cli(*args, f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert (run_dir / "metrics.json").read_bytes() == (tmp_path / "reference" / "metrics.json").read_bytes()
