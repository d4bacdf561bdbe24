"""A plain (non-editable) install from a built wheel finds its configs and trains."""
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from conftest import run_cli

ROOT = Path(__file__).parents[1]


@pytest.mark.slow
def test_wheel_install_in_a_fresh_venv_trains(tmp_path):
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "--no-build-isolation",
                    "-q", "-w", str(wheels)], check=True, capture_output=True, text=True)
    (wheel,) = wheels.glob("vae_cli-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    sources = {p.relative_to(ROOT).as_posix() for p in (ROOT / "vae_cli").rglob("*.py")}
    configs = {"vae_cli/" + p.relative_to(ROOT).as_posix() for p in (ROOT / "configs").rglob("*.yaml")}
    assert sources - set(names) == set() and configs - set(names) == set()  # every module and config
    # The venv borrows torch and friends from this interpreter but gets its own copy of vae_cli.
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True)
    subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--no-deps", str(wheel)],
                   check=True, capture_output=True, text=True)
    where = subprocess.run([str(venv / "bin" / "python"), "-c", "import vae_cli; print(vae_cli.__file__)"],
                           cwd=tmp_path, check=True, capture_output=True, text=True).stdout
    assert str(venv) in where  # the wheel's copy, not the source tree
    result = run_cli("debug=smoke", "epochs=1", "hydra.run.dir=run", cwd=tmp_path,
                     exe=str(venv / "bin" / "vae-train"))
    assert result.returncode == 0, result.stderr
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["test/elbo"] < 0 and metrics["step"] == 461 // 32
