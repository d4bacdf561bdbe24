"""Console entry points: `vae-train` composes the Hydra config and calls train(cfg)."""
import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from vae_cli.errors import ConfigError

# configs/ at the top of the repository is installed as the package vae_cli.configs (pyproject.toml).
CONFIG_PATH = "pkg://vae_cli.configs"


def fail(err: ConfigError) -> None:
    print(f"error: {err}", file=sys.stderr)
    sys.exit(2)


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="train")
def main(cfg: DictConfig) -> float:
    from vae_cli.train import train  # imported here so that --help and bad overrides answer fast

    try:
        metrics = train(cfg, HydraConfig.get().runtime.output_dir)
    except ConfigError as err:
        fail(err)
    return metrics["test/elbo"]
