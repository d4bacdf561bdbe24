"""A tiny seeded image data set for tests: each class is a blob prototype, each image a noisy copy."""

import torch

from vae_cli.data.image_data import ImageData, check_val_fraction, split_validation
from vae_cli.errors import ConfigError

NUM_BLOBS = 3  # Gaussian blobs summed into each class prototype
BLOB_WIDTH = 0.2  # blob standard deviation, as a fraction of the image side
NOISE_SCALE = 0.1  # std of the Gaussian pixel noise, on the [0, 1] pixel scale


def _check_count(key: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"data.{key}={value!r} is not accepted; use an integer >= {minimum}")
    return value


def _prototypes(num_classes: int, image_size: int, generator: torch.Generator) -> torch.Tensor:
    """(K, H, W) prototypes in [0, 1]: each the clipped sum of NUM_BLOBS random Gaussian blobs."""
    centres = torch.rand(num_classes, NUM_BLOBS, 2, generator=generator) * (image_size - 1)  # (K, B, 2)
    grid = torch.arange(image_size, dtype=torch.float32)
    rows = grid.view(1, 1, -1, 1) - centres[..., 0].view(num_classes, NUM_BLOBS, 1, 1)  # (K, B, H, 1)
    cols = grid.view(1, 1, 1, -1) - centres[..., 1].view(num_classes, NUM_BLOBS, 1, 1)  # (K, B, 1, W)
    width = BLOB_WIDTH * image_size
    blobs = torch.exp(-(rows**2 + cols**2) / (2 * width**2))  # (K, B, H, W)
    return blobs.sum(dim=1).clamp(max=1.0)  # (K, H, W)


def _sample(prototypes: torch.Tensor, num_examples: int, generator: torch.Generator):
    """Class-balanced labels in shuffled order, and uint8 images = prototype + noise, flattened."""
    num_classes = len(prototypes)
    y = (torch.arange(num_examples) % num_classes)[torch.randperm(num_examples, generator=generator)]
    noise = NOISE_SCALE * torch.randn(num_examples, *prototypes.shape[1:], generator=generator)
    images = (prototypes[y] + noise).clamp(0.0, 1.0)  # (N, H, W)
    x = torch.round(images * 255).to(torch.uint8).reshape(num_examples, -1)  # (N, H*W)
    return x, y.to(torch.int64)


def load_synthetic(num_train=512, num_test=128, image_size=8, num_classes=4, val_fraction=0.1,
                   seed=0) -> ImageData:
    """Deterministic by seed; val_fraction of the num_train images is held out for validation."""
    _check_count("num_train", num_train, 2)
    _check_count("num_test", num_test, 1)
    _check_count("image_size", image_size, 2)
    _check_count("num_classes", num_classes, 2)
    check_val_fraction(val_fraction)
    generator = torch.Generator().manual_seed(seed)
    prototypes = _prototypes(num_classes, image_size, generator)
    train_x, train_y = _sample(prototypes, num_train, generator)
    test_x, test_y = _sample(prototypes, num_test, generator)
    train_x, train_y, val_x, val_y = split_validation(train_x, train_y, val_fraction, seed)
    source = (f"synthetic: {num_classes} blob prototypes + noise (std {NOISE_SCALE}), "
              f"{image_size}x{image_size}, seed {seed}")
    return ImageData(name="synthetic", source=source, image_shape=(1, image_size, image_size),
                     train_x=train_x, train_y=train_y, val_x=val_x, val_y=val_y, test_x=test_x,
                     test_y=test_y, num_classes=num_classes)
