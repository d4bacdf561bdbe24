"""How long the end-of-run evaluation takes against the training it follows, for the README's examples.

    python benchmarks/end_of_run.py [--only NAME ...] [--list] [--set KEY=VALUE ...]
                                    [--baseline DIR --rounds 3]

--set adds overrides to every example (e.g. epochs=1: the same evaluation after a shorter training).
--baseline DIR: each example also runs on another vae-cli checkout (e.g. `git worktree add /tmp/old
<commit>`; its vae_cli imported through PYTHONPATH=DIR by the same vae-train), alternating with today's
for --rounds rounds; each side's end of run is printed per round, with the medians and their ratio.

Each example runs as a real `vae-train` process at its default epochs, in a temporary folder, and the
times come from its log: training is the first training step to the last epoch's line, the end of the
run is that line to the final summary line (test figures of the best model, the light evaluation: L_100,
active units, the latent probe, pictures), and the evaluation alone is the time the run logs for it
("the whole evaluation took X s": what `~eval` leaves out, but for writing its figures to TensorBoard).
Issue 13.2's targets: the end of the run at most as long as the training, and the light evaluation never
more than ~10 s on this machine.

experiment=burda_mlp trains 3,280 epochs (hours on a CPU); it runs here with epochs=2 and its default
training time is that run's seconds per epoch times 3,280, printed as an estimate. Its evaluation is
L_5000, heavy by design (its header says so), not the light one.
"""
import argparse
import os
import re
import statistics
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

EXAMPLES = {  # name: (overrides, epochs the run stands for, or None: the run's own)
    "default": ([], None),
    "fashion": (["data=fashion_mnist"], None),
    "gaussian": (["likelihood=gaussian"], None),
    "categorical": (["latent=categorical"], None),
    "smoke": (["debug=smoke"], None),
    "fashion-gaussian": (["data=fashion_mnist", "likelihood=gaussian"], None),
    "fashion-gaussian-optimal": (["data=fashion_mnist", "likelihood=gaussian", "likelihood.scale=optimal"], None),
    "fashion-categorical": (["data=fashion_mnist", "latent=categorical"], None),
    "categorical_reinforce": (["experiment=categorical_reinforce", "estimator.baseline=leave_one_out"], None),
    "reinforce_vs_reparam": (["experiment=gaussian_reinforce_vs_reparam", "estimator=reinforce"], None),
    "burda_mlp": (["experiment=burda_mlp", "epochs=2"], 3280),
}
STAMP = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})\]")


def stamp(line: str) -> float:
    return datetime.strptime(STAMP.match(line).group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()


def vae_train() -> str:
    beside = Path(sys.executable).parent / "vae-train"  # not a version manager's shim (see startup.py)
    exe = str(beside) if beside.is_file() else shutil.which("vae-train")
    if exe is None:
        sys.exit("error: vae-train is not on PATH; install the package first (README: Set up)")
    return exe


def one_run(exe: str, overrides: list[str], folder: Path,
            baseline: Path | None = None) -> tuple[float, float, int, float, float | None]:
    """(training seconds, end-of-run seconds, epochs trained, whole process seconds, the
    evaluation's seconds as the run logs them, None where it logs none) from the log; with baseline, the
    vae_cli package of that checkout runs instead of the installed one."""
    env = dict(os.environ)
    if baseline is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(baseline), env.get("PYTHONPATH")]))
    start = time.perf_counter()
    result = subprocess.run([exe, *overrides, f"hydra.run.dir={folder}"], capture_output=True, text=True,
                            timeout=3600, env=env)
    wall = time.perf_counter() - start
    log = (result.stdout + result.stderr).splitlines()
    if result.returncode != 0:
        sys.exit(f"error: vae-train {' '.join(overrides)} failed ({result.returncode}): {log[-1:]}")
    first = next(stamp(line) for line in log if "first training step" in line)
    epochs = [line for line in log if STAMP.match(line) and re.search(r"\] - epoch \d+ step \d+", line)]
    final = next(stamp(line) for line in reversed(log) if "] - test ELBO" in line)
    evaluation = next((float(found.group(1)) for line in log
                       if (found := re.search(r"; the whole evaluation took ([\d.]+) s", line))), None)
    return stamp(epochs[-1]) - first, final - stamp(epochs[-1]), len(epochs), wall, evaluation


def side_by_side(exe: str, names: list[str], extra: list[str], baseline: Path, rounds: int) -> None:
    """Each example on today's code and the baseline's, alternating, round after round."""
    with tempfile.TemporaryDirectory(prefix="end_of_run_") as tmp:
        for name in names:
            overrides = EXAMPLES[name][0] + extra
            times = {"today": [], "baseline": []}
            for round_ in range(rounds):
                for side, checkout in (("today", None), ("baseline", baseline)):
                    end_s = one_run(exe, overrides, Path(tmp) / f"{name}-{side}-{round_}", checkout)[1]
                    times[side].append(end_s)
                    print(f"{name} round {round_ + 1}, {side}: end of run {end_s:.1f} s", flush=True)
            today, before = statistics.median(times["today"]), statistics.median(times["baseline"])
            each = {side: ", ".join(f"{t:.1f}" for t in values) for side, values in times.items()}
            print(f"{name}: vae-train {' '.join(overrides)}: end of run, medians of {rounds} alternating rounds: "
                  f"today {today:.1f} s ({each['today']}), baseline {before:.1f} s ({each['baseline']}); "
                  f"today / baseline {today / before:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", choices=list(EXAMPLES), help="run these examples only")
    parser.add_argument("--list", action="store_true", help="print the examples' commands and stop")
    parser.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE", help="overrides for every example")
    parser.add_argument("--baseline", type=Path, help="another vae-cli checkout, run beside today's")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds with --baseline")
    args = parser.parse_args()
    names = args.only or list(EXAMPLES)
    if args.list:
        for name in names:
            print(f"{name:26s} vae-train {' '.join(EXAMPLES[name][0] + args.set)}")
        return
    exe = vae_train()
    if args.baseline is not None:
        if not (args.baseline / "vae_cli" / "__init__.py").is_file():
            sys.exit(f"error: --baseline {args.baseline} has no vae_cli/ package; give a checkout's root folder")
        side_by_side(exe, names, args.set, args.baseline, args.rounds)
        return
    rows = []
    with tempfile.TemporaryDirectory(prefix="end_of_run_") as tmp:
        for name in names:
            overrides, stands_for = EXAMPLES[name]
            overrides = overrides + args.set
            train_s, end_s, epochs, wall, eval_s = one_run(exe, overrides, Path(tmp) / name)
            default_train = train_s / epochs * stands_for if stands_for else train_s
            rows.append((name, overrides, default_train, stands_for is not None, end_s, eval_s))
            eval_text = "no evaluation" if eval_s is None else f"of which the evaluation {eval_s:.1f} s"
            print(f"{name}: vae-train {' '.join(overrides)}: {epochs} epochs trained in {train_s:.1f} s, "
                  f"end of run {end_s:.1f} s ({eval_text}), whole process {wall:.1f} s", flush=True)
    print("\n| command | training at default epochs (s) | end of run (s) | of which the evaluation (s) "
          "| end / training |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for name, overrides, train_s, estimated, end_s, eval_s in rows:
        shown = " ".join(o for o in overrides if not (estimated and o.startswith("epochs=")))
        train_text = f"~{train_s:,.0f} (estimated)" if estimated else f"{train_s:.1f}"
        eval_text = "-" if eval_s is None else f"{eval_s:.1f}"
        print(f"| `vae-train {shown}`".rstrip() + f" | {train_text} | {end_s:.1f} | {eval_text} "
              f"| {end_s / train_s:.2f} |")


if __name__ == "__main__":
    main()
