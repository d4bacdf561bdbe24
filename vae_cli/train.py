"""train(cfg, run_dir): optimise the ELBO in a run folder that can be stopped and resumed at any step."""
import contextlib
import logging
import math
import random
import time
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf, open_dict

from vae_cli.build import build_data, build_estimator, build_model, build_optimizer
from vae_cli.checkpoint import write_json
from vae_cli.device import resolve_device, use_threads
from vae_cli.errors import ConfigError, check_bool, check_choice, check_integer, check_number
from vae_cli.estimators.terms import TERM_NAMES
from vae_cli.estimators.train_step import make_train_step
from vae_cli.eval_data import check_eval_settings, with_error
from vae_cli.interrupts import StopSignals, say_last_line, stop_after_the_run
from vae_cli.loop import Diverged, Loop, Stopped
from vae_cli.run_end import finish
from vae_cli.run_state import (CHECKPOINT, METRICS, Status, data_base, plan_run, remove_run_files,
                               remove_temporary_files, run_files, run_lock, with_data_paths_from)
from vae_cli.schedules import build_scheduler
from vae_cli.training_state import restore

log = logging.getLogger(__name__)

# Top-level settings: key -> (smallest accepted integer, None allowed, what it means if refused).
INTEGER_SETTINGS = {
    "seed": (0, False, ""), "eval_seed": (0, False, ""), "epochs": (1, False, ""),
    "batch_size": (1, False, ""), "eval_batch_size": (1, False, ""), "log_every": (1, False, ""),
    "max_steps": (1, True, "or null: run all epochs"),
    "num_images": (2, False, "half as many test examples are reconstructed"),
    "diagnostics.every": (0, False, "0: off"), "diagnostics.batch_size": (1, False, ""),
    "diagnostics.num_estimates": (2, False, "a variance needs two estimates; turn diagnostics off with "
                                            "diagnostics.every=0"),
    "early_stopping.patience": (1, True, "epochs without a better validation ELBO; null: off"),
    "model.latent_dim": (1, False, "latent variables"),
}


VAL_FIGURES = tuple(f"val/{name}" for name in (*TERM_NAMES, "elbo_stderr"))  # what validation measures


# Switches, where the chosen config groups have them.
BOOLEAN_SETTINGS = ("overwrite", "fail_fast", "data.download", "data.retry_download", "likelihood.dequantize",
                    "estimator.straight_through")


def check_settings(cfg: DictConfig) -> None:
    """The top-level numbers, each a one-line ConfigError naming the key when wrong (before any work)."""
    for key, (minimum, nullable, hint) in INTEGER_SETTINGS.items():
        value = OmegaConf.select(cfg, key)
        if not (nullable and value is None):
            check_integer(key, value, minimum, hint)
    for key in BOOLEAN_SETTINGS:
        if OmegaConf.select(cfg, key, default=None) is not None:
            check_bool(key, OmegaConf.select(cfg, key))
    check_number("beta", cfg.beta, 0, "the KL weight")
    check_number("checkpoint.every_minutes", cfg.checkpoint.every_minutes, 0, "0: at epoch ends only")
    clip = cfg.optimizer.get("clip_grad_norm")
    if clip is not None and not check_number("optimizer.clip_grad_norm", clip) > 0:
        raise ConfigError(f"optimizer.clip_grad_norm={clip!r} must be > 0, or null: no clipping")
    check_choice("train_step", cfg.train_step, ("auto", "fused", "autograd"))
    check_choice("objective.direction", cfg.objective.direction, ("maximize", "minimize"))
    if not str(cfg.objective.metric).startswith("val/"):
        raise ConfigError(f"objective.metric={cfg.objective.metric!r} is not a validation figure: the test "
                          "set must never choose anything; use e.g. objective.metric=val/elbo")
    if cfg.objective.metric not in VAL_FIGURES:
        raise ConfigError(f"objective.metric={cfg.objective.metric!r} is not a figure validation measures; "
                          f"choose one of {', '.join(VAL_FIGURES)}")
    if cfg.get("eval") is not None:  # the end-of-run evaluation's (configs/eval/), not after training
        check_eval_settings(cfg.eval)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def train(cfg: DictConfig, run_dir: str | Path, on_start=None) -> dict:
    """Train the configured VAE in run_dir, or resume it there, or report it if it is finished.

    Everything is checked (config, data, the folder's earlier run) before anything but Hydra's own files
    is written; on_start(plan), if given, runs at that point. Writes TensorBoard events, checkpoint.pt
    (the last state, every epoch and every checkpoint.every_minutes), best.pt (best validation ELBO),
    status.json, metrics.json (figures of the best model), and returns metrics.json's figures.
    Raises ConfigError (bad input), Diverged, Stopped (a signal; checkpoint written), Interrupted (a signal
    outside the training loop, where there is no step to finish).
    """
    # Ctrl-C while loading is one line too; in the loop, a step boundary. One vae-train per folder.
    with StopSignals() as signals, run_lock(Path(run_dir)):
        metrics = checked_run(cfg, Path(run_dir), on_start, signals)
    if signals.pending:  # a stop while the finished run wrote its last files: acted on now
        stop_after_the_run(signals.signum)
    return metrics


# Whether this process has begun a run (a sweep's jobs share one process with the basic launcher): after
# the first, whether it trained or not (a finished job skipped, one whose settings were refused), the
# start-up line counts from the job's start, which the process's start no longer is.
RUN_BEGUN = False


def checked_run(cfg: DictConfig, run_dir: Path, on_start, signals: StopSignals) -> dict:
    global RUN_BEGUN
    job_start = time.perf_counter() if RUN_BEGUN else None  # None: the start-up counts from process start
    RUN_BEGUN = True
    check_settings(cfg)
    remove_temporary_files(run_dir)  # the lock is held: no other vae-train writes them
    plan = plan_run(run_dir, cfg)
    if plan.action == "finished":
        log.info("%s is finished (metrics.json); not trained again: %s%s", run_dir, summary_line(plan.metrics),
                 plan.why)
        return plan.metrics
    threads = use_threads(cfg.threads)
    seed_everything(cfg.seed)
    device = resolve_device(cfg.device)
    trained_on = plan.state["config"].get("data_source") if plan.state else None
    # the data's warnings (the MNIST subset) are logged once the whole config is checked
    with HeldRecords("vae_cli.data") as data_log:
        data = build_data(with_data_paths_from(cfg.copy(), data_base(cfg, run_dir)), trained_on)
        if trained_on and trained_on != data.source:  # full MNIST in another folder, say
            log.warning("the run was trained on %s; it goes on with %s", trained_on, data.source)
        num_train = data.train_x.shape[0]
        if cfg.batch_size > num_train:
            raise ConfigError(f"batch_size={cfg.batch_size} is larger than the training split ({num_train:,} "
                              f"images of {data.name}); use batch_size <= {num_train}")
        cfg = cfg.copy()  # the caller's config is not changed
        model = build_model(cfg, data.data_dim).to(device)
        estimator = build_estimator(cfg, model, data).to(device)
        optimizer = build_optimizer(cfg, list(model.parameters()) + list(estimator.parameters()), device)
        scheduler = build_scheduler(cfg, optimizer)
        train_step = make_train_step(cfg.train_step, model, estimator, optimizer, cfg.beta, device,
                                     clip_grad_norm=cfg.optimizer.get("clip_grad_norm"))
        with open_dict(cfg):  # what the run really used, so no one mistakes a subset for the full set
            cfg.data_source, cfg.device_used = data.source, str(device)
            cfg.train_step_used, cfg.threads_used = train_step.name, threads
        model.likelihood.check_data(data.train_x, data.val_x, data.test_x)  # every image, not a sample
        data_log.replay()  # not reached after a bad value: its error line is all the command prints
    if plan.action == "resume":
        restore(plan.state, model, estimator, optimizer, scheduler)

    # Checked: from here on the run folder is written.
    if plan.action == "fresh" and run_files(run_dir):
        if cfg.get("overwrite") and (run_dir / CHECKPOINT).is_file():  # a sweep's finished jobs too: said
            log.warning("overwrite=true: the %s run in %s is deleted (its checkpoints, metrics and events) and "
                        "starts afresh", "finished" if (run_dir / METRICS).is_file() else "unfinished", run_dir)
        remove_run_files(run_dir)  # else a failed run, or one that died before its first checkpoint
    if on_start is not None:
        on_start(plan)
    loop = Loop(cfg, run_dir, data, model, estimator, optimizer, scheduler, train_step, device, plan.state,
                job_start)
    log.info("data: %s; training step: %s; %d %s; %s", data, train_step.name, threads,
             "thread" if threads == 1 else "threads", f"resuming at step {loop.step}" if plan.state else "fresh run")
    if plan.state and loop.step > loop.total_steps:  # a mistyped epochs=2 for 20 would end it quietly
        log.warning("epochs=%d%s asks for %d steps, and the run has taken %d already: it ends without "
                    "training further", cfg.epochs, "" if cfg.max_steps is None else f", max_steps={cfg.max_steps}",
                    loop.total_steps, loop.step)
    status = Status(run_dir, total_steps=loop.total_steps, threads=threads, step=loop.step, epoch=loop.epoch)
    status.update()
    OmegaConf.save(cfg, run_dir / "config.yaml", resolve=True)
    start = time.perf_counter()
    finished = False
    try:
        loop.run(signals, status, start)
        metrics = finish(loop, signals)  # closes TensorBoard's writer
        finished = True
    except Stopped as stop:
        status.update(time.perf_counter() - start, state="interrupted", step=loop.step, epoch=loop.epoch)
        if signals.forwards():  # a scheduler's own handler (submitit requeues the job, exiting) after our checkpoint
            say_last_line(str(stop), error=False)
            stop.said = True
            signals.forward()
        raise stop
    except Diverged as err:
        status.update(time.perf_counter() - start, state="failed", error=str(err), step=loop.step,
                      resume_command=None)
        raise
    except BaseException as err:
        interrupted = getattr(err, "signum", None) is not None
        resumable = (run_dir / CHECKPOINT).is_file()  # else nothing to resume: the same command starts it again
        status.update(time.perf_counter() - start, state="interrupted" if interrupted else "failed",
                      error=None if interrupted else f"{type(err).__name__}: {err}".splitlines()[0],
                      step=loop.step, **({} if resumable else {"resume_command": None}))
        raise
    finally:
        if not finished:  # the events so far on disk; an error in that must not hide the run's own
            with contextlib.suppress(Exception):
                loop.writer.close()
    not_finite = [name for name, value in metrics.items() if isinstance(value, float) and not math.isfinite(value)]
    if not_finite:  # e.g. a posterior variance beyond float32's range: L_K's log q(z|x) is 0 * inf
        log.warning("%s not finite (null in metrics.json): the trained model is degenerate; train it again with a "
                    "lower optimizer.lr (now %s) or with optimizer.clip_grad_norm", ", ".join(not_finite),
                    cfg.optimizer.lr)
    write_json(run_dir / METRICS, metrics)  # then status.json: a finished status always has its metrics
    status.update(time.perf_counter() - start, state="finished", step=loop.step, epoch=loop.epoch,
                  images_per_sec=loop.images_per_sec, objective=objective_value(cfg, metrics), resume_command=None)
    log.info("%s; run folder %s", summary_line(metrics), run_dir)
    return metrics


class HeldRecords(logging.Handler):
    """In a with block, holds the records a logger and its children log until replay(), which logs them as
    they came (the block's end drops any not replayed). A command refused for a bad value found once the
    data was loaded (likelihood.scale=wobbly) printed the data's warnings first; held, they show only for a
    command that goes on to train."""

    def __init__(self, name: str):
        super().__init__()
        self.logger, self.records = logging.getLogger(name), []
        self.propagated, self.logger.propagate = self.logger.propagate, False
        self.logger.addHandler(self)

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def __enter__(self) -> "HeldRecords":
        return self

    def __exit__(self, *exc) -> None:  # records not replayed (an error came first) are dropped
        self.detach()

    def detach(self) -> None:
        self.logger.removeHandler(self)
        self.logger.propagate = self.propagated

    def replay(self) -> None:
        self.detach()
        for record in self.records:
            logging.getLogger(record.name).handle(record)
        self.records = []


def objective_value(cfg: DictConfig, metrics: dict) -> dict:
    """The figure a sweep optimises (cfg.objective), never a test figure."""
    metric = cfg.objective.metric
    return {"metric": metric, "direction": cfg.objective.direction, "value": metrics.get(metric)}


def summary_line(metrics: dict) -> str:
    """The final figures, each with no more digits than its standard error allows."""
    def figure(name):
        return with_error(metrics[name], metrics.get(f"{name}_stderr"))

    parts = [f"test ELBO {figure('test/elbo')} nats"]
    if "test/L_K" in metrics:
        parts.append(f"L_K {figure('test/L_K')}")
    parts.append(f"KL {metrics['test/kl']:.1f}")
    if "val/elbo" in metrics:
        parts.append(f"best epoch {metrics['best/epoch']} (val ELBO {figure('val/elbo')})")
    return ", ".join(parts)
