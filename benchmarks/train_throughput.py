"""Images/second of one training epoch: vae-cli's on-device path against the conventional DataLoader path.

Both train the default model (784-400-20 MLP, Bernoulli likelihood, dynamic binarization, Adam 1e-3,
batch 128) on 60,000 28x28 images: Fashion-MNIST when installed, else synthetic images of that shape.
vae-cli's path is train(cfg) itself (data as one uint8 tensor on the device, batches by index,
binarization on the device, fused Adam); the conventional path is a torch Dataset returning one
example at a time, a shuffling DataLoader, and a transfer per batch (as in pytorch/examples' vae).

    python benchmarks/train_throughput.py [--rounds 2] [--device auto]
"""
import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_module

from vae_cli.build import build_estimator, build_model
from vae_cli.device import resolve_device
from vae_cli.train import train

FASHION = Path("/usr/share/datasets/fashion-mnist")


def config(device: str):
    data = ["data=fashion_mnist", "data.val_fraction=0"] if FASHION.is_dir() else [
        "data=synthetic", "data.num_train=60000", "data.num_test=1000", "data.image_size=28",
        "data.val_fraction=0"]
    with initialize_config_module("vae_cli.configs", version_base="1.3"):
        return compose("train", overrides=[*data, "epochs=1", f"device={device}"])


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


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds; the best is kept")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    cfg = config(args.device)
    device = resolve_device(args.device)
    from vae_cli.build import build_data
    images = build_data(cfg).train_x
    print(f"data: {cfg.data._target_.split('.')[-1]}, {images.shape[0]} images of {images.shape[1]} "
          f"pixels; device {device}; torch {torch.__version__}, {torch.get_num_threads()} threads")
    ours, conventional = [], []
    for round_ in range(args.rounds):  # alternate, so that load on a shared machine hits both
        with tempfile.TemporaryDirectory() as run_dir:
            ours.append(train(cfg, run_dir)["train/images_per_sec"])
        conventional.append(conventional_epoch(cfg, images, device))
        print(f"round {round_ + 1}: vae-cli {ours[-1]:,.0f} images/s, conventional "
              f"{conventional[-1]:,.0f} images/s")
    best_ours, best_conv = max(ours), max(conventional)
    print(f"vae-cli path       {best_ours:10,.0f} images/s")
    print(f"conventional path  {best_conv:10,.0f} images/s")
    print(f"ratio              {best_ours / best_conv:10.2f}x")
    print(json.dumps({"vae_cli": best_ours, "conventional": best_conv, "ratio": best_ours / best_conv}))


if __name__ == "__main__":
    main()
