"""evaluate(): a trained model's figures and pictures on the test set; evaluate_run(): the job of vae-eval."""
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from vae_cli.build import build_data, build_model
from vae_cli.checkpoint import load_checkpoint
from vae_cli.device import resolve_device
from vae_cli.errors import ConfigError, check_integer
from vae_cli.evaluation.active_units import ACTIVE_THRESHOLD, activity, latent_means
from vae_cli.evaluation.iwae import bits_per_dim, fixed_scale, log_px_estimates
from vae_cli.evaluation.pictures import interpolation, tile, traversal, write_embedding
from vae_cli.evaluation.probe import check_sizes, probe
from vae_cli.likelihoods import Bernoulli, ContinuousBernoulli, dequantize, to_unit
from vae_cli.summary import RunWriter
from vae_cli.train import prepare_eval_sets, write_pictures

log = logging.getLogger(__name__)


@dataclass
class Evaluation:
    figures: dict  # TensorBoard tag -> value: per-example nats, bits/dim, a count, or an accuracy
    notes: list  # what a reader needs in order to compare the figures, one sentence each
    images_x_samples_per_sec: float  # throughput of L_K: decoder passes per second


def check_settings(settings: DictConfig) -> None:
    for key in ("num_samples", "chunk_size", "batch_size"):
        check_integer(f"eval.{key}", settings[key], 1)
    check_sizes(settings.probe_sizes)


def is_discrete(likelihood) -> bool:
    """Bernoulli on binary pixels is a probability mass function: log p(x) in nats, no bits/dim."""
    return isinstance(likelihood, Bernoulli) and not isinstance(likelihood, ContinuousBernoulli)


def likelihood_figures(model, test_x: torch.Tensor, settings: DictConfig, generator: torch.Generator):
    """({log_px, elbo_L1, posterior_gap[, bits_per_dim]}, notes, images x samples per second)."""
    likelihood, notes, x = model.likelihood, [], test_x
    if is_discrete(likelihood):
        notes.append("bits/dim not reported: the Bernoulli likelihood is a probability mass on "
                     "binarized pixels, so log p(x) is already a discrete log-probability in nats")
    else:
        if not getattr(likelihood, "dequantize", False):  # prepared without noise: add it here
            x = dequantize(test_x, generator)
        notes.append("continuous data: log p(x), the ELBO and the gap are densities of the test "
                     "images dequantized to (k + u)/256, u ~ U[0,1); bits/dim = -log p(x)/(D ln 2) + 8")
    with fixed_scale(likelihood, model, x, settings.batch_size) as sigma:
        if sigma is not None:
            notes.append(f"likelihood.scale=optimal: sigma fixed at {sigma:.5g}, the root mean "
                         "squared error of one posterior draw per test image, for every image and draw")
        start = time.perf_counter()
        log_px, elbo = log_px_estimates(model, x, settings.num_samples, settings.chunk_size,
                                        settings.batch_size)  # (N,) each
        if x.device.type == "cuda":
            torch.cuda.synchronize()
        throughput = x.shape[0] * settings.num_samples / (time.perf_counter() - start)
    figures = {"log_px": log_px.mean().item(), "elbo_L1": elbo.mean().item(),
               "posterior_gap": (log_px - elbo).mean().item()}  # per-example means
    if not is_discrete(likelihood):
        figures["bits_per_dim"] = bits_per_dim(figures["log_px"], x.shape[1])
    return figures, notes, throughput


def probe_figures(model, data, test_means: torch.Tensor, settings: DictConfig,
                  generator: torch.Generator, seed: int) -> dict:
    """Probe accuracies on the latent means (and, with eval.pixel_baseline, on raw pixels)."""
    train_x = model.likelihood.prepare_pixels(data.train_x.to(test_means.device), generator)
    train_means = latent_means(model, train_x, settings.batch_size)
    features = {"latent": (train_means.flatten(1).cpu().numpy(), test_means.flatten(1).cpu().numpy())}
    if settings.pixel_baseline:  # the same classifier on raw intensities: the data's own baseline
        features["pixels"] = (to_unit(data.train_x).numpy(), to_unit(data.test_x).numpy())
    return probe(features, data.train_y.numpy(), data.test_y.numpy(), settings.probe_sizes, seed)


def evaluate(model, data, test_x: torch.Tensor, settings: DictConfig, writer: RunWriter, step: int,
             seed: int) -> Evaluation:
    """L_K, L_1 and their gap (MATH.md 1, 5), bits/dim for continuous data, active units, the probe
    (MATH.md 6) and the latent pictures, written to TensorBoard at step; test_x as train() prepared it.

    Runs on a forked RNG seeded seed + 3 (train() uses seed, seed + 1 and seed + 2): the same model
    and settings give the same figures, and training's random stream is left as it was.
    """
    check_settings(settings)
    model.eval()
    device, shape = test_x.device, data.image_shape
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed + 3)
        generator = torch.Generator(device=device).manual_seed(seed + 3)
        test, notes, throughput = likelihood_figures(model, test_x, settings, generator)
        means = latent_means(model, test_x, settings.batch_size)  # (N, K) or (N, V, C)
        unit_activity = activity(means)  # (V,)
        test["active_units"] = int((unit_activity > ACTIVE_THRESHOLD).sum())
        probes = probe_figures(model, data, means, settings, generator, seed)
        if settings.pictures:
            writer.images("latents/traversal", tile(traversal(model, means, unit_activity, shape)), step)
            writer.images("latents/interpolations", tile(interpolation(model, test_x, means, shape)), step)
        if settings.embedding:
            write_embedding(writer, means, data.test_y, to_unit(data.test_x).view(-1, *shape), step)
    writer.scalars("test", test, step)
    writer.scalars("probe", probes, step)
    writer.text("eval/notes", "\n\n".join(notes))
    figures = {f"test/{k}": v for k, v in test.items()} | {f"probe/{k}": v for k, v in probes.items()}
    log.info("test log p(x) %.3f nats (L_%d), ELBO %.3f, posterior gap %.3f; %d active units; "
             "%.0f images x samples/s", test["log_px"], settings.num_samples, test["elbo_L1"],
             test["posterior_gap"], test["active_units"], throughput)
    return Evaluation(figures=figures, notes=notes, images_x_samples_per_sec=throughput)


def prepared_test_set(cfg: DictConfig, data, likelihood, device: torch.device) -> torch.Tensor:
    """The test images exactly as train() prepared them, so vae-eval's figures compare with test/elbo."""
    trained_on = torch.device(cfg.get("device_used") or "cpu")
    if trained_on.type != device.type and getattr(likelihood, "binarize", None) == "dynamic":
        log.warning("the run was trained on %s but is evaluated on %s: the random generators differ, "
                    "so the test set's dynamic binarization is not the one training used", trained_on,
                    device)
    return prepare_eval_sets(likelihood, data, device, cfg.seed)[1]


def load_run(run_dir: Path, device: torch.device):
    """(config, data, model with the checkpoint's weights, checkpoint state) of a vae-train run folder."""
    state = load_checkpoint(run_dir, map_location=device)
    cfg = OmegaConf.create(state["config"])
    data = build_data(cfg)
    recorded = cfg.get("data_source")
    if recorded and recorded != data.source:
        log.warning("the run was trained on %s; evaluating on %s", recorded, data.source)
    model = build_model(cfg, data.data_dim).to(device)
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as err:
        first = str(err).strip().splitlines()[0]
        raise ConfigError(f"checkpoint in {run_dir}: its weights do not fit the model rebuilt from its "
                          f"config ({first}); it was written by another version of vae-cli") from err
    return cfg, data, model.eval(), state


def evaluate_run(run_dir, eval_cfg: DictConfig) -> Evaluation:
    """vae-eval: evaluate a run folder's checkpoint, writing TensorBoard events and eval.json there."""
    run_dir = Path(run_dir)
    run_dir = run_dir.parent if run_dir.is_file() else run_dir
    check_settings(eval_cfg.eval)
    device = resolve_device(eval_cfg.device)
    cfg, data, model, state = load_run(run_dir, device)
    test_x = prepared_test_set(cfg, data, model.likelihood, device)
    step = int(state["step"])
    writer = RunWriter(run_dir)
    image_gen = torch.Generator(device=device).manual_seed(cfg.seed + 2)  # training's prior samples
    prior_z = model.latent.sample_prior(cfg.num_images, image_gen)
    write_pictures(writer, model, test_x[:cfg.num_images // 2], prior_z, data.image_shape, step)
    result = evaluate(model, data, test_x, eval_cfg.eval, writer, step, cfg.seed)
    writer.close()
    report = {"figures": result.figures, "notes": result.notes, "step": step, "data_source": data.source,
              "device": str(device), "settings": OmegaConf.to_container(eval_cfg.eval, resolve=True),
              "images_x_samples_per_sec": result.images_x_samples_per_sec}
    (run_dir / "eval.json").write_text(json.dumps(report, indent=2) + "\n")
    log.info("figures written to %s and its TensorBoard events", run_dir / "eval.json")
    return result
