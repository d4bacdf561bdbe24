"""Console entry point `vae-eval RUN_FOLDER [key=value ...]`: compose configs/eval.yaml, evaluate the run."""
import logging
import sys
from pathlib import Path

from hydra import compose, initialize_config_module
from hydra.errors import HydraException
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from vae_cli.cli import fail, version_line
from vae_cli.config_keys import (MOVABLE, check_added_keys, deleted_key, group_choice_line, hydra_error_line,
                               settings_node_line)
from vae_cli.errors import ConfigError
from vae_cli.interrupts import stop_at_once
from vae_cli.process_exit import ExitWithoutTeardown

USAGE = """usage: vae-eval RUN_FOLDER [key=value ...]

vae-eval: evaluate a finished vae-train run from its checkpoint, on the same test set training scored
(prepared from the run's eval_seed). It computes, per test example in nats (L_K and elbo_L1 with their
Monte Carlo standard errors):
  L_K            the importance-weighted bound (Burda et al. 2016): a LOWER bound on log p(x), rising with K
  elbo_L1        the ELBO on the same K draws
  posterior_gap  L_K - L_1: a lower bound on KL(q(z|x) || p(z|x)), tight only as K grows
and bits/dim (dequantised likelihoods), active units, the semi-supervised probe (logistic regression on
latent means with 10, 100 and all labels per class, against raw pixels), latent traversal and
interpolation pictures. Figures go to RUN_FOLDER/eval.json (an earlier one of other settings is kept as
eval-1.json, ...) and, under vae-eval/K<K>/ tags, to the run's TensorBoard events. docs/math.md says
what each figure means.

Keys (configs/eval.yaml with eval/full.yaml), each overridable as key=value:
  checkpoint           best: the model the run's test figures used (best.pt, the best validation ELBO) |
                       last: checkpoint.pt | best.pt: best.pt's model even where those figures used the last
  data.root            where the run's data.root folder is now, if it has moved (null: where the run had it)
  data.path            the same for a data set read from one file (docs/extending.md)
  device               auto (cuda, then mps, then cpu) | cpu | cuda | cuda:N | mps
  threads              torch's intra-op threads; auto: this process's share of the cores (as vae-train)
  eval.num_samples     K importance samples per test image in L_K (Burda et al. report L_5000)
  eval.chunk_size      of the K samples, how many per decoder pass (memory ~ batch_size x chunk_size x D)
  eval.batch_size      test images per pass
  eval.probe_sizes     labelled training images per class for the probe, e.g. [10,100,all]
  eval.pixel_baseline  the same probe on raw pixels: true | false
  eval.pictures        latent traversal and interpolation grids: true | false
  eval.embedding       test latent means in TensorBoard's projector: true | false
  eval=light           the settings vae-train ends with: K = 100, no projector, no pixel baseline

examples:
  vae-eval outputs/2026-11-28/15-00-00                                  K = 1000, everything
  vae-eval outputs/2026-11-28/15-00-00 eval.num_samples=5000 device=cuda  Burda et al.'s L_5000
  vae-eval outputs/multirun/2026-11-28/15-00-00/3 eval=light checkpoint=last  quick, one job of a sweep

Current values:
"""


def compose_eval_config(overrides: list[str]):
    """configs/eval.yaml with Hydra overrides, struct mode on; bad overrides become one-line ConfigErrors."""
    for arg in overrides:  # +data=fashion_mnist, Hydra's own advice for data=..., was taken and not used
        key = arg.partition("=")[0].lstrip("+")
        if (key == "data" or key.startswith("data.")) and key not in MOVABLE:
            raise ConfigError(f"{arg}: vae-eval evaluates a run on its own data set, with the run's data settings; "
                              f"only {'=FOLDER and '.join(MOVABLE)}=FILE, where its files are now, may be given")
    added = (check_added_keys(overrides, "eval") or settings_node_line(overrides, "eval")
             or group_choice_line(overrides, "eval"))
    if added:
        raise ConfigError(added)
    if any(arg == "~eval" or arg.startswith("~eval=") for arg in overrides):  # vae-train's switch
        raise ConfigError("~eval: vae-eval always evaluates (vae-train ~eval skips the end-of-run evaluation); "
                          "choose what it computes with eval=light or eval.* settings")
    deleted = deleted_key(overrides, allowed=())
    if deleted:
        raise ConfigError(deleted)
    try:
        with initialize_config_module("vae_cli.configs", version_base="1.3"):
            return compose("eval", overrides=overrides)
    except (HydraException, OmegaConfBaseException) as err:
        raise ConfigError(hydra_error_line(str(err), "eval", overrides)) from err


def console() -> None:
    """The vae-eval command (pyproject.toml): main() without the interpreter's teardown at exit."""
    with ExitWithoutTeardown():
        main()


def named_checkpoint(run_dir: str, overrides: list[str]) -> tuple[str, list[str]]:
    """vae-eval RUN/checkpoint.pt (or best.pt): that run folder, with checkpoint=last (or best.pt), the model
    the file holds; another file is refused."""
    path = Path(run_dir)
    if not path.is_file():
        return run_dir, overrides
    chosen = {"checkpoint.pt": "last", "best.pt": "best.pt"}.get(path.name)
    if chosen is None:
        raise ConfigError(f"{run_dir} is a file, not a run folder; usage: vae-eval RUN_FOLDER [key=value ...]")
    given = [arg.split("=", 1)[1] for arg in overrides if arg.startswith("checkpoint=")]
    if given and given[-1] not in (chosen, chosen.removesuffix(".pt")):
        raise ConfigError(f"{run_dir} is the run's {chosen.removesuffix('.pt')} model, and checkpoint={given[-1]} "
                          "asks for the other; give one of them")
    return str(path.parent), [*overrides, f"checkpoint={chosen}"] if not given else overrides


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    if "--version" in argv:
        print(version_line())
        return
    if not argv:  # one line, as for any bad command (the whole help filled the terminal with it)
        fail(ConfigError("give the folder of the run to evaluate: vae-eval RUN_FOLDER [key=value ...], e.g. "
                         "vae-eval outputs/<date>/<time>; vae-eval --help lists its settings"))
    if argv[0] in ("-h", "--help"):
        print(USAGE + OmegaConf.to_yaml(compose_eval_config([])))
        return
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s][%(levelname)s] - %(message)s")
    run_dir, overrides = argv[0], argv[1:]
    try:
        with stop_at_once("before vae-eval finished; the same command again writes eval.json"):
            if "=" in run_dir and not Path(run_dir).exists():
                raise ConfigError(f"the first argument must be the run folder, not {run_dir!r}; "
                                  "usage: vae-eval RUN_FOLDER [key=value ...]")
            run_dir, overrides = named_checkpoint(run_dir, overrides)
            folders = [arg for arg in overrides if "=" not in arg and Path(arg).exists()]
            if folders:  # a glob, outputs/*/*: Hydra's parser said 'LexerNoViableAltException' (a user review)
                raise ConfigError(f"vae-eval evaluates one run folder, and {folders[0]} is another; run it once per "
                                  "folder (for f in outputs/*/*; do vae-eval \"$f\"; done)")
            flags = [arg for arg in overrides if arg.startswith("-")]
            if flags:
                raise ConfigError(f"{flags[0]}: vae-eval takes key=value settings after the run folder, no "
                                  "options; `vae-eval --help` prints the settings and their values")
            eval_cfg = compose_eval_config(overrides)
            from vae_cli.evaluation import evaluate_run  # imported here so that bad arguments answer fast

            evaluate_run(run_dir, eval_cfg)
    except ConfigError as err:
        fail(err)


if __name__ == "__main__":  # python -m vae_cli.eval_cli: vae-eval, run from the imported module (its one copy)
    from vae_cli.eval_cli import console as command

    command()
