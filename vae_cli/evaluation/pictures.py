"""Pictures: image grids (TensorBoard and PNG files), latent traversals, interpolations, the projector."""
import shutil
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from vae_cli.latents import CategoricalLatent

NUM_ROWS = 8  # latents traversed, and pairs of test examples interpolated
NUM_STEPS = 9  # columns of a Gaussian traversal and points of an interpolation (endpoints included)
QUANTILES = (0.02, 0.98)  # a Gaussian latent is swept over this range of its test latent means
MAX_EMBEDDING_POINTS = 10_000  # test points in the projector (its sprite holds one image per point)
GRID_COLUMNS = 8  # images per row of a saved grid, as TensorBoard's add_images tiles a batch
PNG_CHANNELS = (1, 3)  # grey or RGB: uint8 arrays (H, W) and (H, W, 3) are Pillow's modes L and RGB


def tile(images: torch.Tensor, pad: int = 1) -> torch.Tensor:
    """(R, S, C, H, W) -> one image (1, C, R*(H+pad)+pad, S*(W+pad)+pad): R rows of S, on white lines."""
    rows, steps, channels, height, width = images.shape
    canvas = torch.ones(channels, rows * (height + pad) + pad, steps * (width + pad) + pad)
    padded = F.pad(images.float().cpu(), (pad, 0, pad, 0), value=1.0)  # (R, S, C, H+pad, W+pad)
    body = padded.permute(2, 0, 3, 1, 4).reshape(channels, rows * (height + pad), steps * (width + pad))
    canvas[:, :-pad, :-pad] = body
    return canvas.unsqueeze(0)


def grid(images: torch.Tensor, nrow: int = GRID_COLUMNS, pad: int = 1) -> torch.Tensor:
    """(N, C, H, W) -> one image (1, C, H', W'): rows of min(nrow, N) images in order, on white lines
    (tile); a last row that is not full is completed with white images."""
    count, channels, height, width = images.shape
    columns = min(nrow, count)
    rows = -(-count // columns)  # ceil
    blank = torch.ones(rows * columns - count, channels, height, width)
    filled = torch.cat([images.detach().float().cpu(), blank])  # (R*S, C, H, W)
    return tile(filled.view(rows, columns, channels, height, width), pad)


def save_png(images: torch.Tensor, path, nrow: int = GRID_COLUMNS) -> Path:
    """Write images (N, C, H, W) in [0, 1] as one PNG grid of nrow columns (grid); a single image
    (1, C, H, W), e.g. one tile() made, is written as it is. C is 1 (grey) or 3 (RGB); values are
    clamped to [0, 1] and rounded to the nearest of 256 levels. Returns the path."""
    if images.dim() != 4 or images.shape[1] not in PNG_CHANNELS:
        raise ValueError(f"save_png takes images (N, C, H, W) with C = 1 or 3, not {tuple(images.shape)}")
    image = grid(images, nrow)[0] if images.shape[0] > 1 else images[0].detach().float().cpu()  # (C, H, W)
    levels = image.clamp(0, 1).mul(255).round().to(torch.uint8).permute(1, 2, 0).numpy()  # (H, W, C)
    path = Path(path)
    Image.fromarray(np.ascontiguousarray(levels[..., 0] if levels.shape[-1] == 1 else levels)).save(
        path, format="PNG")
    return path


@torch.inference_mode()
def decode_mean(model, z: torch.Tensor, shape) -> torch.Tensor:
    """Mean of p(x|z) as images: z (..., latent) -> (..., C, H, W)."""
    return model.likelihood.mean(model.decode(z)).unflatten(-1, tuple(shape))  # (..., D) -> images


def traversal(model, means: torch.Tensor, activity: torch.Tensor, shape) -> torch.Tensor:
    """The NUM_ROWS most active latents, one per row, each swept with the others held at the posterior
    mean of the first test example: (R, S, C, H, W).

    Gaussian: z_v takes NUM_STEPS values spread over the 2nd to 98th percentile of its test latent
    means. Categorical: variable v takes each of its C classes, the others their most probable class.
    """
    order = activity.argsort(descending=True)[:NUM_ROWS]  # (R,)
    if isinstance(model.latent, CategoricalLatent):
        base = F.one_hot(means[0].argmax(-1), model.latent.num_classes).to(means.dtype)  # (V, C)
        z = base.expand(len(order), model.latent.num_classes, *base.shape).clone()  # (R, C, V, C)
        z[torch.arange(len(order)), :, order] = torch.eye(model.latent.num_classes, dtype=means.dtype)
    else:
        levels = torch.tensor(QUANTILES, dtype=means.dtype, device=means.device)
        low, high = torch.quantile(means[:, order], levels, dim=0)  # (R,) each
        t = torch.linspace(0, 1, NUM_STEPS, dtype=means.dtype, device=means.device)
        z = means[0].expand(len(order), NUM_STEPS, means.shape[1]).clone()  # (R, S, K)
        z[torch.arange(len(order)), :, order] = low[:, None] + t * (high - low)[:, None]  # (R, S)
    return decode_mean(model, z, shape)


def interpolation(model, x: torch.Tensor, means: torch.Tensor, shape) -> torch.Tensor:
    """Pairs of test examples (x_2i, x_2i+1), i < NUM_ROWS: each row shows x_2i, the decoded means of
    z = (1 - t) E_q[z|x_2i] + t E_q[z|x_2i+1] for NUM_STEPS values of t in [0, 1], then x_2i+1:
    (R, S+2, C, H, W). For categorical latents z mixes the class probabilities (a relaxed one-hot)."""
    rows = min(NUM_ROWS, x.shape[0] // 2)
    start, end = means[0:2 * rows:2], means[1:2 * rows:2]  # (R, ...)
    t = torch.linspace(0, 1, NUM_STEPS, dtype=means.dtype, device=means.device)
    t = t.view(1, -1, *[1] * (means.dim() - 1))  # (1, S, 1...) against (R, 1, ...)
    z = (1 - t) * start.unsqueeze(1) + t * end.unsqueeze(1)  # (R, S, ...)
    images = decode_mean(model, z, shape)  # (R, S, C, H, W)
    ends = x[:2 * rows].view(rows, 2, *shape)
    return torch.cat([ends[:, :1], images, ends[:, 1:]], dim=1)


def write_embedding(writer, means: torch.Tensor, labels: torch.Tensor, images: torch.Tensor, step: int,
                    tag: str = "test_latent_means") -> None:
    """Latent means (flattened) with their labels and images in TensorBoard's projector.

    SummaryWriter.add_embedding writes <run>/<step:05d>/<tag>/; a previous evaluation's folder for the
    same step is replaced rather than warned about.
    """
    n = min(MAX_EMBEDDING_POINTS, means.shape[0])
    folder = Path(writer.writer.get_logdir()) / f"{step:05d}" / tag
    shutil.rmtree(folder, ignore_errors=True)
    writer.writer.add_embedding(means[:n].flatten(1).cpu(), metadata=labels[:n].tolist(),
                                label_img=images[:n].float().cpu(), global_step=step, tag=tag)
