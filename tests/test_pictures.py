"""Image grids and PNG files: layout checked pixel by pixel, files read back with Pillow."""
import numpy as np
import pytest
import torch
from PIL import Image

from vae_cli.evaluation.pictures import grid, save_png


def numbered_images(count: int, channels: int, height: int, width: int) -> torch.Tensor:
    """Image i filled with the value i / (2 * count), so every image of the grid is recognisable."""
    values = torch.arange(count, dtype=torch.float32) / (2 * count)
    return values.view(count, 1, 1, 1).expand(count, channels, height, width).clone()


def test_grid_puts_images_in_rows_on_white_lines():
    images = numbered_images(5, 1, 2, 3)  # 5 images of 2 x 3 in rows of 2: 3 rows, the last half empty
    canvas = grid(images, nrow=2)
    assert canvas.shape == (1, 1, 3 * (2 + 1) + 1, 2 * (3 + 1) + 1)
    covered = torch.zeros(canvas.shape[2:], dtype=torch.bool)
    for i in range(6):
        row, column = divmod(i, 2)
        top, left = 1 + row * 3, 1 + column * 4
        cell = canvas[0, 0, top:top + 2, left:left + 3]
        expected = images[i, 0] if i < 5 else torch.ones(2, 3)  # the sixth cell is a white filler
        assert torch.equal(cell, expected), (i, cell)
        covered[top:top + 2, left:left + 3] = True
    assert bool((canvas[0, 0][~covered] == 1).all())  # everything else is the white lines


def test_grid_of_fewer_images_than_columns_is_one_row():
    canvas = grid(numbered_images(3, 1, 2, 2), nrow=8)
    assert canvas.shape == (1, 1, 2 + 2, 3 * (2 + 1) + 1)


def test_grey_png_round_trips_to_the_grid(tmp_path):
    images = torch.rand(10, 1, 4, 5, generator=torch.Generator().manual_seed(0))
    path = save_png(images, tmp_path / "samples.png", nrow=4)
    expected = grid(images, nrow=4)[0, 0]  # (H, W)
    with Image.open(path) as png:
        assert png.format == "PNG" and png.mode == "L"
        assert png.size == (expected.shape[1], expected.shape[0])  # Pillow: (width, height)
        pixels = torch.from_numpy(np.asarray(png, dtype=np.float32) / 255)
    assert (pixels - expected).abs().max() <= 0.5 / 255 + 1e-6  # the nearest of 256 levels


def test_rgb_tiled_image_is_written_as_it_is(tmp_path):
    image = torch.rand(1, 3, 7, 6, generator=torch.Generator().manual_seed(1))
    path = save_png(image, tmp_path / "reconstructions.png")
    with Image.open(path) as png:
        assert png.mode == "RGB" and png.size == (6, 7)
        pixels = torch.from_numpy(np.asarray(png, dtype=np.float32) / 255).permute(2, 0, 1)  # (C, H, W)
    assert (pixels - image[0]).abs().max() <= 0.5 / 255 + 1e-6


def test_values_outside_the_unit_interval_are_clamped(tmp_path):
    image = torch.tensor([[-0.5, 0.0, 0.5, 1.0, 1.5]]).view(1, 1, 1, 5)
    with Image.open(save_png(image, tmp_path / "clamped.png")) as png:
        assert np.asarray(png).tolist() == [[0, 0, 128, 255, 255]]


@pytest.mark.parametrize("shape", [(2, 2, 4, 4), (1, 4, 4)])
def test_other_shapes_are_refused(tmp_path, shape):
    with pytest.raises(ValueError, match="C = 1 or 3"):
        save_png(torch.zeros(shape), tmp_path / "bad.png")
    assert not (tmp_path / "bad.png").exists()
