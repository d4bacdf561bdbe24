"""Resolve the `device` config value to a torch.device, with a clear error for one that is absent."""
import torch

from vae_cli.errors import ConfigError, check_choice


def mps_available() -> bool:
    return hasattr(torch.backends, "mps") and torch.backends.mps.is_available()


def resolve_device(name: str) -> torch.device:
    """auto picks cuda, then mps, then cpu; an explicit device that is not present is an error."""
    kind = str(name).split(":")[0]
    check_choice("device", kind, ("auto", "cpu", "cuda", "mps"))
    if kind == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps") if mps_available() else torch.device("cpu")
    if kind == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device={name!r} but this machine has no CUDA device visible to torch "
                          f"{torch.__version__}; use device=auto or device=cpu")
    if kind == "mps" and not mps_available():
        raise ConfigError(f"device={name!r} but MPS is not available here; use device=auto or device=cpu")
    return torch.device(name)
