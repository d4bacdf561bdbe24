"""Throughput of vae-eval's L_K (images x samples per second) against training's decoder passes per second.

One run of the default model (784-400-20 MLP, Bernoulli likelihood, dynamic binarization, batch 128)
is trained for one epoch on 28x28 images: Fashion-MNIST (10,000 test images) when installed, else
synthetic images of that shape with a 10,000-image test split. Then vae-eval evaluates that run folder
with K=1000. Training runs one decoder pass per image (estimator.num_samples=1), so its images/s are
its decoder passes/s; L_K runs K decoder passes per test image, so images x samples/s are its decoder
passes/s. The evaluation should run at least as many decoder passes per second as training does.
Beside L_K, its floor on this machine: the decoder's Linear layers alone on as many rows as L_K feeds
them (K decoder passes per test image, batch_size * chunk_size rows a call), without the draws, the
likelihood or the reductions; L_K cannot run faster than that without less work.
Also timed: the forward-only ELBO pass over the test set that train() runs (average_terms), and the
probe (logistic regression on the latent means, 10 / 100 / all labels per class) as vae-cli fits it
(L-BFGS in torch, evaluation/probe.py) beside scikit-learn's LogisticRegression (the probe before; a test
dependency, skipped when not installed), alternating, with their test accuracies; and vae-cli's fit on
one intra-op thread instead of the process's.

    python benchmarks/eval_throughput.py [--num-samples 1000] [--device cpu] [--probe-rounds 1]
                                         [--baseline DIR] [--lk-rounds 3] [--latent gaussian]
                                         [--no-scikit-learn]

--baseline DIR: L_K of another vae-cli checkout beside this one (e.g. `git worktree add /tmp/old
9d25d7f`, the code when issue 13 was filed), on the same trained weights and test images, alternating
--lk-rounds rounds: the baseline's log_px_estimates against today's (which also returns the Monte Carlo
variances vae-eval reports), as images x samples/s, medians and their ratio; and the baseline's probe
timed beside today's in each probe round. --latent categorical trains the 20x10 categorical model
instead, whose probe features are 200-dimensional.
"""
import argparse
import importlib
import json
import math
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_module

from vae_cli.build import build_estimator
from vae_cli.evaluation.active_units import latent_means
from vae_cli.evaluation.iwae import log_px_estimates
from vae_cli.evaluation.probe import LogisticRegression, labelled_subset
from vae_cli.evaluation import evaluate_run
from vae_cli.eval_data import average_terms, prepare_eval_sets
from vae_cli.evaluation.run import load_run
from vae_cli.train import train

FASHION = Path("/usr/share/datasets/fashion-mnist")


def configs(device: str, num_samples: int, latent: str):
    data = ["data=fashion_mnist", "data.val_fraction=0"] if FASHION.is_dir() else [
        "data=synthetic", "data.num_train=60000", "data.num_test=10000", "data.image_size=28",
        "data.num_classes=10", "data.val_fraction=0"]
    with initialize_config_module("vae_cli.configs", version_base="1.3"):
        train_cfg = compose("train", overrides=[*data, "epochs=1", f"device={device}", f"latent={latent}", "~eval"])
        # The pixel baseline of the probe does not depend on the model (and takes minutes on a CPU).
        eval_cfg = compose("eval", overrides=[f"device={device}", f"eval.num_samples={num_samples}",
                                              "eval.pixel_baseline=false"])
    return train_cfg, eval_cfg


def forward_images_per_sec(run_dir: Path, device: torch.device) -> tuple[float, int]:
    """The forward-only ELBO pass of train() (test/elbo) over the test set: (images per second, N)."""
    cfg, data, model = load_run(run_dir, device)[:3]
    test_x = prepare_eval_sets(model.likelihood, data, device, cfg.get("eval_seed", 0))[1]
    estimator = build_estimator(cfg, model, data).to(device)
    seconds = []
    for _ in range(3):  # the best of three: a shared machine's load only ever slows a pass down
        start = time.perf_counter()
        average_terms(model, estimator, test_x, cfg.eval_batch_size, cfg.beta, cfg.get("eval_seed", 0))
        seconds.append(time.perf_counter() - start)
    return test_x.shape[0] / min(seconds), test_x.shape[0]


def decoder_floor(run_dir: Path, device: torch.device, settings) -> tuple[float, float]:
    """(seconds, GMAC/s): the decoder's Linear layers alone on the rows L_K gives them over the test set,
    K * N rows in calls of batch_size * chunk_size rows (the chunk as log_px_estimates with variances
    takes it); 100 calls timed, the best of three, scaled to the whole."""
    _, data, model = load_run(run_dir, device)[:3]
    num_rows = data.test_x.shape[0] * settings.num_samples
    rows = settings.batch_size * min(settings.chunk_size, math.ceil(settings.num_samples / 2))
    layers = [layer for layer in model.decoder.modules() if isinstance(layer, torch.nn.Linear)]
    inputs = [torch.rand(rows, layer.in_features, device=device) for layer in layers]
    calls, seconds = min(100, math.ceil(num_rows / rows)), []
    with torch.inference_mode():
        for _ in range(3):
            start = time.perf_counter()
            for _ in range(calls):
                for layer, x in zip(layers, inputs):
                    layer(x)
            if device.type == "cuda":
                torch.cuda.synchronize()
            seconds.append((time.perf_counter() - start) * num_rows / (calls * rows))
    macs = num_rows * sum(layer.in_features * layer.out_features for layer in layers)
    return min(seconds), macs / min(seconds) / 1e9


def probe_seconds(run_dir: Path, device: torch.device, rounds: int, baseline=None, sklearn: bool = True) -> None:
    """Fit the probe on the run's latent means with vae-cli's and scikit-learn's logistic regression
    (and the baseline checkout's, when given), alternating; print seconds and test accuracy per
    labelled-set size."""
    cfg, data, model = load_run(run_dir, device)[:3]
    generator = torch.Generator(device=device).manual_seed(0)
    with torch.inference_mode():
        train_x = model.likelihood.prepare_pixels(data.train_x.to(device), generator)
        features = [latent_means(model, x, 1000).flatten(1) for x in
                    (train_x, prepare_eval_sets(model.likelihood, data, device, 0)[1])]
    try:
        if not sklearn:
            raise ImportError("--no-scikit-learn")
        from sklearn.linear_model import LogisticRegression as Sklearn
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler
    except ImportError:
        Sklearn = None
    print(f"probe on {features[0].shape[1]}-dimensional latent means ({rounds} alternating rounds, median s):")
    for per_class in (10, 100, "all"):
        index = torch.from_numpy(labelled_subset(data.train_y.numpy(), per_class, 0))
        x, y = features[0][index.to(device)], data.train_y[index]
        seconds = {"vae-cli (torch)": [], "scikit-learn": [], "one thread": [], "baseline": []}
        for _ in range(rounds):
            if baseline is not None:
                start = time.perf_counter()
                old = baseline.LogisticRegression().fit(x, y.to(device)).score(features[1], data.test_y.to(device))
                seconds["baseline"].append(time.perf_counter() - start)
            start = time.perf_counter()
            ours = LogisticRegression().fit(x, y.to(device)).score(features[1], data.test_y.to(device))
            seconds["vae-cli (torch)"].append(time.perf_counter() - start)
            threads = torch.get_num_threads()
            torch.set_num_threads(1)  # the same fit on one intra-op thread, not the process's
            start = time.perf_counter()
            LogisticRegression().fit(x, y.to(device))
            seconds["one thread"].append(time.perf_counter() - start)
            torch.set_num_threads(threads)
            if Sklearn is not None:
                start = time.perf_counter()
                classifier = make_pipeline(StandardScaler(), Sklearn(max_iter=1000))
                theirs = classifier.fit(x.double().cpu().numpy(), y.numpy()).score(
                    features[1].double().cpu().numpy(), data.test_y.numpy())
                seconds["scikit-learn"].append(time.perf_counter() - start)
        ours_s = statistics.median(seconds["vae-cli (torch)"])
        line = (f"  {str(per_class):>4} per class: vae-cli {ours_s:6.2f} s on {torch.get_num_threads()} threads "
                f"(one thread {statistics.median(seconds['one thread']):6.2f} s), accuracy {ours:.4f}")
        if baseline is not None:
            old_s = statistics.median(seconds["baseline"])
            line += f"; baseline {old_s:6.2f} s, accuracy {old:.4f} ({old_s / ours_s:.2f}x the time)"
        if Sklearn is not None:
            theirs_s = statistics.median(seconds["scikit-learn"])
            line += f"; scikit-learn {theirs_s:6.2f} s, accuracy {theirs:.4f} ({theirs_s / ours_s:.1f}x the time)"
        print(line, flush=True)


def lk_side_by_side(run_dir: Path, baseline: Path, device: torch.device, settings, rounds: int) -> None:
    """L_K of this checkout and of the baseline checkout on the same weights and test images, alternating."""
    from omegaconf import OmegaConf

    cfg, data, model = load_run(run_dir, device)[:3]
    test_x = prepare_eval_sets(model.likelihood, data, device, cfg.get("eval_seed", 0))[1]
    old_build = importlib.import_module("vae_cli_baseline.build")
    old_iwae = importlib.import_module("vae_cli_baseline.evaluation.iwae")
    old_cfg = OmegaConf.create(re.sub(r"\bvae_cli\b", "vae_cli_baseline", OmegaConf.to_yaml(cfg)))
    old_model = old_build.build_model(old_cfg, data.data_dim).to(device)
    old_model.load_state_dict(model.state_dict())
    old_model.eval()
    k, chunk, batch = settings.num_samples, settings.chunk_size, settings.batch_size
    runs = {"today": lambda: log_px_estimates(model, test_x, k, chunk, batch, progress=False, variances=True),
            "baseline": lambda: old_iwae.log_px_estimates(old_model, test_x, k, chunk, batch, progress=False)}
    rates, values = {name: [] for name in runs}, {}
    for _ in range(rounds):
        for name, run in runs.items():
            torch.manual_seed(0)
            start = time.perf_counter()
            values[name] = run()[0].mean().item()
            rates[name].append(test_x.shape[0] * k / (time.perf_counter() - start))
    print(f"L_K side by side, K={k} on {test_x.shape[0]:,} test images, {rounds} alternating rounds "
          f"(images x samples/s; L_K today {values['today']:.3f}, baseline {values['baseline']:.3f}):")
    for name, numbers in rates.items():
        print(f"  {name:<9} median {statistics.median(numbers):10,.0f}   rounds "
              + ", ".join(f"{n:,.0f}" for n in numbers))
    print(f"  today / baseline: {statistics.median(rates['today']) / statistics.median(rates['baseline']):.3f} "
          "(medians)", flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-samples", type=int, default=1000, help="K of L_K")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--probe-rounds", type=int, default=1,
                        help="alternating rounds of the probe timing (0: skip it)")
    parser.add_argument("--baseline", type=Path, help="another vae-cli checkout: its L_K beside today's")
    parser.add_argument("--lk-rounds", type=int, default=3,
                        help="alternating rounds of the side-by-side L_K (0: the baseline's probe only)")
    parser.add_argument("--no-scikit-learn", action="store_true",
                        help="skip scikit-learn's fit (a minute a round on categorical features)")
    parser.add_argument("--latent", default="gaussian", choices=["gaussian", "categorical"],
                        help="the model's latent (categorical: 200-dimensional probe features)")
    args = parser.parse_args()
    train_cfg, eval_cfg = configs(args.device, args.num_samples, args.latent)
    with tempfile.TemporaryDirectory() as run_dir:
        train(train_cfg, run_dir)
        start = time.perf_counter()
        evaluate_run(run_dir, eval_cfg)
        eval_seconds = time.perf_counter() - start
        report = json.loads((Path(run_dir) / "eval.json").read_text())
        forward, num_test = forward_images_per_sec(Path(run_dir), torch.device(args.device))
        floor, gmacs = decoder_floor(Path(run_dir), torch.device(args.device), eval_cfg.eval)
        baseline_probe = None
        if args.baseline is not None:
            sys.path.insert(0, str(Path(__file__).parent))
            from train_throughput import import_baseline
            import_baseline(args.baseline, Path(tempfile.mkdtemp()))
            baseline_probe = importlib.import_module("vae_cli_baseline.evaluation.probe")
            if args.lk_rounds:
                lk_side_by_side(Path(run_dir), args.baseline, torch.device(args.device), eval_cfg.eval,
                                args.lk_rounds)
        if args.probe_rounds:
            probe_seconds(Path(run_dir), torch.device(args.device), args.probe_rounds, baseline_probe,
                          not args.no_scikit_learn)
        status = json.loads((Path(run_dir) / "status.json").read_text())
    training = status["images_per_sec"]  # = decoder passes per second (one sample per image)
    evaluation = report["images_x_samples_per_sec"]
    print(f"data: {report['data_source']}; device {report['device']}; torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    lk_seconds = num_test * args.num_samples / evaluation
    print(f"vae-eval, K={args.num_samples} on {num_test:,} test images: {eval_seconds:.1f} s in all "
          f"(L_K {lk_seconds:.1f} s; then the latent probe, pictures, projector)")
    print(f"L_K                       {evaluation:12,.0f} images x samples/s (decoder passes/s)")
    print(f"L_K's floor               {floor:12.1f} s: the decoder's Linear layers alone on its rows "
          f"({gmacs:.0f} GMAC/s), {floor / lk_seconds:.0%} of L_K's {lk_seconds:.1f} s")
    print(f"training (fwd+bwd+Adam)   {training:12,.0f} images/s = decoder passes/s")
    print(f"training's ELBO pass      {forward:12,.0f} images/s (forward only)")
    print(f"ratio L_K / training      {evaluation / training:12.2f}x")
    print(f"ratio L_K / forward pass  {evaluation / forward:12.2f}x")
    print(json.dumps({"eval_images_x_samples_per_sec": evaluation, "train_images_per_sec": training,
                      "forward_images_per_sec": forward, "lk_floor_seconds": floor,
                      "ratio_vs_training": evaluation / training,
                      "vae_eval_seconds": eval_seconds, "test/L_K": report["figures"].get("test/L_K")}))


if __name__ == "__main__":
    main()
