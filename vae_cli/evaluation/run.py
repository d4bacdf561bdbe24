"""evaluate(): a trained model's figures and pictures on the test set; evaluate_run(): the job of vae-eval."""
import contextlib
import errno
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from vae_cli.build import build_data, build_model
from vae_cli.checkpoint import load_checkpoint, write_json
from vae_cli.device import resolve_device, use_threads
from vae_cli.errors import ConfigError, WriteError, check_choice, reason
from vae_cli.eval_data import (EVAL_DRAWS, PICTURE_TAGS, check_eval_settings, mean_stderr, picture_grids,
                               prepare_eval_sets, seeded, stream_seed, with_error)
from vae_cli.evaluation.active_units import active_units, activity, latent_means
from vae_cli.evaluation.iwae import bits_per_dim, log_px_estimates
from vae_cli.evaluation.pictures import interpolation, tile, traversal, write_embedding
from vae_cli.evaluation.probe import probe
from vae_cli.likelihoods import Bernoulli, ContinuousBernoulli, to_unit
from vae_cli.run_state import BEST, CHECKPOINT, launch_folder, read_status, with_data_paths_from
from vae_cli.training_state import best_label, chosen_model

log = logging.getLogger(__name__)

# What each figure measures, written beside them in TensorBoard (eval/notes) and in eval.json.
MEANINGS = {
    "L_K": "L_K = E[log (1/K) sum_k p(x, z_k) / q(z_k|x)], K = eval.num_samples: a LOWER bound on log p(x) "
           "that rises with K (Burda et al. 2016), per test example, in nats",
    "elbo_L1": "L_1, the ELBO on the same K draws (their mean log weight)",
    "posterior_gap": "L_K - L_1: a lower bound on KL(q(z|x) || p(z|x)), tight only as K grows",
    "active_units": "latent variables whose posterior mean varies over the test set (Var > 0.01)",
}


@dataclass
class Evaluation:
    figures: dict  # "test/L_K", "probe/latent_n10", ...: per-example nats (with *_stderr), a count, an accuracy
    notes: list  # what a reader needs in order to compare the figures, one sentence each
    images_x_samples_per_sec: float  # throughput of L_K: decoder passes per second
    images: dict = field(default_factory=dict)  # TensorBoard tag -> image (1, C, H, W)
    embedding: tuple | None = None  # (means, labels, images) for the projector

    def write(self, writer, step: int, prefix: str = "") -> None:
        """Scalars, pictures and notes to TensorBoard at step; prefix keeps vae-eval's tags apart."""
        for tag, value in self.figures.items():
            writer.scalars(prefix + tag.split("/")[0], {tag.split("/", 1)[1]: value}, step)
        for tag, image in self.images.items():
            writer.images(prefix + tag, image, step)
        if self.embedding is not None:
            write_embedding(writer, *self.embedding, step)
        writer.text(prefix + "eval/notes", "\n\n".join(self.notes))


def rows_per_pass(settings: DictConfig) -> int:
    """Images per encoder pass for the latent means, one row each: as many rows as one decoder pass
    of L_K takes (batch_size * chunk_size), so the same memory; batch_size alone is mostly call overhead."""
    return settings.batch_size * settings.chunk_size


def is_discrete(likelihood) -> bool:
    """Bernoulli on binary pixels is a probability mass function: log p(x) in nats, no bits/dim."""
    return isinstance(likelihood, Bernoulli) and not isinstance(likelihood, ContinuousBernoulli)


def likelihood_figures(model, test_x: torch.Tensor, settings: DictConfig):
    """({L_K, L_K_stderr, elbo_L1, posterior_gap[, bits_per_dim]}, notes, images x samples per second)."""
    likelihood, notes, x = model.likelihood, [], test_x  # the test set as training prepares it
    dequantized = getattr(likelihood, "dequantize", False)
    if is_discrete(likelihood):
        notes.append("bits/dim not reported: the Bernoulli likelihood is a probability mass on "
                     "binarized pixels, so log p(x) is already a discrete log-probability in nats")
    elif dequantized:
        notes.append("continuous data: L_K, the ELBO and the gap are densities of the test images "
                     "dequantized to (k + u)/256, u ~ U[0,1); bits/dim = -L_K/(D ln 2) + 8 bounds the "
                     "discrete model's bits per pixel from above")
    else:  # the test images as training prepares them (k/255), like the test ELBO beside these figures
        notes.append("continuous data without dequantization (likelihood.dequantize=false): L_K, the ELBO "
                     "and the gap are densities at the grid values k/255 the model was trained on, like "
                     "test/elbo; a density at points bounds no probability of the 8-bit images, so no "
                     "bits/dim (train with likelihood.dequantize=true for it)")
    if getattr(likelihood, "scale", None) == "optimal":
        notes.append("likelihood.scale=optimal: sigma is the one fitted on training batches and frozen "
                     "in the checkpoint, for every test image and draw")
    start = time.perf_counter()
    log_px, elbo, log_px_var, elbo_var = log_px_estimates(
        model, x, settings.num_samples, settings.chunk_size, settings.batch_size, variances=True)  # (N,) each
    if x.device.type == "cuda":
        torch.cuda.synchronize()
    throughput = x.shape[0] * settings.num_samples / (time.perf_counter() - start)
    figures = {"L_K": log_px.mean().item(), "L_K_stderr": mean_stderr(log_px_var),
               "elbo_L1": elbo.mean().item(), "elbo_L1_stderr": mean_stderr(elbo_var),
               "posterior_gap": (log_px - elbo).mean().item()}
    if dequantized:
        figures["bits_per_dim"] = bits_per_dim(figures["L_K"], x.shape[1])
    notes += [f"{name}: {meaning}" for name, meaning in MEANINGS.items()]
    notes.append(f"here K = {settings.num_samples} draws per test image")  # TensorBoard's tags do not say
    return figures, notes, throughput


def probe_figures(model, data, test_means: torch.Tensor, settings: DictConfig,
                  generator: torch.Generator, seed: int) -> dict:
    """Probe accuracies on the latent means (and, with eval.pixel_baseline, on raw pixels)."""
    train_x = model.likelihood.prepare_pixels(data.train_x, generator).to(test_means.device)
    train_means = latent_means(model, train_x, rows_per_pass(settings))
    features = {"latent": (train_means.flatten(1), test_means.flatten(1))}
    if settings.pixel_baseline:  # the same classifier on raw intensities: the data's own baseline
        features["pixels"] = (to_unit(data.train_x), to_unit(data.test_x))
    return probe(features, data.train_y, data.test_y, settings.probe_sizes, seed)


def evaluate(model, data, test_x: torch.Tensor, settings: DictConfig, eval_seed: int) -> Evaluation:
    """L_K, L_1 and their gap (docs/math.md), bits/dim for dequantised data, active units, the probe and the
    latent pictures of the model on test_x (the test set as prepare_eval_sets made it). Nothing is written:
    Evaluation.write does that, so an interrupted evaluation leaves no partial figures.

    Draws come from eval_seed on a forked RNG: the same model and settings give the same figures, whatever
    the training seed, and training's random stream is left as it was.
    """
    check_eval_settings(settings)
    start = time.perf_counter()
    model.eval()
    device, shape = test_x.device, data.image_shape
    with seeded(stream_seed(eval_seed, EVAL_DRAWS), device):
        generator = torch.Generator().manual_seed(stream_seed(eval_seed, EVAL_DRAWS))  # CPU: preparing pixels
        test, notes, throughput = likelihood_figures(model, test_x, settings)
        means = latent_means(model, test_x, rows_per_pass(settings))  # (N, K) or (N, V, C)
        unit_activity = activity(means)  # (V,)
        test["active_units"] = active_units(unit_activity)
        probes = probe_figures(model, data, means, settings, generator, eval_seed)
        images = {}
        if settings.pictures:
            images["latents/traversal"] = tile(traversal(model, means, unit_activity, shape))
            images["latents/interpolations"] = tile(interpolation(model, test_x, means, shape))
    embedding = (means, data.test_y, to_unit(data.test_x).view(-1, *shape)) if settings.embedding else None
    figures = {f"test/{k}": v for k, v in test.items()} | {f"probe/{k}": v for k, v in probes.items()}
    bits = f"; {test['bits_per_dim']:.3f} bits/dim, an upper bound" if "bits_per_dim" in test else ""  # dequantised
    log.info("test L_%d %s nats (a lower bound on log p(x)%s), ELBO %.2f, gap %.2f; %d active %s; "
             "%.0f images x samples/s; the whole evaluation took %.1f s", settings.num_samples,
             with_error(test["L_K"], test["L_K_stderr"]), bits, test["elbo_L1"], test["posterior_gap"],
             test["active_units"], "unit" if test["active_units"] == 1 else "units", throughput,
             time.perf_counter() - start)
    if probes:  # per feature set (latent means, pixels) and labelled training images per class
        log.info("probe accuracy on the test set (logistic regression): %s",
                 ", ".join(f"{name} {accuracy:.3f}" for name, accuracy in probes.items()))
    return Evaluation(figures=figures, notes=notes, images_x_samples_per_sec=throughput, images=images,
                      embedding=embedding)


def chosen_weights(run_dir: Path, state: dict, which: str, device: torch.device) -> tuple[dict, str]:
    """(the checkpoint whose weights load_run evaluates, that model in words), given checkpoint.pt's state."""
    weights, loop = state, state.get("loop") or {}
    used = f"last (epoch {state.get('epoch')}, step {state['step']})"
    best = loop.get("provisional") or loop.get("best")  # as training's end chose (training_state.chosen_model)
    if which == "best" and best is not None:
        used = chosen_model(best, int(state["step"])) or best_label(best, int(state["step"]))
    if which == "best" and used.startswith("best (epoch") and not (run_dir / BEST).is_file():
        log.warning("%s has no best.pt: evaluating the run's last model, checkpoint.pt", run_dir)  # as training
        used = "last (best.pt missing)"
    elif which == "best.pt" or (which == "best" and used.startswith("best (epoch")):
        try:
            weights = load_checkpoint(run_dir / BEST, map_location=device)
        except ConfigError as err:
            raise ConfigError(f"{err}; or evaluate the run's last model instead: checkpoint=last") from err
        if which == "best.pt":  # the file named: the best whole epoch's model, whatever the run's figures used
            used = f"best.pt (epoch {weights.get('epoch')}, step {weights.get('step')})"
    elif which == "best" and best is None:  # a checkpoint without the loop's record (written by hand?)
        log.warning("%s records no best model: evaluating its last model, checkpoint.pt", run_dir)
    return weights, used


def load_run(run_dir: Path, device: torch.device, which: str = "best", moved: dict | None = None):
    """(config, data, model with the chosen checkpoint's weights, the last checkpoint's state (best.pt's where
    checkpoint.pt was deleted), the chosen weights' checkpoint, which model that is in words) of a run folder;
    which: last, or best: the model the run's own test figures used (metrics.json's model_used): best.pt, the
    best validation ELBO of a whole epoch, or the last model where max_steps stopped the run inside an epoch
    at a better one. moved: where the run's data files are now (a run folder copied to another machine, a data
    set moved), {"root": data.root's folder, "path": data.path's file (docs/extending.md's data set)}."""
    check_choice("checkpoint", which, ("best", "last", "best.pt"))
    if not (run_dir / CHECKPOINT).exists() and (run_dir / BEST).exists():  # checkpoint.pt deleted to save space
        if which == "last":
            raise ConfigError(f"{run_dir} has no {CHECKPOINT}, the run's last model (checkpoint=last), but has "
                              f"{BEST}: leave checkpoint=last out to evaluate that")
        log.warning("%s has no %s: evaluating %s, the model of the run's best whole epoch", run_dir, CHECKPOINT, BEST)
        state = weights = load_checkpoint(run_dir / BEST, map_location=device)
        used = f"best.pt (epoch {weights.get('epoch')}, step {weights.get('step')})"
    else:
        state = load_checkpoint(run_dir, map_location=device)
        weights, used = chosen_weights(run_dir, state, which, device)
    cfg = with_data_paths_from(OmegaConf.create(state["config"]), launch_folder(run_dir))
    for key, where in (moved or {}).items():  # checked by their path, not their images: the user's to vouch for
        if key not in cfg.data:  # synthetic data: a load_synthetic() TypeError (a code review)
            raise ConfigError(f"data.{key}={where}: the run's data ({cfg.data.get('_target_')}) have no {key} "
                              f"setting; leave data.{key} out")
        now = str(Path(where).expanduser().resolve())
        if now != cfg.data[key]:
            log.warning("data.%s=%s in place of the run's %s", key, now, cfg.data[key])
        OmegaConf.update(cfg, f"data.{key}", now)
    recorded = cfg.get("data_source")
    data = build_data(cfg, trained_on=recorded)
    if recorded and recorded != data.source:
        log.warning("the run was trained on %s; evaluating on %s", recorded, data.source)
    model = build_model(cfg, data.data_dim).to(device)
    try:
        model.load_state_dict(weights["model"])
    except RuntimeError as err:
        raise ConfigError(f"checkpoint in {run_dir}: its weights do not fit the model rebuilt from its config "
                          f"({reason(err)}); the weights and the config stored with them disagree (another "
                          "vae-cli version, or files copied from another run): point at another run") from err
    return cfg, data, model.eval(), state, weights, used


def evaluate_run(run_dir, eval_cfg: DictConfig) -> Evaluation:
    """vae-eval: evaluate a run folder's best (or last) model, writing eval.json and TensorBoard events
    under the tags vae-eval/K<K>/... (apart from training's own figures, and from an evaluation at
    another K, whose figures would otherwise share the tags and the step)."""
    from vae_cli.summary import RunWriter  # noqa: PLC0415

    run_dir = Path(run_dir)
    run_dir = run_dir.parent if run_dir.is_file() else run_dir
    check_eval_settings(eval_cfg.eval)
    device = resolve_device(eval_cfg.device)
    threads = use_threads(eval_cfg.threads)
    cfg, data, model, state, weights, model_used = load_run(run_dir, device, eval_cfg.checkpoint,
                                                            moved_data(eval_cfg.data))
    check_writable(run_dir)
    run_status = read_status(run_dir) or {}
    if run_status.get("state") in ("running", "interrupted", "failed"):  # its --help says: a finished run
        command = run_status.get("resume_command")  # None where resuming cannot help (a diverged run)
        finish = f"; `{command}` finishes it" if (command and run_status["state"] != "running"
                                                   and (run_dir / CHECKPOINT).exists()) else ""
        log.warning("the run in %s is %s, at step %s of %s: evaluating %s, a model of the run so far%s", run_dir,
                    run_status["state"], run_status.get("step"), run_status.get("total_steps"), model_used, finish)
    eval_seed = cfg.get("eval_seed", 0)
    test_x = prepare_eval_sets(model.likelihood, data, device, eval_seed)[1]
    step = int(weights["step"])  # the model's: best and last at one K had the same tags at the same step
    result = evaluate(model, data, test_x, eval_cfg.eval, eval_seed)
    image_gen = torch.Generator(device=device).manual_seed(cfg.seed + 2)  # training's prior samples
    prior_z = model.latent.sample_prior(cfg.num_images, image_gen)
    grids = picture_grids(model, test_x[:cfg.num_images // 2], prior_z, data.image_shape)
    result.images.update({PICTURE_TAGS[name]: images for name, images in grids.items()})
    try:
        writer = RunWriter(run_dir)
        result.write(writer, step, prefix=tag_prefix(eval_cfg.eval))
        writer.close()
    except OSError as err:  # TensorBoard's writer thread: the disk filled during the evaluation
        raise WriteError(f"could not write TensorBoard events in {run_dir} ({reason(err)}); free some space and "
                         "run the same command again") from err
    report = {"figures": result.figures, "notes": result.notes, "step": step, "model_used": model_used,
              "run_state": run_status.get("state"),
              "data_source": data.source, "device": str(device), "threads": threads,
              "settings": OmegaConf.to_container(eval_cfg.eval, resolve=True),
              "images_x_samples_per_sec": result.images_x_samples_per_sec}
    keep_earlier_report(run_dir / "eval.json", report)
    write_json(run_dir / "eval.json", report)
    log.info("figures written to %s and its TensorBoard events (tags %s...)", run_dir / "eval.json",
             tag_prefix(eval_cfg.eval))
    return result


def moved_data(settings: DictConfig) -> dict:
    """vae-eval's data.root and data.path settings that are given (null: where the run had them)."""
    return {key: value for key, value in settings.items() if value is not None}


def tag_prefix(settings: DictConfig) -> str:
    return f"vae-eval/K{settings.num_samples}/"


def check_writable(run_dir: Path) -> None:
    """vae-eval writes eval.json and TensorBoard events into the run folder: a read-only or full one is
    refused before the evaluation (minutes at K = 5000), not after it, its figures lost."""
    probe = run_dir / ".vae-eval-can-write"
    try:
        with open(probe, "wb") as f:
            f.write(bytes(65536))
            f.flush()
            os.fsync(f.fileno())
    except OSError as err:
        mend = ("free some space" if err.errno in (errno.ENOSPC, errno.EDQUOT) else
                "make it writable, or evaluate a copy of the run folder")
        raise WriteError(f"{run_dir} cannot be written ({err.strerror}): vae-eval writes eval.json and TensorBoard "
                         f"events there; {mend}") from err
    finally:
        with contextlib.suppress(OSError):  # absent; a read-only file system says so for an absent file too
            probe.unlink()


def keep_earlier_report(path: Path, report: dict) -> None:
    """An eval.json of other settings or another model (K = 1000, before an eval=light) is not overwritten:
    it is renamed eval-1.json (or the first free number). One of the same settings and model is replaced:
    the evaluation is deterministic, its figures the same. The model is told by its step, one model per step
    of a run: checkpoint=best and checkpoint=best.pt name one model in two ways."""
    try:
        earlier = json.loads(path.read_text())
    except OSError:  # none there
        return
    except ValueError:  # damaged, or edited by hand: kept, it may be all that is left of a long evaluation
        earlier = None
    same = {k: report[k] for k in ("settings", "step")}
    if isinstance(earlier, dict) and {k: earlier.get(k) for k in same} == same:
        return
    number = 1
    while path.with_name(f"eval-{number}.json").exists():
        number += 1
    kept = path.rename(path.with_name(f"eval-{number}.json"))
    log.info("the earlier %s (%s) kept as %s", path.name, "other settings or model" if earlier is not None else
             "unreadable", kept.name)

