"""Training throughput, images/s: one epoch of the default run, and what the hand-written step buys.

Every path trains the default model (784-400-20 MLP, Bernoulli likelihood, dynamic binarization, Adam
1e-3, batch 128) on 60,000 28x28 images: Fashion-MNIST when installed, else synthetic images of that
shape. Whole epochs, by train(cfg) itself (its own images/s of the epoch, from status.json):
- vae-cli: the default run; train_step=auto takes the hand-written step of estimators/fused_reparam.py
  on the CPU (elsewhere autograd);
- vae-cli, autograd: train_step=autograd, the same loop with the step by autograd (what the hand-written
  step buys a user);
- conventional: a Dataset returning one example, a shuffling DataLoader, torch.bernoulli, torch's
  default Adam (pytorch/examples' vae), for scale;
- baseline (--baseline DIR): train(cfg) of another checkout of vae-cli, e.g. the commit before a change
  (`git worktree add /tmp/old <commit>`), imported side by side as a renamed copy: before against after.
--steps adds the training step alone on the same prepared batches (no loop, no logging): the
hand-written step and AutogradStep, and the step's floor: its matrix products alone, at the rate this
CPU's BLAS runs them (what the step's other work, the loop and the epoch's validation add on top).

The paths alternate, round after round, in one process, so that load on a shared machine hits all of
them, each round starting at the next path (so no path is always first); each path's best round (a
quiet stretch) and median round are printed, and ratios to vae-cli.

    python benchmarks/train_throughput.py [--rounds 5] [--device auto] [--baseline DIR] [--steps]
                                          [--no-conventional] [--max-steps N]
"""
import argparse
import importlib
import json
import re
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_module

from vae_cli.build import build_data, build_estimator, build_model, build_optimizer
from vae_cli.device import resolve_device
from vae_cli.estimators.train_step import AutogradStep, FusedReparamStep
from vae_cli.train import train

FASHION = Path("/usr/share/datasets/fashion-mnist")


def config(device: str, *overrides: str, package: str = "vae_cli"):
    data = ["data=fashion_mnist", "data.val_fraction=0"] if FASHION.is_dir() else [
        "data=synthetic", "data.num_train=60000", "data.num_test=1000", "data.image_size=28",
        "data.val_fraction=0"]
    with initialize_config_module(f"{package}.configs", version_base="1.3"):
        # ~eval: the end-of-training evaluation is not part of an epoch's throughput.
        return compose("train", overrides=[*data, "epochs=1", f"device={device}", "~eval", *overrides])


def import_baseline(checkout: Path, into: Path):
    """(train, package name) of the vae-cli checkout at checkout, copied into into/ as the package
    vae_cli_baseline (configs/ as vae_cli_baseline.configs, as pyproject installs it) with every
    `vae_cli` name in its code and configs renamed, so that it runs beside this one."""
    package = into / "vae_cli_baseline"
    shutil.copytree(checkout / "vae_cli", package)
    shutil.copytree(checkout / "configs", package / "configs")
    for path in [*package.rglob("*.py"), *package.rglob("*.yaml")]:
        path.write_text(re.sub(r"\bvae_cli\b", "vae_cli_baseline", path.read_text()))
    sys.path.insert(0, str(into))
    return importlib.import_module("vae_cli_baseline.train").train, "vae_cli_baseline"


def epoch_images_per_sec(train_fn, cfg) -> float:
    """train_fn(cfg, run_dir)'s own figure for its (one) epoch: status.json, or metrics (older code)."""
    with tempfile.TemporaryDirectory() as run_dir:
        metrics = train_fn(cfg, run_dir)
        status = Path(run_dir) / "status.json"
        if status.is_file():
            return json.loads(status.read_text())["images_per_sec"]
        return metrics["train/images_per_sec"]


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


def step_paths(cfg, images: torch.Tensor, device: torch.device, num_steps: int):
    """{name: run()} where run() times num_steps training steps on batches prepared 16 at a time, as
    the training loop prepares them, and returns images/s (each path keeps its model and optimizer)."""
    num_steps = -(-num_steps // 16) * 16  # whole blocks
    def make(kind):
        torch.manual_seed(cfg.seed)
        model = build_model(cfg, images.shape[1]).to(device)
        estimator = build_estimator(cfg, model).to(device)
        optimizer = build_optimizer(cfg, list(model.parameters()), device)
        step = (AutogradStep(model, estimator, optimizer, cfg.beta) if kind is AutogradStep
                else kind(model, optimizer, cfg.beta))
        generator = torch.Generator(device=device).manual_seed(cfg.seed)
        pixels = images.to(device)

        def run() -> float:
            start = time.perf_counter()
            for first in range(0, num_steps, 16):
                index = torch.randint(0, pixels.shape[0], (16 * cfg.batch_size,), generator=generator,
                                      device=device)
                block = pixels.index_select(0, index).view(16, cfg.batch_size, -1)
                for x in model.likelihood.prepare_pixels(block, generator):
                    step(x)
            if device.type == "cuda":
                torch.cuda.synchronize()
            return num_steps * cfg.batch_size / (time.perf_counter() - start)
        run()  # warm-up: the optimizer's state, the allocator
        return run
    paths = {"step: hand-written": make(FusedReparamStep), "step: autograd": make(AutogradStep)}
    paths["step's floor: products"] = products_alone(build_model(cfg, images.shape[1]).to(device), cfg.batch_size,
                                                     num_steps)
    return paths


def products_alone(model, batch_size: int, num_steps: int):
    """run() -> images/s of the step's matrix products alone, on random operands of the batch's shapes: for
    each Linear layer of the encoder and decoder its forward product and its weight gradient, and the input
    gradient for every layer but the first (nothing needs the gradient of the pixels). No step can beat it
    without computing less, or in lower precision."""
    layers = [m for part in (model.encoder, model.decoder) for m in part.modules() if isinstance(m, torch.nn.Linear)]
    device = layers[0].weight.device
    operands = [(torch.rand(batch_size, m.in_features, device=device), m.weight.detach().clone(),
                 torch.rand(batch_size, m.out_features, device=device)) for m in layers]

    def run() -> float:
        start = time.perf_counter()
        for _ in range(num_steps):
            for i, (x, w, grad_y) in enumerate(operands):
                torch.mm(x, w.t())  # forward
                torch.mm(grad_y.t(), x)  # weight gradient
                if i:
                    torch.mm(grad_y, w)  # input gradient
        if device.type == "cuda":
            torch.cuda.synchronize()
        return num_steps * batch_size / (time.perf_counter() - start)
    run()
    return run


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds; best and median printed")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--baseline", type=Path, help="another vae-cli checkout, run beside this one")
    parser.add_argument("--steps", action="store_true", help="also time the training step alone")
    parser.add_argument("--no-conventional", action="store_true", help="skip the DataLoader path")
    parser.add_argument("--max-steps", type=int, help="train only this many steps a round (not the DataLoader "
                        "path): shorter rounds, more of them, for a busy machine")
    args = parser.parse_args()
    short = [] if args.max_steps is None else [f"max_steps={args.max_steps}"]
    cfg = config(args.device, *short)
    device = resolve_device(args.device)
    images = build_data(cfg).train_x
    paths = {"vae-cli": lambda: epoch_images_per_sec(train, cfg)}
    if args.baseline is not None:
        baseline_dir = Path(tempfile.mkdtemp())
        baseline_train, package = import_baseline(args.baseline, baseline_dir)
        baseline_cfg = config(args.device, *short, package=package)
        paths["baseline"] = lambda: epoch_images_per_sec(baseline_train, baseline_cfg)
    autograd_cfg = config(args.device, "train_step=autograd", *short)
    paths["vae-cli, autograd"] = lambda: epoch_images_per_sec(train, autograd_cfg)
    if not args.no_conventional:
        paths["conventional"] = lambda: conventional_epoch(cfg, images, device)
    if args.steps:
        paths.update(step_paths(cfg, images, device, args.max_steps or 128))
    print(f"data: {cfg.data._target_.split('.')[-1]}, {images.shape[0]} images of {images.shape[1]} "
          f"pixels; device {device}; torch {torch.__version__}, {torch.get_num_threads()} threads")
    figures = {name: [] for name in paths}
    names = list(paths)
    for round_ in range(args.rounds):  # alternate, so that load on a shared machine hits every path
        # and rotate the order: a path run first in every round read ~10 % low against an identical copy
        for name in names[round_ % len(names):] + names[:round_ % len(names)]:
            figures[name].append(paths[name]())
        print(f"round {round_ + 1}: " + ", ".join(f"{name} {v[-1]:,.0f}" for name, v in figures.items())
              + " images/s", flush=True)
    best = {name: max(v) for name, v in figures.items()}
    median = {name: statistics.median(v) for name, v in figures.items()}
    print(f"{'images/s':28s} {'best':>9s} {'median':>9s}   best / vae-cli  median / vae-cli")
    for name in figures:
        print(f"{name:28s} {best[name]:9,.0f} {median[name]:9,.0f}   {best[name] / best['vae-cli']:14.3f}"
              f"  {median[name] / median['vae-cli']:15.3f}")
    print(json.dumps({"best": best, "median": median, "rounds": figures}))


if __name__ == "__main__":
    main()
