"""Checkpoints that cannot corrupt: written to a temporary file, fsynced, renamed; loaded with weights_only."""
import errno
import json
import math
import os
import pickle
import tempfile
from pathlib import Path

import torch

from vae_cli.errors import ConfigError, WriteError, reason

REQUIRED_KEYS = ("model", "config", "step")


def _fsync_folder(folder: Path) -> None:
    """Make a rename in folder durable (POSIX: the directory entry lives in the folder's own inode)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # not every file system lets a folder be opened; the rename itself is still atomic
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: Path, write) -> None:
    """write(file) into a temporary file beside path, fsync it, then rename it over path.

    A failure anywhere (a full disk, an exception inside write, a kill) leaves path as it was: the
    previous version stays complete and loadable, and the temporary file is removed. A file system
    error (OSError; torch.save reports a full disk as a RuntimeError) is raised as WriteError, one line.
    """
    path = Path(path)
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes it private; these are ordinary files
        os.replace(tmp, path)
    except BaseException as err:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        if isinstance(err, (OSError, RuntimeError)):
            kept = "the earlier one is kept" if path.exists() else "none was there before"
            full = not isinstance(err, OSError) or err.errno in (errno.ENOSPC, errno.EDQUOT)  # torch: RuntimeError
            mend = "Is the disk full? Free some space" if full else "Mend that"
            raise WriteError(f"could not write {path} ({reason(err)}); {kept}. {mend} and run the same command "
                             "again (a run resumes from its last checkpoint)") from err
        raise
    _fsync_folder(path.parent)


def finite_or_null(value):
    """value with every NaN or infinite float inside it as None: JSON has no NaN (json.dumps writes a bare
    NaN that strict readers refuse), and a figure that could not be computed is null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: finite_or_null(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_null(item) for item in value]
    return value


def write_json(path: Path, value) -> None:
    """A JSON file written atomically (status.json, metrics.json, eval.json), NaN written as null."""
    text = json.dumps(finite_or_null(value), indent=2, allow_nan=False) + "\n"
    atomic_write(path, lambda f: f.write(text.encode()))


def save_checkpoint(path: Path, state: dict) -> None:
    """torch.save(state) to path atomically: a crash or a full disk never leaves half a checkpoint."""
    atomic_write(path, lambda f: torch.save(state, f))


# What a training command can do with a run folder whose checkpoint is unreadable (load_checkpoint's remedy)
START_AFRESH = ("start the run afresh there with overwrite=true (deletes its files) or in another folder "
                "(hydra.run.dir=...)")


def load_checkpoint(path: Path, map_location="cpu",
                    remedy: str = "rerun the training or point at another run") -> dict:
    """Load a vae-cli checkpoint (tensors and plain containers only), or explain in one line why not, ending
    with remedy: what the command's user can do about a damaged file."""
    path = Path(path)
    if path.is_dir():
        path = path / "checkpoint.pt"
    if not path.is_file():
        raise ConfigError(f"no checkpoint at {path}; pass a run folder written by vae-train "
                          "(it holds checkpoint.pt) or the path of a checkpoint.pt file")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:  # weights_only refuses anything but tensors and containers
        if "Unsupported global" in str(err):
            raise ConfigError(f"checkpoint {path} carries pickled Python objects, which vae-cli does not "
                              "load (they can run code); point at a checkpoint written by vae-train") from err
        raise ConfigError(f"checkpoint {path} is not a torch checkpoint (corrupt or foreign); {remedy}") from err
    except PermissionError as err:  # the file may be whole: nothing to rerun
        raise ConfigError(f"checkpoint {path} cannot be read (permission denied); give this user read access "
                          "to it (e.g. chmod u+r)") from err
    except Exception as err:  # noqa: BLE001 - torch's unpickler raises KeyError, IndexError, ... on junk
        raise ConfigError(f"checkpoint {path} could not be read ({reason(err)}); it is truncated, corrupt or "
                          f"not written by vae-train: {remedy}") from err
    missing = [k for k in REQUIRED_KEYS if not isinstance(state, dict) or k not in state]
    if missing:
        raise ConfigError(f"checkpoint {path} lacks {', '.join(missing)}: not a vae-train checkpoint; "
                          "point at a run folder written by vae-train")
    return state
