"""Train the 20 x 10 categorical VAE for a fixed step budget with each estimator and tabulate what each costs.

    python benchmarks/categorical_estimators.py [--steps N] [--out FOLDER] [overrides ...]
    python benchmarks/categorical_estimators.py --speed-only [--rounds 5] [--speed-steps 300]

Every run is a real `vae-train latent=categorical ...` composition (the configs of configs/, the same
train()), on the digits the data config finds (full MNIST, or the 5,000-image offline subset). The
table: final validation ELBO (nats per image, higher is better), median of the logged encoder-gradient
variance (diagnostics/grad_variance, trace of the covariance over diagnostics.num_estimates draws), and
training images per second (the mean over epochs, diagnostics included).

Then, side by side (issue 13.3), training images/s of REINFORCE (moving-average baseline, one sample)
on the 20 x 10 categorical latent against the Gaussian latent's autograd step (train_step=autograd)
with the same layers (784-400 encoder, 400-784 decoder): both through train(cfg) for --speed-steps
steps of one epoch (no diagnostics, no evaluation), alternating in --rounds rounds so that the shared
machine's load hits both; medians and their ratio (target: categorical / Gaussian >= 2/3).
"""
import argparse
import contextlib
import json
import statistics
import tempfile
import time
from pathlib import Path
from unittest import mock

import torch.nn.functional as F

from hydra import compose, initialize_config_module
from omegaconf import OmegaConf
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch.distributions import Independent, OneHotCategorical

from vae_cli.latents import CategoricalLatent
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


MOVING_AVERAGE = ["latent=categorical", "estimator.baseline=moving_average", "estimator.num_samples=1"]
SPEED = {  # name: (overrides, posterior class or None for the latent's own); batch 128
    "gaussian, reparam, autograd step": (["train_step=autograd"], None),
    "categorical 20x10, reinforce, moving average, S=1": (MOVING_AVERAGE, None),
    "  the same, torch.distributions posterior": (MOVING_AVERAGE, "distributions"),
}


class DistributionsPosterior:
    """q(z|x) as the categorical latent built it before OneHotPosterior: Independent(OneHotCategorical)
    sampling and log_prob, and its own log-softmax for the KL terms; to measure what the slim one buys."""

    def __init__(self, logits):
        self.logits = logits
        self.distribution = Independent(OneHotCategorical(logits=logits, validate_args=False), 1)

    log_probs = property(lambda self: F.log_softmax(self.logits, -1))
    probs = mean = property(lambda self: self.distribution.mean)

    def sample(self, sample_shape=()):
        return self.distribution.sample(sample_shape)

    def log_prob(self, z):
        return self.distribution.log_prob(z)


def distributions_posterior(latent, params):
    return DistributionsPosterior(params.unflatten(-1, (latent.num_vars, latent.num_classes)))


# One epoch long enough for the steps: Fashion-MNIST (54,000 training images) when installed, else
# synthetic 28x28 images of 10 classes.
SPEED_DATA = (["data=fashion_mnist"] if Path("/usr/share/datasets/fashion-mnist").is_dir() else [
    "data=synthetic", "data.num_train=60000", "data.num_test=1000", "data.image_size=28", "data.num_classes=10"])


def speed_table(rounds: int, steps: int, extra: list[str], out: Path) -> None:
    """Alternate the SPEED runs `rounds` times; print each one's median images/s and the ratio."""
    speeds = {name: [] for name in SPEED}
    names = list(SPEED)
    for round_index in range(rounds):  # each round starts at the next run: none is always first
        for name in names[round_index % len(names):] + names[:round_index % len(names)]:
            index, (overrides, posterior) = names.index(name), SPEED[name]
            with initialize_config_module("vae_cli.configs", version_base="1.3"):
                cfg = compose("train", overrides=[*SPEED_DATA, f"max_steps={steps}", "epochs=1", "~eval",
                                                  "diagnostics.every=0", *overrides, *extra])
            run_dir = out / f"speed_{round_index}_{index}"
            with mock.patch.object(CategoricalLatent, "posterior", distributions_posterior) if posterior \
                    else contextlib.nullcontext():
                train(cfg, run_dir)
            speeds[name].append(json.loads((run_dir / "status.json").read_text())["images_per_sec"])
    medians = {name: statistics.median(v) for name, v in speeds.items()}
    print(f"\ntraining images/s, {steps} steps a run, {rounds} alternating rounds (each: median, [all rounds]):")
    for name, values in speeds.items():
        print(f"  {name:<52} {medians[name]:8.0f}  [{', '.join(f'{v:.0f}' for v in values)}]")
    gaussian, categorical, before = medians.values()
    ratios = [c / g for g, c, _ in zip(*speeds.values())]
    print(f"  categorical / gaussian: {categorical / gaussian:.2f} (medians); per round "
          f"{', '.join(f'{r:.2f}' for r in ratios)}; target >= 0.67")
    print(f"  slim posterior / torch.distributions posterior: {categorical / before:.2f} (medians); per round "
          f"{', '.join(f'{c / b:.2f}' for _, c, b in zip(*speeds.values()))}")


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
    parser.add_argument("--speed-only", action="store_true", help="only the categorical-vs-Gaussian speed table")
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds of the speed table")
    parser.add_argument("--speed-steps", type=int, default=300, help="training steps per run of the speed table")
    parser.add_argument("overrides", nargs="*", help="extra vae-train overrides, e.g. device=cuda seed=1")
    args = parser.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="categorical_estimators_"))
    if args.speed_only:
        speed_table(args.rounds, args.speed_steps, args.overrides, out)
        return
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
    speed_table(args.rounds, args.speed_steps, args.overrides, out)


if __name__ == "__main__":
    main()
