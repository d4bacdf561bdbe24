"""`vae-train --help` and `vae-eval --help`: the tool described, every config group, keys and examples."""
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

from conftest import compose_config, vae_train_exe

CONFIGS = Path(__file__).parents[1] / "configs"
TIMEOUT = 120  # seconds: --help composes the config and exits, ~1.5 s on a quiet machine


def config_groups() -> dict[str, list[str]]:
    """Each folder of configs/ holding options (not Hydra's own groups): group -> its option names."""
    return {folder.name: sorted(p.stem for p in folder.glob("*.yaml"))
            for folder in sorted(CONFIGS.iterdir())
            if folder.is_dir() and folder.name != "hydra" and any(folder.glob("*.yaml"))}


def test_train_config_selects_the_help():
    with initialize_config_module("vae_cli.configs", version_base="1.3"):
        cfg = compose("train", return_hydra_config=True)
    assert cfg.hydra.runtime.choices["hydra/help"] == "vae_train"  # configs/hydra/help/vae_train.yaml


def train_help(*overrides: str) -> str:
    result = subprocess.run([vae_train_exe(), *overrides, "--help"], capture_output=True,
                            text=True, timeout=TIMEOUT)
    assert result.returncode == 0, result.stderr
    return result.stdout


def section(text: str, title: str) -> list[str]:
    """The lines of the '== title ... ==' section, up to the next section or blank-line-separated footer."""
    match = re.search(rf"^== {re.escape(title)}.*?==\n(.*?)(?=^== |\n\n(?!  ))", text, re.M | re.S)
    assert match, f"no section '{title}' in:\n{text}"
    return match.group(1).splitlines()


@pytest.fixture(scope="module")
def default_help() -> str:
    return train_help()


def test_help_describes_the_tool(default_help):
    first = default_help.splitlines()[0]
    assert first.startswith("vae-train: train a variational autoencoder"), first
    assert "is powered by Hydra" not in default_help  # Hydra's generic header is gone


def test_help_names_every_config_group_with_a_line_and_its_options(default_help):
    groups = config_groups()
    assert {"data", "likelihood", "latent", "estimator", "model"} <= set(groups)  # the listing works
    described = {line.split()[0] for line in section(default_help, "Config groups") if line.strip()}
    assert set(groups) - described == set(), "config groups without a line in the help"
    assert described - set(groups) == set(), "lines for groups that configs/ does not have"
    for group, options in groups.items():
        assert f"\n{group}: {', '.join(options)}\n" in default_help, group


def test_help_common_keys_exist_in_the_config(default_help):
    cfg = compose_config()
    keys = [line.split()[0] for line in section(default_help, "Common keys") if line.strip()]
    assert len(keys) >= 8 and {"seed", "epochs", "batch_size", "beta"} <= set(keys)
    for key in keys:
        if not key.startswith("hydra."):  # the run folder: Hydra's own config
            assert OmegaConf.select(cfg, key, default="<missing>") != "<missing>", key


def test_help_examples_compose(default_help):
    commands = [re.split(r"\s{2,}", line.strip())[0] for line in section(default_help, "Examples")
                if line.strip()]
    assert len(commands) >= 3 and all(c.startswith("vae-train") for c in commands), commands
    for command in commands:
        words = [w for w in command.split()[1:] if w != "-m"]
        first_values = [re.sub(r"=([^,]*),.*", r"=\1", w) for w in words]  # a sweep's first job
        compose_config(*first_values)  # raises on a group, option or key that does not exist


def test_help_shows_what_the_overrides_chose():
    text = train_help("data=synthetic", "epochs=3", "latent=categorical")
    assert "(now synthetic)" in text and "(now categorical)" in text
    assert "(now reinforce)" in text  # latent=categorical switches the estimator
    assert re.search(r"^  epochs .*\(now 3\)$", text, re.M)


def test_eval_help_describes_the_tool_and_its_keys():
    exe = shutil.which("vae-eval")
    assert exe, "vae-eval is not on PATH: install the package first (see README)"
    result = subprocess.run([exe, "--help"], capture_output=True, text=True, timeout=TIMEOUT)
    assert result.returncode == 0, result.stderr
    assert "vae-eval RUN_FOLDER" in result.stdout
    with initialize_config_module("vae_cli.configs", version_base="1.3"):
        eval_cfg = compose("eval")
    for key in eval_cfg.eval:
        assert re.search(rf"\b{key}\b", result.stdout), key


def test_eval_without_a_run_folder_says_so_in_one_line():
    """It printed the whole --help (48 lines) to stderr, with no line saying what was missing."""
    result = subprocess.run([shutil.which("vae-eval")], capture_output=True, text=True, timeout=TIMEOUT)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.splitlines() == [
        "error: give the folder of the run to evaluate: vae-eval RUN_FOLDER [key=value ...], e.g. vae-eval "
        "outputs/<date>/<time>; vae-eval --help lists its settings"]
