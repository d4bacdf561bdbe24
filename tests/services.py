"""Services the sweep tests need, started and stopped by the tests: a single-node Slurm cluster with
accounting (.ci/slurm.sh, shared by the pytest-xdist workers) and a Ray head on 127.0.0.1."""
import contextlib
import fcntl
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SLURM_SH = ROOT / ".ci" / "slurm.sh"
# Which pytest processes use the cluster, and whether a test started it (then the last user stops it).
SLURM_USERS = Path("/tmp/vae-cli-slurm-users")
SLURM_LOCK = Path("/tmp/vae-cli-slurm.lock")


def slurm(command: str, timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SLURM_SH), command], capture_output=True, text=True, timeout=timeout)


@contextlib.contextmanager
def locked():
    with open(SLURM_LOCK, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def read_users() -> tuple[bool, set[int]]:
    """(started by a test, the PIDs of live pytest processes using the cluster)."""
    if not SLURM_USERS.exists():
        return False, set()
    lines = SLURM_USERS.read_text().split()
    started = bool(lines) and lines[0] == "started"
    pids = {int(p) for p in lines[1:] if p.isdigit() and Path(f"/proc/{p}").exists()}
    return started, pids


def write_users(started: bool, pids: set[int]) -> None:
    SLURM_USERS.write_text("\n".join(["started" if started else "found", *map(str, sorted(pids))]) + "\n")


@pytest.fixture(scope="session")
def slurm_cluster():
    """A running single-node Slurm with accounting: the one found, or one started here from Debian's
    packages (installed by .ci/slurm.sh when absent; a failure to install or start fails the test).
    A cluster this fixture started is stopped by PID when the last pytest process using it ends."""
    if os.geteuid() != 0:
        pytest.fail("the Slurm tests start slurmctld, slurmd, munged, slurmdbd and mariadbd: run them as root")
    with locked():
        started, users = read_users()
        if slurm("status", timeout=30).returncode != 0:
            result = slurm("start", timeout=900)  # may run apt-get install on a fresh machine
            assert result.returncode == 0, f"could not start Slurm:\n{result.stdout}\n{result.stderr}"
            started, users = True, set()
        write_users(started, users | {os.getpid()})
    yield
    with locked():
        started, users = read_users()
        users.discard(os.getpid())
        write_users(started, users)
        if started and not users:
            result = slurm("stop", timeout=120)
            assert result.returncode == 0, result.stderr
            SLURM_USERS.unlink()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


RAY_ENV = {
    "RAY_DISABLE_USAGE_STATS": "1",
    "RAY_AUTH_MODE": "disabled",               # a loopback-only test cluster: no token
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
}


@contextlib.contextmanager
def ray_head(tmp_path: Path, num_cpus: int = 2, timeout: float = 90):
    """A Ray head on 127.0.0.1 under a process this test owns (`ray start --block`); yields its address
    and stops it by PID (SIGTERM, then SIGKILL of its process group) on the way out."""
    ray = shutil.which("ray")
    assert ray, "the ray command is missing: pip install -e '.[sweep]'"
    port = free_port()
    env = os.environ | RAY_ENV
    temp_dir = Path("/tmp") / f"ray-vae-cli-{os.getpid()}-{port}"  # Ray's socket paths must stay short
    log = open(tmp_path / "ray-head.log", "w")
    head = subprocess.Popen(
        [ray, "start", "--head", "--block", f"--port={port}", "--node-ip-address=127.0.0.1",
         f"--num-cpus={num_cpus}", "--include-dashboard=false", "--disable-usage-stats",
         f"--temp-dir={temp_dir}"],
        stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True, cwd=tmp_path)
    address = f"127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:  # the head is up when `ray status` answers
            assert head.poll() is None, f"ray start exited {head.returncode}:\n{(tmp_path / 'ray-head.log').read_text()}"
            probe = subprocess.run([ray, "status", f"--address={address}"], capture_output=True, text=True,
                                   env=env, timeout=60)
            if probe.returncode == 0:
                break
            assert time.monotonic() < deadline, f"Ray head not up in {timeout}s:\n{probe.stderr[-2000:]}"
            time.sleep(1)
        yield address
    finally:
        head.terminate()
        try:
            head.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, 9)
            head.wait(timeout=30)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(head.pid, 15)  # workers left in the head's session
        log.close()
        shutil.rmtree(temp_dir, ignore_errors=True)


def python_env(**extra: str) -> dict:
    """The environment for a vae-train subprocess: this interpreter's bin first on PATH."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
    env.update(extra)
    return env
