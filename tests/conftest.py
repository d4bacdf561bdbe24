"""Shared fixtures: compose the real configs (shrunk by debug=smoke) the way vae-train does."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_module
from omegaconf import DictConfig

sys.path.insert(0, str(Path(__file__).parent))  # the test helpers (linear_gaussian.py)

if os.environ.get("PYTEST_XDIST_WORKER"):
    # One thread per xdist worker (and its subprocesses): two workers with two OpenMP threads each
    # on two cores spin against each other and run several times slower.
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)


def compose_config(*overrides: str) -> DictConfig:
    """The composed vae-train config with the given overrides, struct mode on as in the CLI."""
    with initialize_config_module("vae_cli.configs", version_base="1.3"):
        return compose("train", overrides=list(overrides))


@pytest.fixture
def one_thread():
    """Tiny models: intra-op threads only add overhead, and on a busy 2-core machine make tests 20x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def smoke_cfg():
    return lambda *overrides: compose_config("debug=smoke", *overrides)


def vae_train_exe() -> str:
    exe = shutil.which("vae-train")
    assert exe, "vae-train is not on PATH: install the package first (see README)"
    return exe


def run_cli(*args: str, cwd: Path, exe: str | None = None) -> subprocess.CompletedProcess:
    """Run the installed console script as a user would, capturing its output."""
    return subprocess.run([exe or vae_train_exe(), *args], cwd=cwd, capture_output=True, text=True,
                          timeout=600)
