"""train(cfg): optimise the ELBO on data held as one tensor on the device, and log every term."""
import json
import logging
import random
import time
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf, open_dict
from tqdm.auto import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from vae_cli.build import build_data, build_estimator, build_model, build_optimizer
from vae_cli.checkpoint import save_checkpoint
from vae_cli.device import resolve_device
from vae_cli.diagnostics import gradient_diagnostics
from vae_cli.errors import ConfigError, check_choice, check_integer, check_number
from vae_cli.estimators import TERM_NAMES
from vae_cli.estimators.fused_reparam import FusedReparamStep, unsupported_reason
from vae_cli.schedules import build_scheduler
from vae_cli.summary import RunWriter

log = logging.getLogger(__name__)


# Training batches are gathered and prepared (binarized) this many at a time, in one call: ~5 % faster
# steps of the default model on 2 CPU cores than one batch at a time, whose calls each start with cold
# caches after the previous step. Blocks stop at an epoch's end and at max_steps: no draws are wasted.
PREPARE_AHEAD = 16


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def prepare_eval_sets(likelihood, data, device: torch.device, seed: int):
    """(val_x, test_x, generator): validation then test images prepared once by one generator seeded
    seed + 1, so their binarization (or dequantisation noise) is fixed across epochs and vae-eval
    rebuilds the same test set."""
    generator = torch.Generator(device=device).manual_seed(seed + 1)
    val_x = likelihood.prepare_pixels(data.val_x.to(device), generator)
    test_x = likelihood.prepare_pixels(data.test_x.to(device), generator)
    return val_x, test_x, generator


@torch.no_grad()
def average_terms(model, estimator, x: torch.Tensor, batch_size: int, beta: float) -> dict[str, float]:
    """Per-example means of the named terms over a prepared data tensor x (N, D); {} when N = 0."""
    if x.shape[0] == 0:
        return {}
    sums = {name: torch.zeros((), device=x.device) for name in TERM_NAMES}
    for start in range(0, x.shape[0], batch_size):
        terms = estimator(model, x[start:start + batch_size], beta)
        for name in TERM_NAMES:
            sums[name] += getattr(terms, name).sum()
    return {name: (total / x.shape[0]).item() for name, total in sums.items()}


# Top-level settings: key -> (smallest accepted integer, None allowed, what it means if refused).
INTEGER_SETTINGS = {
    "seed": (0, False, ""), "epochs": (1, False, ""), "batch_size": (1, False, ""),
    "eval_batch_size": (1, False, ""), "log_every": (1, False, ""),
    "max_steps": (1, True, "or null: run all epochs"),
    "num_images": (2, False, "half as many test examples are reconstructed"),
    "diagnostics.every": (0, False, "0: off"), "diagnostics.batch_size": (1, False, ""),
    "diagnostics.num_estimates": (2, False, "a variance needs two estimates; turn diagnostics off with "
                                            "diagnostics.every=0"),
}


def check_settings(cfg: DictConfig) -> None:
    """The top-level numbers, each a one-line ConfigError naming the key when wrong (before any work)."""
    for key, (minimum, nullable, hint) in INTEGER_SETTINGS.items():
        value = OmegaConf.select(cfg, key)
        if not (nullable and value is None):
            check_integer(key, value, minimum, hint)
    check_number("beta", cfg.beta, 0, "the KL weight")
    check_choice("train_step", cfg.train_step, ("auto", "fused", "autograd"))


def choose_train_step(choice: str, model, estimator, beta: float, optimizer) -> FusedReparamStep | None:
    """The hand-written fused step (gradient and update) where cfg.train_step allows it and it
    applies; None: autograd."""
    if choice == "autograd":
        return None
    reason = unsupported_reason(model, estimator)
    if reason is None:
        return FusedReparamStep(model, beta, optimizer)
    if choice == "fused":
        raise ConfigError(f"train_step=fused cannot train this model: {reason}; use train_step=auto "
                          "(autograd where the fused step does not apply)")
    return None


def train(cfg: DictConfig, run_dir: str | Path) -> dict:
    """Train the configured VAE, writing TensorBoard events, checkpoint.pt and metrics.json to run_dir."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    check_settings(cfg)
    seed_everything(cfg.seed)
    device = resolve_device(cfg.device)
    data = build_data(cfg)
    cfg = cfg.copy()  # the caller's config is not changed
    with open_dict(cfg):  # record what the run really used, so no one mistakes a subset for the full set
        cfg.data_source = data.source
        cfg.device_used = str(device)
    model = build_model(cfg, data.data_dim).to(device)
    estimator = build_estimator(cfg, model, data).to(device)
    optimizer = build_optimizer(cfg, list(model.parameters()) + list(estimator.parameters()), device)
    scheduler = build_scheduler(cfg, optimizer)
    likelihood = model.likelihood
    fused_step = choose_train_step(cfg.train_step, model, estimator, cfg.beta, optimizer)
    with open_dict(cfg):
        cfg.train_step_used = "fused" if fused_step is not None else "autograd"

    # The data lives on the device as uint8; batches are taken by index and binarized there.
    train_x = data.train_x.to(device)
    likelihood.check_data(data.train_x, data.val_x, data.test_x)  # every image, not a sample
    val_x, test_x, eval_gen = prepare_eval_sets(likelihood, data, device, cfg.seed)
    batch_gen = torch.Generator(device=device).manual_seed(cfg.seed)
    image_gen = torch.Generator(device=device).manual_seed(cfg.seed + 2)
    prior_z = model.latent.sample_prior(cfg.num_images, image_gen)  # same z every epoch
    diag = cfg.diagnostics
    diag_x = likelihood.prepare_pixels(train_x[:diag.batch_size], eval_gen)  # one fixed batch

    writer = RunWriter(run_dir)
    writer.config(cfg)
    writer.text("data/source", data.source)
    OmegaConf.save(cfg, run_dir / "config.yaml", resolve=True)
    log.info("data: %s; training step: %s", data, cfg.train_step_used)
    num_train = train_x.shape[0]
    steps_per_epoch = max(1, num_train // cfg.batch_size)  # drop the last partial batch
    total_steps = steps_per_epoch * cfg.epochs
    if cfg.max_steps is not None:
        total_steps = min(total_steps, cfg.max_steps)
    step, val = 0, {}
    # Plain Python values for the hot loop: an OmegaConf attribute read costs microseconds each.
    batch_size, beta, log_every, diag_every = cfg.batch_size, cfg.beta, cfg.log_every, diag.every
    after_step = getattr(estimator, "after_step", None)
    transposed = fused_step is not None and fused_step.feature_major_x
    # Log lines print above the bar (not glued to its line); the bar is silent when not a terminal.
    with logging_redirect_tqdm(), tqdm(total=total_steps, desc="train", disable=None,
                                       dynamic_ncols=True) as bar:
        for epoch in range(cfg.epochs):
            if step >= total_steps:
                break
            model.train()
            perm = torch.randperm(num_train, generator=batch_gen, device=device)
            sums = torch.zeros(len(TERM_NAMES), device=device)  # running sums of the batch-mean terms
            count, seen, start = 0, 0, time.perf_counter()
            for i in range(steps_per_epoch):
                if step >= total_steps:
                    break
                if i % PREPARE_AHEAD == 0:  # the next few batches, never past total_steps
                    ahead = min(PREPARE_AHEAD, steps_per_epoch - i, total_steps - step)
                    # index_select, not train_x[idx]: 6 us against 99 us for 128 rows of uint8
                    block = train_x.index_select(0, perm[i * batch_size:(i + ahead) * batch_size])
                    # (ahead B, D) uint8 -> (ahead, B, D) targets: the same draws for either step, in
                    # the layout the fused step computes fastest on
                    batches = likelihood.prepare_pixels(block.view(ahead, batch_size, -1), batch_gen,
                                                        transposed=transposed)
                x = batches[i % PREPARE_AHEAD]
                if fused_step is not None:  # gradients and the optimizer's update; term means returned
                    sums += fused_step(x)
                    extras = {}
                else:
                    terms = estimator(model, x, beta)
                    optimizer.zero_grad(set_to_none=True)
                    terms.surrogate.backward()
                    sums += terms.stacked_means()
                    optimizer.step()
                    extras = terms.extras
                    if after_step is not None:  # an estimator's own update (baselines)
                        after_step(terms)
                step += 1
                seen += x.shape[0]
                count += 1
                if step % log_every == 0 or step == total_steps:
                    means = dict(zip(TERM_NAMES, (sums / count).tolist()))
                    if not all(np.isfinite(v) for v in means.values()):
                        raise ConfigError(f"non-finite training terms at step {step}: {means}; lower "
                                          f"optimizer.lr (now {cfg.optimizer.lr}) or check the data")
                    writer.scalars("train", means, step)
                    writer.scalars("train", {k: float(v) for k, v in extras.items()}, step)
                    if hasattr(likelihood, "last_sigma") and likelihood.scale != "fixed":
                        writer.scalars("train", {"sigma": likelihood.last_sigma.item()}, step)
                    bar.set_postfix(elbo=f"{means['elbo']:.2f}", epoch=epoch + 1)
                    sums.zero_()
                    count = 0
                if diag_every and step % diag_every == 0:
                    writer.scalars("diagnostics", gradient_diagnostics(
                        model, estimator, diag_x, diag.num_estimates, cfg.beta), step)
                bar.update(1)
            if device.type == "cuda":
                torch.cuda.synchronize()
            images_per_sec = seen / (time.perf_counter() - start)
            writer.scalars("train", {"images_per_sec": images_per_sec, "epoch": epoch + 1}, step)
            writer.scalars("train", {"lr": scheduler.get_last_lr()[0]}, step)  # the rate this epoch used
            scheduler.step()  # once per epoch (configs/scheduler/)
            model.eval()
            val = average_terms(model, estimator, val_x, cfg.eval_batch_size, cfg.beta)
            writer.scalars("val", val, step)
            write_pictures(writer, model, test_x[:cfg.num_images // 2], prior_z, data.image_shape, step)
            log.info("epoch %d step %d: val elbo %.3f, %.0f images/s", epoch + 1, step,
                     val.get("elbo", float("nan")), images_per_sec)
            state = checkpoint_state(cfg, model, estimator, optimizer, scheduler, step, epoch + 1, batch_gen)
            save_checkpoint(run_dir / "checkpoint.pt", state)
    model.eval()
    test = average_terms(model, estimator, test_x, cfg.eval_batch_size, cfg.beta)
    writer.scalars("test", test, step)
    metrics = {f"test/{k}": v for k, v in test.items()}
    metrics.update({f"val/{k}": v for k, v in val.items()})
    metrics.update({"train/images_per_sec": images_per_sec, "step": step})
    if cfg.get("eval") is not None:  # L_K, posterior gap, active units, probe, pictures (configs/eval/)
        from vae_cli.evaluation import evaluate  # here: vae_cli.evaluation imports this module
        metrics.update(evaluate(model, data, test_x, cfg.eval, writer, step, cfg.seed).figures)
    writer.hparams(OmegaConf.to_container(cfg, resolve=True), metrics)
    writer.close()
    (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    log.info("test elbo %.3f nats (recon %.3f, kl %.3f); run folder %s",
             test["elbo"], test["recon"], test["kl"], run_dir)
    return metrics


def write_pictures(writer: RunWriter, model, x: torch.Tensor, prior_z: torch.Tensor, shape, step: int):
    """Test examples beside their reconstructions, and decoded prior samples, as image grids."""
    with torch.no_grad():
        recon = model.reconstruct(x)
        pairs = torch.stack([x, recon], dim=1).flatten(0, 1)  # (2N, D): original, reconstruction, ...
        samples = model.likelihood.mean(model.decode(prior_z))
    writer.images("test/reconstructions", pairs.view(-1, *shape), step)
    writer.images("samples/prior", samples.view(-1, *shape), step)


def checkpoint_state(cfg, model, estimator, optimizer, scheduler, step: int, epoch: int, batch_gen) -> dict:
    """Everything needed to rebuild the model from the file alone, and to resume."""
    rng = {"torch": torch.get_rng_state(), "batches": batch_gen.get_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    return {"model": model.state_dict(), "estimator": estimator.state_dict(),
            "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "step": step,
            "epoch": epoch, "rng": rng,
            "config": OmegaConf.to_container(cfg, resolve=True)}
