"""How fast this CPU multiplies float32 matrices through torch's BLAS, beside oneDNN on the same shapes.

vae-train's step and L_K are mostly float32 matrix products (torch.addmm / torch.mm), which torch's x86
CPU build hands to its BLAS, Intel's oneMKL. oneMKL picks its kernels by CPU vendor: on an AMD CPU with
AVX-512 it can run its AVX2 kernels, half that CPU's width. oneDNN, which torch also ships, picks its
kernels by instruction set. This script prints both rates side by side (GMAC/s, the median of --rounds
alternating rounds), for a large square product and for the default model's layer (batch 128, 784 -> 400),
so a reader can tell whether the step's floor (benchmarks/README.md) is this CPU's or its BLAS's.

oneDNN is timed through torch.utils.mkldnn's Linear with its weight converted once: a rate to compare,
not a way to train (that Linear has no backward, and a step would convert its changing operands at every
product).

    python benchmarks/blas_rate.py [--threads N] [--rounds 5]
"""
import argparse
import statistics
import time

import torch
from torch.utils import mkldnn


def rate(product, macs: float, seconds: float = 0.3) -> float:
    """GMAC/s of product() over about `seconds`, after a few warm-up calls."""
    for _ in range(3):
        product()
    calls, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        product()
        calls += 1
    return macs * calls / (time.perf_counter() - start) / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch intra-op threads")
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds; medians are printed")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    shapes = {"2048 x 2048 x 2048": (2048, 2048, 2048),
              "128 x 784 -> 400 (the default model's layer)": (128, 784, 400)}
    results = {name: {"blas": [], "onednn": []} for name in shapes}
    with torch.inference_mode():
        cases = {}
        for name, (rows, inner, cols) in shapes.items():
            x, layer = torch.randn(rows, inner), torch.nn.Linear(inner, cols)
            dense_layer, x_onednn = mkldnn.to_mkldnn(layer), x.to_mkldnn()
            blas = torch.addmm(layer.bias, x, layer.weight.t())
            difference = (dense_layer(x_onednn).to_dense() - blas).abs().max().item()
            assert difference <= 1e-3 * blas.abs().max().item(), f"oneDNN and the BLAS disagree by {difference}"
            cases[name] = (lambda x=x, layer=layer: torch.addmm(layer.bias, x, layer.weight.t()),
                           lambda x=x_onednn, m=dense_layer: m(x), rows * inner * cols)
        for _ in range(args.rounds):
            for name, (blas, onednn, macs) in cases.items():
                results[name]["blas"].append(rate(blas, macs))
                results[name]["onednn"].append(rate(onednn, macs))
    blas_library = "oneMKL" if torch.backends.mkl.is_available() else "the BLAS"
    print(f"float32 products, {args.threads} threads, GMAC/s (median of {args.rounds} rounds); "
          f"torch {torch.__version__}, CPU capability {torch.backends.cpu.get_cpu_capability()}")
    for name, rates in results.items():
        blas, onednn = statistics.median(rates["blas"]), statistics.median(rates["onednn"])
        print(f"  {name:45s} torch.addmm ({blas_library}) {blas:6.1f}   oneDNN {onednn:6.1f}   "
              f"oneDNN / addmm {onednn / blas:.2f}")


if __name__ == "__main__":
    main()
