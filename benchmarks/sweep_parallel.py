"""A 4-job sweep run two jobs at a time (hydra/launcher=parallel, n_jobs=2, one torch thread each) against
the same sweep run one job after another (Hydra's basic launcher, each job with every core's thread, as
`threads: auto` gives it), and, to tell the two effects apart, one after another with one thread each.

    python benchmarks/sweep_parallel.py [--rounds 3] [--epochs 2] [--data fashion_mnist]

Each round runs the variants in turn, in an order rotating from round to round (noise from a shared machine hits both), as real
`vae-train -m` commands; wall times include start-up, data loading, training and the final evaluation.
Prints each round's wall times, the threads each job used (status.json), and the ratio
sequential / parallel (above 1: parallel is faster)."""
VARIANTS = ("sequential", "parallel", "sequential, 1 thread")
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SEEDS = "0,1,2,3"


def run_sweep(variant: str, folder: Path, args) -> tuple[float, list[int]]:
    """Wall seconds of one vae-train -m command, and the threads of its jobs."""
    command = [shutil.which("vae-train") or "vae-train", "-m", f"data={args.data}", f"epochs={args.epochs}",
               "diagnostics.every=0", f"seed={SEEDS}", f"hydra.sweep.dir={folder}"]
    if variant == "parallel":
        command += ["hydra/launcher=parallel", "hydra.launcher.n_jobs=2"]
    elif variant == "sequential, 1 thread":
        command += ["threads=1"]
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "VAE_CLI_PARALLEL_JOBS")}
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, timeout=3600, env=env)
    wall = time.perf_counter() - start
    if result.returncode != 0:
        sys.exit(f"{variant} sweep failed ({result.returncode}):\n{result.stderr[-3000:]}")
    threads = [json.loads((folder / str(i) / "status.json").read_text())["threads"] for i in range(4)]
    return wall, threads


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--data", default="fashion_mnist", help="a data option (mnist falls back to a subset offline)")
    args = parser.parse_args()
    print(f"4 jobs (seed={SEEDS}), data={args.data}, {args.epochs} epochs each; {os.cpu_count()} cores")
    print("| round | sequential (s) | parallel, 2 jobs at once (s) | sequential, 1 thread (s) | sequential / "
          "parallel |")
    print("| ---: | ---: | ---: | ---: | ---: |")
    ratios, walls = [], {variant: [] for variant in VARIANTS}
    with tempfile.TemporaryDirectory(prefix="sweep-bench-") as tmp:
        for r in range(args.rounds):
            order = VARIANTS[r % 3:] + VARIANTS[:r % 3]
            got = {}
            for variant in order:
                got[variant] = run_sweep(variant, Path(tmp) / f"{len(got)}-{r}", args)
                walls[variant].append(got[variant][0])
            seq, par, one = (got[variant][0] for variant in VARIANTS)
            ratios.append(seq / par)
            print(f"| {r + 1} | {seq:.1f} | {par:.1f} | {one:.1f} | {seq / par:.2f}x |", flush=True)
        print("threads per job: " + ", ".join(f"{variant} {got[variant][1]}" for variant in VARIANTS))
    print("median: " + ", ".join(f"{variant} {statistics.median(walls[variant]):.1f} s" for variant in VARIANTS)
          + f"; sequential / parallel {statistics.median(ratios):.2f}x (range {min(ratios):.2f}-{max(ratios):.2f}x)")


if __name__ == "__main__":
    main()
