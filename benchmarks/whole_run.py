"""Whole-process time of vae-train against pytorch/examples' vae/main.py, both on Fashion-MNIST, 5 epochs.

    python benchmarks/whole_run.py [--rounds 3] [--epochs 5]

Two processes, timed from start to exit, alternating for --rounds rounds so that a shared machine's
load hits both alike; printed: each process's wall time per round, the medians and their ratio.
Issue 13.5's target: vae-train at least 3x faster.

(a) REFERENCE below, run as its own `python -c` process: pytorch/examples' vae/main.py (the classic
    version: 784-400-20-400-784 MLP with ReLU, sigmoid outputs, loss = summed binary cross-entropy on
    the grey levels + the analytic KL, Adam lr 1e-3, batch 128, shuffled DataLoaders, seed 1, a test
    pass and the reconstruction and sample images after each epoch), with torchvision's pieces that do
    not import beside torch 2.13.0 here written out as torchvision does them: the FashionMNIST
    dataset's __getitem__ makes a PIL image from the uint8 array and converts it as ToTensor does
    (np.array(pic) -> view (H, W, 1) -> permute to (1, H, W) -> float / 255); the IDX files are read
    uncompressed, as torchvision keeps them after its first download; save_image is a PIL grid.
(b) `vae-train data=fashion_mnist epochs=5 ~eval hydra.run.dir=<temporary>` (its defaults otherwise:
    the same network, dynamically binarized pixels, the hand-written training step, a validation
    pass, TensorBoard, checkpoints and picture files each epoch).
"""
import argparse
import gzip
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

FASHION = Path("/usr/share/datasets/fashion-mnist")

REFERENCE = r'''
import sys
from pathlib import Path

import numpy as np
import torch
import torch.utils.data
from PIL import Image
from torch import nn, optim
from torch.nn import functional as F

folder, results, epochs = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
batch_size, log_interval, seed = 128, 10, 1
torch.manual_seed(seed)
device = torch.device("cpu")


def read_idx(path):  # torchvision.datasets.mnist.read_sn3_pascalvincent_tensor, for uint8 files
    data = path.read_bytes()
    dims = int.from_bytes(data[2:4], "big") & 0xFF
    shape = [int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(dims)]
    return torch.from_numpy(np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * dims).reshape(shape))


def to_tensor(pic):  # torchvision.transforms.ToTensor on a mode "L" PIL image
    img = torch.from_numpy(np.array(pic, np.uint8, copy=True))
    img = img.view(pic.size[1], pic.size[0], 1)
    img = img.permute((2, 0, 1)).contiguous()
    return img.to(dtype=torch.get_default_dtype()).div(255)


class FashionMNIST(torch.utils.data.Dataset):  # torchvision.datasets.FashionMNIST, downloaded already
    def __init__(self, train):
        prefix = "train" if train else "t10k"
        self.data = read_idx(folder / f"{prefix}-images-idx3-ubyte")
        self.targets = read_idx(folder / f"{prefix}-labels-idx1-ubyte").long()

    def __getitem__(self, index):
        img, target = self.data[index], int(self.targets[index])
        img = Image.fromarray(img.numpy(), mode="L")
        return to_tensor(img), target

    def __len__(self):
        return len(self.data)


def save_image(tensor, path, nrow=8, padding=2):  # torchvision.utils.save_image: a grid, PNG
    n = tensor.size(0)
    ncol = (n + nrow - 1) // nrow
    h, w = tensor.size(2) + padding, tensor.size(3) + padding
    grid = torch.zeros(ncol * h + padding, nrow * w + padding)
    for k in range(n):
        r, c = divmod(k, nrow)
        grid[r * h + padding:(r + 1) * h, c * w + padding:(c + 1) * w] = tensor[k, 0]
    array = grid.mul(255).add_(0.5).clamp_(0, 255).to(torch.uint8).numpy()
    Image.fromarray(array).save(path)


train_loader = torch.utils.data.DataLoader(FashionMNIST(train=True), batch_size=batch_size, shuffle=True)
test_loader = torch.utils.data.DataLoader(FashionMNIST(train=False), batch_size=batch_size, shuffle=True)


class VAE(nn.Module):
    def __init__(self):
        super(VAE, self).__init__()
        self.fc1 = nn.Linear(784, 400)
        self.fc21 = nn.Linear(400, 20)
        self.fc22 = nn.Linear(400, 20)
        self.fc3 = nn.Linear(20, 400)
        self.fc4 = nn.Linear(400, 784)

    def encode(self, x):
        h1 = F.relu(self.fc1(x))
        return self.fc21(h1), self.fc22(h1)

    def reparameterize(self, mu, logvar):
        std = torch.exp(0.5 * logvar)
        eps = torch.randn_like(std)
        return mu + eps * std

    def decode(self, z):
        h3 = F.relu(self.fc3(z))
        return torch.sigmoid(self.fc4(h3))

    def forward(self, x):
        mu, logvar = self.encode(x.view(-1, 784))
        z = self.reparameterize(mu, logvar)
        return self.decode(z), mu, logvar


model = VAE().to(device)
optimizer = optim.Adam(model.parameters(), lr=1e-3)


def loss_function(recon_x, x, mu, logvar):  # reconstruction + KL divergence, summed over batch and pixels
    BCE = F.binary_cross_entropy(recon_x, x.view(-1, 784), reduction="sum")
    KLD = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())
    return BCE + KLD


def train(epoch):
    model.train()
    train_loss = 0
    for batch_idx, (data, _) in enumerate(train_loader):
        data = data.to(device)
        optimizer.zero_grad()
        recon_batch, mu, logvar = model(data)
        loss = loss_function(recon_batch, data, mu, logvar)
        loss.backward()
        train_loss += loss.item()
        optimizer.step()
        if batch_idx % log_interval == 0:
            print("Train Epoch: {} [{}/{} ({:.0f}%)]\tLoss: {:.6f}".format(
                epoch, batch_idx * len(data), len(train_loader.dataset),
                100. * batch_idx / len(train_loader), loss.item() / len(data)))
    print("====> Epoch: {} Average loss: {:.4f}".format(epoch, train_loss / len(train_loader.dataset)))


def test(epoch):
    model.eval()
    test_loss = 0
    with torch.no_grad():
        for i, (data, _) in enumerate(test_loader):
            data = data.to(device)
            recon_batch, mu, logvar = model(data)
            test_loss += loss_function(recon_batch, data, mu, logvar).item()
            if i == 0:
                n = min(data.size(0), 8)
                comparison = torch.cat([data[:n], recon_batch.view(batch_size, 1, 28, 28)[:n]])
                save_image(comparison.cpu(), results / f"reconstruction_{epoch}.png", nrow=n)
    test_loss /= len(test_loader.dataset)
    print("====> Test set loss: {:.4f}".format(test_loss))


for epoch in range(1, epochs + 1):
    train(epoch)
    test(epoch)
    with torch.no_grad():
        sample = torch.randn(64, 20).to(device)
        sample = model.decode(sample).cpu()
        save_image(sample.view(64, 1, 28, 28), results / f"sample_{epoch}.png")
'''


def timed(command: list[str], cwd: Path) -> float:
    start = time.perf_counter()
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=1800)
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        sys.exit(f"error: {' '.join(command[:3])} ... failed ({result.returncode}): "
                 f"{result.stderr.strip()[-800:]}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds of the two processes")
    parser.add_argument("--epochs", type=int, default=5)
    args = parser.parse_args()
    exe = shutil.which("vae-train")
    if exe is None or not FASHION.is_dir():
        sys.exit("error: needs vae-train on PATH and Fashion-MNIST in /usr/share/datasets/fashion-mnist "
                 "(apt-get install dataset-fashion-mnist)")
    with tempfile.TemporaryDirectory(prefix="whole_run_") as tmp:
        tmp = Path(tmp)
        raw = tmp / "raw"  # what torchvision keeps after its download: the IDX files uncompressed
        raw.mkdir()
        for path in FASHION.glob("*-ubyte.gz"):
            (raw / path.stem).write_bytes(gzip.decompress(path.read_bytes()))
        commands = {
            "pytorch/examples vae/main.py": lambda r: [sys.executable, "-c", REFERENCE, str(raw), str(tmp),
                                                       str(args.epochs)],
            "vae-train": lambda r: [exe, "data=fashion_mnist", f"epochs={args.epochs}", "~eval",
                                    f"hydra.run.dir={tmp / f'run_{r}'}"],
        }
        seconds = {name: [] for name in commands}
        for r in range(args.rounds):
            for name, command in commands.items():
                seconds[name].append(timed(command(r), tmp))
                print(f"round {r + 1}: {name:<30} {seconds[name][-1]:7.1f} s", flush=True)
    reference, ours = (statistics.median(v) for v in seconds.values())
    ratios = [a / b for a, b in zip(*seconds.values())]
    print(f"\n{args.epochs} epochs of Fashion-MNIST, whole process, median of {args.rounds} rounds:")
    print(f"  pytorch/examples vae/main.py  {reference:7.1f} s")
    print(f"  vae-train                     {ours:7.1f} s")
    print(f"  ratio {reference / ours:.2f}x (per round: {', '.join(f'{x:.2f}' for x in ratios)}); target >= 3x")


if __name__ == "__main__":
    main()
