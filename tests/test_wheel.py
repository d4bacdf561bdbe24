"""A plain (non-editable) install from a built wheel finds its configs and trains."""
import json
import site
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from conftest import run_cli

ROOT = Path(__file__).parents[1]


def outer_site_packages() -> list[str]:
    """The site-packages folders this interpreter imports torch, hydra and the rest from: its prefix's
    (a venv's own when run in one) and, when enabled, the user's (pip install --user)."""
    folders = list(site.getsitepackages())
    if site.ENABLE_USER_SITE:
        folders.append(site.getusersitepackages())
    return [folder for folder in folders if Path(folder).is_dir()]


def make_venv_borrowing_packages(venv: Path) -> Path:
    """A venv whose own site-packages comes first, then this interpreter's site-packages folders.

    `venv --system-site-packages` would not do: run from inside a venv it exposes the base interpreter's
    packages, not the venv's (where hydra and torch are). A .pth file listing the folders appends them
    to sys.path after the venv's own site-packages, so the wheel installed there wins over an editable
    install of vae_cli outside (whose own .pth hook is not processed: plain lines only add folders).
    pip comes from those folders too (--without-pip: no ensurepip needed, no network).
    """
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    own = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                         check=True, capture_output=True, text=True, timeout=60).stdout.strip()
    (Path(own) / "_outer_site_packages.pth").write_text("\n".join(outer_site_packages()) + "\n")
    return python


@pytest.mark.slow
def test_outer_site_packages_are_this_interpreters():
    """The borrowed folders hold the packages this interpreter imports (not the base interpreter's)."""
    import hydra
    import torch

    folders = [Path(folder).resolve() for folder in outer_site_packages()]
    for module in (hydra, torch):
        assert Path(module.__file__).resolve().parents[1] in folders, module.__file__


@pytest.mark.slow
def test_wheel_install_in_a_fresh_venv_trains(tmp_path):
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "--no-build-isolation",
                    "-q", "-w", str(wheels)], check=True, capture_output=True, text=True, timeout=300)
    (wheel,) = wheels.glob("vae_cli-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    sources = {p.relative_to(ROOT).as_posix() for p in (ROOT / "vae_cli").rglob("*.py")}
    configs = {"vae_cli/" + p.relative_to(ROOT).as_posix() for p in (ROOT / "configs").rglob("*.yaml")}
    assert sources - set(names) == set() and configs - set(names) == set()  # every module and config
    assert "hydra_plugins/vae_cli_sweeper/optuna_study.py" in names  # hparams_search's sweeper
    # The venv borrows torch and friends from this interpreter but gets its own copy of vae_cli.
    venv = tmp_path / "venv"
    python = make_venv_borrowing_packages(venv)
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", str(wheel)],
                   check=True, capture_output=True, text=True, timeout=300)
    where = subprocess.run([str(python), "-c", "import vae_cli; print(vae_cli.__file__)"],
                           cwd=tmp_path, check=True, capture_output=True, text=True, timeout=60).stdout
    assert str(venv) in where  # the wheel's copy, not the source tree
    result = run_cli("debug=smoke", "epochs=1", "hydra.run.dir=run", cwd=tmp_path,
                     exe=str(venv / "bin" / "vae-train"))
    assert result.returncode == 0, result.stderr
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["test/elbo"] < 0 and metrics["step"] == 461 // 32
