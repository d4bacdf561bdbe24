"""Read the four IDX files of MNIST-style data sets (plain or .gz) from a folder, checking them."""

import gzip
import math
import struct
import zlib
from pathlib import Path

import numpy as np
import torch

from vae_cli.errors import ConfigError

# Magic numbers from the IDX header: 0x08 = unsigned bytes, then the number of dimensions.
# Reference: http://yann.lecun.com/exdb/mnist/ ("FILE FORMATS FOR THE MNIST DATABASE").
IMAGES_MAGIC = 2051  # 0x00000803: (count, rows, cols) of uint8
LABELS_MAGIC = 2049  # 0x00000801: (count,) of uint8

# The standard file names, each stored plain or with a .gz suffix.
IDX_FILES = {
    "train_x": "train-images-idx3-ubyte",
    "train_y": "train-labels-idx1-ubyte",
    "test_x": "t10k-images-idx3-ubyte",
    "test_y": "t10k-labels-idx1-ubyte",
}


def find_idx_file(folder: Path, stem: str) -> Path | None:
    """The file `stem` or `stem.gz` in folder (plain preferred), or None if neither is there."""
    for path in (folder / stem, folder / f"{stem}.gz"):
        if path.is_file():
            return path
    return None


def missing_idx_files(folder: Path) -> list[str]:
    """Names of the standard IDX files that folder lacks in both plain and .gz form."""
    return [stem for stem in IDX_FILES.values() if find_idx_file(folder, stem) is None]


def read_idx(path: Path, magic: int) -> np.ndarray:
    """Parse one uint8 IDX file into an array of the shape its header gives; ConfigError if corrupt."""
    fix = "replace it with an intact copy of the original file"
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, zlib.error) as err:  # BadGzipFile is an OSError; a cut .gz ends in EOFError
        raise ConfigError(f"{path}: cannot read it ({type(err).__name__}: {err}); {fix}") from err
    num_dims = magic & 0xFF
    header_size = 4 + 4 * num_dims
    if len(raw) < 4:
        raise ConfigError(f"{path}: {'empty' if not raw else f'only {len(raw)} bytes'}, not an IDX file; {fix}")
    found = int.from_bytes(raw[:4], "big")
    if found != magic:
        raise ConfigError(f"{path}: IDX magic number is {found}, expected {magic}; the file is corrupt or "
                          f"not the file its name says; {fix}")
    if len(raw) < header_size:
        raise ConfigError(f"{path}: truncated inside its {header_size}-byte header; {fix}")
    shape = struct.unpack(f">{num_dims}I", raw[4:header_size])
    expected = math.prod(shape)
    if len(raw) - header_size != expected:
        raise ConfigError(f"{path}: header says shape {shape} ({expected:,} bytes) but the file holds "
                          f"{len(raw) - header_size:,} bytes after it (truncated or corrupt); {fix}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header_size).reshape(shape)


def read_idx_folder(folder: Path, num_classes: int):
    """Read and cross-check the four IDX files in folder.

    Returns (image_shape, train_x, train_y, test_x, test_y): images flattened to (N, H*W) uint8,
    labels (N,) int64. Raises ConfigError naming the file for anything missing or inconsistent.
    """
    arrays, paths = {}, {}
    for key, stem in IDX_FILES.items():
        path = find_idx_file(folder, stem)
        if path is None:
            raise ConfigError(f"{folder}: no {stem} (or {stem}.gz); the folder needs all four IDX files "
                              f"{', '.join(IDX_FILES.values())}")
        paths[key] = path
        arrays[key] = read_idx(path, IMAGES_MAGIC if key.endswith("_x") else LABELS_MAGIC)

    image_hw = arrays["train_x"].shape[1:]
    for split in ("train", "test"):
        images, labels = arrays[f"{split}_x"], arrays[f"{split}_y"]
        if len(images) == 0:
            raise ConfigError(f"{paths[f'{split}_x']}: holds no images (its header says 0); "
                              "replace it with an intact copy of the original file")
        if len(labels) != len(images):
            raise ConfigError(f"{paths[f'{split}_y']}: {len(labels):,} labels for {len(images):,} images in "
                              f"{paths[f'{split}_x']}; the two files must come from the same release")
        if images.shape[1:] != image_hw:
            raise ConfigError(f"{paths[f'{split}_x']}: images are {images.shape[1:]}, but "
                              f"{paths['train_x']} has {image_hw}; both must have the same size")
        if len(labels) and labels.max() >= num_classes:
            raise ConfigError(f"{paths[f'{split}_y']}: label {labels.max()} found, expected "
                              f"0..{num_classes - 1}; the file is corrupt or belongs to another data set")

    def images(key):  # copy: frombuffer gives a read-only view, which torch warns about
        return torch.from_numpy(arrays[key].reshape(len(arrays[key]), -1).copy())

    def labels(key):
        return torch.from_numpy(arrays[key].astype(np.int64))

    image_shape = (1, *image_hw)  # greyscale: one channel
    return image_shape, images("train_x"), labels("train_y"), images("test_x"), labels("test_y")
