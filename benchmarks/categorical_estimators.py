"""Train the 20 x 10 categorical VAE for a fixed step budget with each estimator and tabulate what each costs.

    python benchmarks/categorical_estimators.py [--steps N] [--out FOLDER] [overrides ...]

Every run is a real `vae-train latent=categorical ...` composition (the configs of configs/, the same
train()), on the digits the data config finds (full MNIST, or the 5,000-image offline subset). The
table: final validation ELBO (nats per image, higher is better), median of the logged encoder-gradient
variance (diagnostics/grad_variance, trace of the covariance over diagnostics.num_estimates draws), and
training images per second (the mean over epochs, diagnostics included).
"""
import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from hydra import compose, initialize_config_module
from omegaconf import OmegaConf
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from vae_cli.train import train

ESTIMATORS = {  # name: overrides on top of latent=categorical (estimator=reinforce)
    "reinforce, no baseline": ["estimator.baseline=none", "estimator.num_samples=1"],
    "reinforce, moving average": ["estimator.baseline=moving_average", "estimator.num_samples=1"],
    "reinforce, learned b(x) (NVIL)": ["estimator.baseline=learned", "estimator.num_samples=1"],
    "reinforce, leave-one-out, S=4": ["estimator.baseline=leave_one_out", "estimator.num_samples=4"],
    "gumbel straight-through": ["estimator=straight_through"],
}


def compose_run(steps: int, diagnostics_every: int, extra: list[str]):
    overrides = ["latent=categorical", f"max_steps={steps}", f"epochs={steps}",
                 f"diagnostics.every={diagnostics_every}", *extra]
    with initialize_config_module("vae_cli.configs", version_base="1.3"):
        cfg = compose("train", overrides=overrides)
        if cfg.get("eval") is not None:  # the end-of-training evaluation is not part of what is compared
            cfg = compose("train", overrides=[*overrides, "~eval"])
    return cfg


def logged(run_dir: Path, tag: str) -> list[float]:
    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return [event.value for event in acc.Scalars(tag)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2000, help="optimisation steps per estimator")
    parser.add_argument("--diagnostics-every", type=int, default=100, help="steps between gradient diagnostics")
    parser.add_argument("--out", type=Path, default=None, help="keep the run folders here (default: temporary)")
    parser.add_argument("--only", nargs="*", default=None, help="names from the table to run (default: all)")
    parser.add_argument("overrides", nargs="*", help="extra vae-train overrides, e.g. device=cuda seed=1")
    args = parser.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="categorical_estimators_"))
    rows = []
    for index, (name, overrides) in enumerate(ESTIMATORS.items()):
        if args.only and name not in args.only:
            continue
        cfg = compose_run(args.steps, args.diagnostics_every, [*overrides, *args.overrides])
        run_dir = out / f"{index}"
        if run_dir.exists():  # TensorBoard would mix the old run's events into the new one's figures
            raise SystemExit(f"error: {run_dir} exists; pass an --out folder without earlier runs")
        start = time.perf_counter()
        metrics = train(cfg, run_dir)
        variance = logged(run_dir, "diagnostics/grad_variance")
        used = OmegaConf.load(run_dir / "config.yaml")  # the resolved config, with what the run used
        source = OmegaConf.select(used, "data_source") or OmegaConf.select(used, "data.source_used")
        rows.append({"estimator": name, "val_elbo": metrics["val/elbo"],
                     "grad_variance": statistics.median(variance) if variance else float("nan"),
                     "images_per_sec": statistics.mean(logged(run_dir, "train/images_per_sec")),
                     "wall_s": time.perf_counter() - start, "source": source,
                     "device": used.device_used, "run_dir": str(run_dir)})
    (out / "benchmark.json").write_text(json.dumps(rows, indent=2) + "\n")
    print(f"\n{args.steps} steps each, batch {cfg.batch_size}, data: {rows[0]['source']}, "
          f"device: {rows[0]['device']}, runs in {out}")
    print(f"| {'estimator':<32} | val ELBO (nats) | median grad variance | images/s |")
    print(f"|{'-' * 34}|----------------:|---------------------:|---------:|")
    for row in rows:
        print(f"| {row['estimator']:<32} | {row['val_elbo']:15.2f} | {row['grad_variance']:20.3g} "
              f"| {row['images_per_sec']:8.0f} |")


if __name__ == "__main__":
    main()
