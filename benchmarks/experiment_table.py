"""The measured table in a configs/experiment/*.yaml header: runs its sweep as a user would, prints the table.

    python benchmarks/experiment_table.py categorical_reinforce            # 4 runs
    python benchmarks/experiment_table.py gaussian_reinforce_vs_reparam    # 2 runs

The sweep is `vae-train -m experiment=NAME <the header's swept key>` in a fresh folder. Per job: the
validation and test ELBO (the best model's), test L_100 and KL from its metrics.json; grad variance and
grad SNR are the medians over training of the TensorBoard scalars diagnostics/grad_variance (the trace
of the encoder gradient's covariance) and diagnostics/grad_snr (the unbiased squared norm of its mean
over that trace), which vae-train logs every diagnostics.every steps (docs/math.md).
"""
import argparse
import json
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

SWEEPS = {
    "categorical_reinforce": "estimator.baseline=none,moving_average,learned,leave_one_out",
    "gaussian_reinforce_vs_reparam": "estimator=reparam,reinforce",
}


def median_scalar(run_dir: Path, tag: str) -> float:
    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    events.Reload()
    return statistics.median(event.value for event in events.Scalars(tag))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("experiment", choices=sorted(SWEEPS))
    args = parser.parse_args()
    swept = SWEEPS[args.experiment]
    key = swept.split("=")[0]
    with tempfile.TemporaryDirectory() as folder:
        command = ["vae-train", "-m", f"experiment={args.experiment}", swept, f"hydra.sweep.dir={folder}"]
        start = time.perf_counter()
        subprocess.run(command, check=True, capture_output=True, text=True, timeout=7200)
        print(f"{' '.join(command[:4])}: {time.perf_counter() - start:.0f} s, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
        print(f"  {key.split('.')[-1]:<16} val ELBO   test ELBO   test L_100   test KL   grad variance   grad SNR")
        rows = []
        for job in sorted((p for p in Path(folder).iterdir() if p.name.isdigit()), key=lambda p: int(p.name)):
            overrides = (job / ".hydra" / "overrides.yaml").read_text()
            value = next(line.split("=", 1)[1] for line in overrides.splitlines() if f"{key}=" in line)
            metrics = json.loads((job / "metrics.json").read_text())
            variance = median_scalar(job, "diagnostics/grad_variance")
            rows.append((value, metrics["test/elbo"], variance))
            print(f"  {value:<16} {metrics['val/elbo']:8.1f}   {metrics['test/elbo']:9.1f}   "
                  f"{metrics['test/L_K']:10.1f}   {metrics['test/kl']:7.1f}   {variance:13.3g}   "
                  f"{median_scalar(job, 'diagnostics/grad_snr'):8.3g}", flush=True)
    first, first_elbo, first_variance = rows[0]
    for value, elbo, variance in rows[1:]:
        print(f"  {value} against {first}: test ELBO {elbo - first_elbo:+.1f} nats, "
              f"grad variance x {variance / first_variance:.3g}")


if __name__ == "__main__":
    main()
