"""Build the run's objects from a composed config: data, model, estimator, optimizer."""
import inspect
import math

import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate as hydra_instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from vae_cli.data import ImageData
from vae_cli.data.sources import SUBSET_SOURCE
from vae_cli.errors import ConfigError, reason


def instantiate(node: DictConfig, **kwargs):
    """hydra.utils.instantiate, with our one-line ConfigError surfacing instead of Hydra's wrapper."""
    try:
        return hydra_instantiate(node, **kwargs)
    except InstantiationException as err:
        cause = err.__cause__
        while cause is not None and not isinstance(cause, ConfigError):
            cause = cause.__cause__
        if cause is not None:
            raise cause from None
        where = node._get_full_key(None) if isinstance(node, DictConfig) else ""
        root = err  # the error behind Hydra's wrappers (a NameError in the target's module, ...)
        while root.__cause__ is not None:
            root = root.__cause__
        detail = reason(err).replace(", set env var HYDRA_FULL_ERROR=1 to see chained exception", "")
        if root is not err:
            detail += f" ({type(root).__name__}: {reason(root)})"
        target = str(node.get("_target_", "")) if isinstance(node, DictConfig) else ""
        if isinstance(root, ModuleNotFoundError) and root.name and "." not in root.name and \
                target.split(".")[0] == root.name:  # a module of one's own (docs/extending.md), not on the path
            detail += f"; run the command with PYTHONPATH naming the folder that holds {root.name} (docs/extending.md)"
        raise ConfigError(f"config group '{where}' could not be built: {detail}") from err


def build_data(cfg: DictConfig, trained_on: str | None = None) -> ImageData:
    """cfg.data's images. trained_on: the source a run recorded (its data_source), for a resume or vae-eval:
    a run of data.source=auto loads what auto chose then, the subset or full MNIST, even if full MNIST has
    appeared in the cache (or gone) since; its figures would otherwise mix two data sets."""
    node = cfg.data
    if trained_on and node.get("source") == "auto":
        node = OmegaConf.create(OmegaConf.to_container(node, resolve=True))
        node.source = "subset" if trained_on.startswith(SUBSET_SOURCE) else "full"
    return instantiate(node)


def build_model(cfg: DictConfig, data_dim: int) -> torch.nn.Module:
    """The VAE of cfg.model, with cfg.latent and cfg.likelihood, for data of data_dim dimensions."""
    latent = instantiate(cfg.latent)
    likelihood = instantiate(cfg.likelihood)
    return instantiate(cfg.model, data_dim=data_dim, latent=latent, likelihood=likelihood,
                       _convert_="all")


def build_estimator(cfg: DictConfig, model: torch.nn.Module, data: ImageData | None = None):
    """The estimator of cfg.estimator, checked against the model (invalid pairs fail clearly)."""
    estimator = instantiate(cfg.estimator, _convert_="all")
    if hasattr(estimator, "setup"):
        estimator.setup(model, data)
    estimator.check_model(model)
    return estimator


def build_optimizer(cfg: DictConfig, params, device: torch.device):
    """cfg.optimizer is a partial (_partial_: true); fused kernels are used where torch has them."""
    node = cfg.optimizer.copy()
    with open_dict(node):
        node.pop("clip_grad_norm", None)  # the training step's business (train_step.py), not the optimizer's
    make = instantiate(node)
    kwargs = {}
    signature = inspect.signature(make.func)
    chosen = OmegaConf.to_container(node)
    for key, value in chosen.items():  # torch compares before it checks types: '<=' not supported ...
        default = signature.parameters[key].default if key in signature.parameters else None
        if isinstance(default, (int, float)) and not isinstance(default, bool) and not (
                isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)):
            raise ConfigError(f"optimizer.{key}={value!r} must be a finite number, e.g. optimizer.{key}={default}")
    lr = chosen.get("lr")
    if isinstance(lr, (int, float)) and not isinstance(lr, bool) and not lr > 0:  # torch accepts lr = 0
        raise ConfigError(f"optimizer.lr={lr!r} must be > 0, e.g. optimizer.lr=1e-3")
    if "fused" in signature.parameters and "fused" not in chosen and "foreach" not in chosen:
        kwargs["fused"] = device.type in ("cpu", "cuda", "mps")
    try:
        return make(params=params, **kwargs)
    except (ValueError, TypeError) as err:  # torch checks lr, eps, betas, weight_decay itself
        settings = ", ".join(f"optimizer.{k}={v}" for k, v in chosen.items() if not k.startswith("_"))
        raise ConfigError(f"optimizer could not be built: {err}; fix the value it names (now {settings})") from err
