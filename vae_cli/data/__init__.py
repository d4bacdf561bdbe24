"""Image data sets for the VAE runs: each loader returns an ImageData of flattened uint8 images."""

from vae_cli.data.image_data import ImageData
from vae_cli.data.sources import load_fashion_mnist, load_mnist
from vae_cli.data.synthetic import load_synthetic

__all__ = ["ImageData", "load_fashion_mnist", "load_mnist", "load_synthetic"]
