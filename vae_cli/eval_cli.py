"""Console entry point `vae-eval RUN_FOLDER [key=value ...]`: compose configs/eval.yaml, evaluate the run."""
import logging
import sys
from pathlib import Path

from hydra import compose, initialize_config_module
from hydra.errors import HydraException
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from vae_cli.cli import fail
from vae_cli.errors import ConfigError

USAGE = """usage: vae-eval RUN_FOLDER [key=value ...]

Evaluate the checkpoint of a vae-train run folder on its test set: importance-weighted log p(x) (L_K),
the ELBO and the posterior gap, bits/dim (continuous data), active units, the semi-supervised probe and
latent pictures. Figures go to RUN_FOLDER/eval.json and the run's TensorBoard events.

example: vae-eval outputs/2026-11-28/15-00-00 eval.num_samples=5000 device=cuda

Config (configs/eval.yaml with eval/full.yaml), each key overridable as key=value:
"""


def compose_eval_config(overrides: list[str]):
    """configs/eval.yaml with Hydra overrides, struct mode on; bad overrides become one-line ConfigErrors."""
    try:
        with initialize_config_module("vae_cli.configs", version_base="1.3"):
            return compose("eval", overrides=overrides)
    except (HydraException, OmegaConfBaseException) as err:
        raise ConfigError(f"vae-eval overrides {' '.join(overrides)}: {err}") from err


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE + OmegaConf.to_yaml(compose_eval_config([])), file=sys.stdout if argv else sys.stderr)
        sys.exit(0 if argv else 2)
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s][%(levelname)s] - %(message)s")
    run_dir, overrides = argv[0], argv[1:]
    try:
        if "=" in run_dir and not Path(run_dir).exists():
            raise ConfigError(f"the first argument must be the run folder, not {run_dir!r}; "
                              "usage: vae-eval RUN_FOLDER [key=value ...]")
        eval_cfg = compose_eval_config(overrides)
        from vae_cli.evaluation import evaluate_run  # imported here so that bad arguments answer fast

        evaluate_run(run_dir, eval_cfg)
    except ConfigError as err:
        fail(err)
