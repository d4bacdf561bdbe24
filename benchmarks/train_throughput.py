"""Images/second of one training epoch: vae-cli's on-device path against the conventional DataLoader path.

All paths train the default model (784-400-20 MLP, Bernoulli likelihood, dynamic binarization, Adam
1e-3, batch 128) on 60,000 28x28 images: Fashion-MNIST when installed, else synthetic images of that
shape. vae-cli's path is train(cfg) itself (data as one uint8 tensor on the device, batches gathered
by index and binarized there 16 at a time, the hand-written gradient of estimators/fused_reparam.py
with feature-major products and fused Adam applied a layer at a time); the conventional path is a
torch Dataset returning one example at a time, a shuffling DataLoader, and a transfer per batch (as in
pytorch/examples' vae).
For reference, two more: train(cfg) with train_step=autograd (what the hand-written gradient buys),
and the step written by hand with autograd on the same tensors (the model's layers, the
log-likelihood from logits, the closed-form KL, fused Adam): the floor of an eager autograd loop.

The paths alternate, round after round, so that load on a shared machine hits all of them; each
path's best round is kept (a quiet stretch of the machine), and the median round is printed too.

    python benchmarks/train_throughput.py [--rounds 5] [--device auto]
"""
import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_module

from vae_cli.build import build_data, build_estimator, build_model
from vae_cli.device import resolve_device
from vae_cli.train import train

FASHION = Path("/usr/share/datasets/fashion-mnist")


def config(device: str, *overrides: str):
    data = ["data=fashion_mnist", "data.val_fraction=0"] if FASHION.is_dir() else [
        "data=synthetic", "data.num_train=60000", "data.num_test=1000", "data.image_size=28",
        "data.val_fraction=0"]
    with initialize_config_module("vae_cli.configs", version_base="1.3"):
        # ~eval: the end-of-training evaluation is not part of an epoch's throughput.
        return compose("train", overrides=[*data, "epochs=1", f"device={device}", "~eval", *overrides])


class OneAtATime(torch.utils.data.Dataset):
    """The conventional dataset: one example per __getitem__, converted to float there."""

    def __init__(self, images: torch.Tensor):
        self.images = images

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return self.images[i].float() / 255.0


def conventional_epoch(cfg, images: torch.Tensor, device: torch.device) -> float:
    torch.manual_seed(cfg.seed)
    model = build_model(cfg, images.shape[1]).to(device)
    estimator = build_estimator(cfg, model)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.optimizer.lr)
    loader = torch.utils.data.DataLoader(OneAtATime(images), batch_size=cfg.batch_size, shuffle=True,
                                         drop_last=True, num_workers=0)
    seen, start = 0, time.perf_counter()
    for x in loader:
        x = torch.bernoulli(x.to(device))
        terms = estimator(model, x, cfg.beta)
        optimizer.zero_grad()
        terms.loss.mean().backward()
        optimizer.step()
        seen += x.shape[0]
    if device.type == "cuda":
        torch.cuda.synchronize()
    return seen / (time.perf_counter() - start)


def by_hand_epoch(cfg, images: torch.Tensor, device: torch.device) -> float:
    """The same step written out by hand with autograd on the device-resident uint8 images (no vae-cli
    objects; binarized by a float uniform, as vae-cli did before its byte-based binarize_pixels)."""
    torch.manual_seed(cfg.seed)
    model = build_model(cfg, images.shape[1]).to(device)
    encoder, decoder = model.encoder, model.decoder
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.optimizer.lr, fused=True)
    images = images.to(device)
    batch_size, num_steps = cfg.batch_size, images.shape[0] // cfg.batch_size
    perm = torch.randperm(images.shape[0], device=device)
    start = time.perf_counter()
    for i in range(num_steps):
        x = images.index_select(0, perm[i * batch_size:(i + 1) * batch_size]).float().div_(255)
        u = torch.rand(x.shape, device=device)
        x = torch.lt(u, x, out=u)  # dynamic binarization
        loc, log_var = encoder(x).chunk(2, dim=-1)
        scale = torch.exp(0.5 * log_var)
        z = loc + scale * torch.randn_like(loc)
        recon = -F.binary_cross_entropy_with_logits(decoder(z), x, reduction="none").sum(-1)
        kl = 0.5 * (loc.pow(2) + scale.pow(2) - 1 - log_var).sum(-1)
        optimizer.zero_grad(set_to_none=True)
        (kl - recon).mean().backward()
        optimizer.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return num_steps * batch_size / (time.perf_counter() - start)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds; the best is kept")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    cfg = config(args.device)
    autograd_cfg = config(args.device, "train_step=autograd")
    device = resolve_device(args.device)
    images = build_data(cfg).train_x
    print(f"data: {cfg.data._target_.split('.')[-1]}, {images.shape[0]} images of {images.shape[1]} "
          f"pixels; device {device}; torch {torch.__version__}, {torch.get_num_threads()} threads")
    paths = {"vae-cli path (train)": [], "conventional path": [], "vae-cli, autograd": [],
             "by hand, autograd": []}
    for round_ in range(args.rounds):  # alternate, so that load on a shared machine hits every path
        with tempfile.TemporaryDirectory() as run_dir:
            paths["vae-cli path (train)"].append(train(cfg, run_dir)["train/images_per_sec"])
        paths["conventional path"].append(conventional_epoch(cfg, images, device))
        with tempfile.TemporaryDirectory() as run_dir:
            paths["vae-cli, autograd"].append(train(autograd_cfg, run_dir)["train/images_per_sec"])
        paths["by hand, autograd"].append(by_hand_epoch(cfg, images, device))
        print(f"round {round_ + 1}: " + ", ".join(f"{name} {v[-1]:,.0f}" for name, v in paths.items())
              + " images/s")
    best = {name: max(v) for name, v in paths.items()}
    median = {name: statistics.median(v) for name, v in paths.items()}
    conventional = "conventional path"
    print(f"{'images/s':22s} {'best':>9s} {'median':>9s}   best/conv  median/conv")
    for name in paths:
        print(f"{name:22s} {best[name]:9,.0f} {median[name]:9,.0f}   "
              f"{best[name] / best[conventional]:8.2f}x  {median[name] / median[conventional]:10.2f}x")
    print(json.dumps({"best": best, "median": median,
                      "ratio": best["vae-cli path (train)"] / best[conventional]}))


if __name__ == "__main__":
    main()
