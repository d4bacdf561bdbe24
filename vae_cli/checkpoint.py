"""Checkpoints: written atomically, loaded with weights_only, holding the config to rebuild the model."""
import os
import tempfile
from pathlib import Path

import torch

from vae_cli.errors import ConfigError

REQUIRED_KEYS = ("model", "config", "step")


def save_checkpoint(path: Path, state: dict) -> None:
    """Write to a temporary file in the same folder, then rename: a crash never leaves half a file."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes it private; a checkpoint is an ordinary file
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_checkpoint(path: Path, map_location="cpu") -> dict:
    """Load a vae-cli checkpoint (tensors and plain containers only), or explain in one line why not."""
    path = Path(path)
    if path.is_dir():
        path = path / "checkpoint.pt"
    if not path.is_file():
        raise ConfigError(f"no checkpoint at {path}; pass a run folder written by vae-train "
                          "(it holds checkpoint.pt) or the path of a checkpoint.pt file")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # torch raises several types for truncated or foreign files
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(f"checkpoint {path} could not be read ({first}); it is corrupt or not "
                          "written by vae-train: rerun the training or point at another run") from err
    missing = [k for k in REQUIRED_KEYS if not isinstance(state, dict) or k not in state]
    if missing:
        raise ConfigError(f"checkpoint {path} lacks {', '.join(missing)}: not a vae-train checkpoint; "
                          "point at a run folder written by vae-train")
    return state
