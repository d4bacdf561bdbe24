"""The training loop of one run: epochs of steps, validation and model selection, checkpoints that resume
at any step boundary (the end of the run, once training is done: vae_cli/run_end.py)."""
import logging
import math
import os
import signal
import time
from pathlib import Path
from typing import NoReturn

import torch
from omegaconf import OmegaConf
from tqdm.auto import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from vae_cli.checkpoint import save_checkpoint
from vae_cli.diagnostics import gradient_diagnostics
from vae_cli.estimators import TERM_NAMES
from vae_cli.eval_data import (PICTURE_TAGS, VAL_DRAWS, average_terms, picture_grids, prepare_eval_sets,
                               stream_seed)
from vae_cli.run_state import BEST, CHECKPOINT, resume_command, still_stopped_early
from vae_cli.summary import RunWriter
from vae_cli.training_state import capture, restore_loop

log = logging.getLogger("vae_cli.train")

# Training batches are gathered and prepared (binarized) this many at a time, in one call: ~5 % faster
# steps of the default model on 2 CPU cores than one batch at a time, whose calls each start with cold
# caches after the previous step. Blocks stop at an epoch's end and at the last step: no draws are wasted.
PREPARE_AHEAD = 16


class Diverged(Exception):
    """A non-finite loss, term or gradient: the run stops; its last good checkpoint stays as it was."""


class Stopped(Exception):
    """A stop signal arrived; a checkpoint was written at the step boundary that followed it."""

    def __init__(self, signum: int, message: str):
        super().__init__(message)
        self.signum = signum


def seconds_since_process_start() -> float:
    """From the kernel's record of this process's start (Linux); elsewhere since this module's import."""
    try:
        with open("/proc/self/stat") as f:
            start_ticks = int(f.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        return uptime - start_ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return time.perf_counter() - IMPORTED_AT


IMPORTED_AT = time.perf_counter()


class Loop:
    """Holds the run's position (step; epoch; index, the steps done in the current epoch; the epoch's
    permutation; the batch generator's state where the current block of batches was drawn), the running
    sums of the logged terms and the model selection, so that checkpoint.pt captures all of it and a
    resumed run takes exactly the steps the uninterrupted run would have taken."""

    def __init__(self, cfg, run_dir: Path, data, model, estimator, optimizer, scheduler, train_step, device,
                 state: dict | None, job_start: float | None):
        # perf_counter() as train() began, where the start-up line counts from it; None: from process start
        self.job_start = job_start
        self.cfg, self.run_dir, self.data, self.device = cfg, run_dir, data, device
        self.model, self.estimator, self.optimizer, self.scheduler = model, estimator, optimizer, scheduler
        self.train_step, self.likelihood = train_step, model.likelihood
        self.train_x = data.train_x.to(device)  # uint8; batches are taken by index and prepared on the device
        self.val_x, self.test_x = prepare_eval_sets(model.likelihood, data, device, cfg.eval_seed)
        self.batch_gen = torch.Generator(device=device).manual_seed(cfg.seed)
        image_gen = torch.Generator(device=device).manual_seed(cfg.seed + 2)
        self.prior_z = model.latent.sample_prior(cfg.num_images, image_gen)  # same z every epoch
        diag_gen = torch.Generator().manual_seed(cfg.seed + 1)
        self.diag_x = model.likelihood.prepare_pixels(data.train_x[:cfg.diagnostics.batch_size], diag_gen).to(device)
        self.batch_size = cfg.batch_size
        self.steps_per_epoch = self.train_x.shape[0] // cfg.batch_size  # the last partial batch is dropped
        self.total_steps = self.steps_per_epoch * cfg.epochs
        if cfg.max_steps is not None:
            self.total_steps = min(self.total_steps, cfg.max_steps)
        self.step, self.epoch, self.index, self.perm, self.block_state, self.batches = 0, 0, 0, None, None, None
        self.sums, self.count = torch.zeros(len(TERM_NAMES), device=device), 0
        self.best = {"elbo": -math.inf, "step": None, "epoch": None, "val": {}}
        self.provisional = None  # a better model validated at max_steps inside an epoch (end_epoch)
        self.bad_epochs, self.stopped_early, self.training_done = 0, False, False
        self.saved_step = 0  # the step of the last checkpoint.pt written, for the divergence message
        self.images_per_sec, self.seen, self.epoch_start = None, 0, time.perf_counter()
        if state is not None:
            restore_loop(self, state)
            self.stopped_early = still_stopped_early(self.stopped_early, self.bad_epochs, cfg.early_stopping.patience)
        # A resumed run's events continue its own: TensorBoard hides what an earlier attempt logged after
        # the checkpoint's step, so each step shows once.
        self.writer = RunWriter(run_dir, purge_step=self.step + 1 if state is not None else None)
        if state is None:
            self.writer.config(cfg)
            self.writer.text("data/source", data.source)

    # --- training -------------------------------------------------------------------------------------
    def run(self, signals, status, start: float) -> None:
        cfg = self.cfg
        every = cfg.checkpoint.every_minutes * 60
        next_save = time.monotonic() + every if every > 0 else math.inf
        # Plain Python values for the hot loop: an OmegaConf attribute read costs microseconds each.
        log_every, diag_every = cfg.log_every, cfg.diagnostics.every
        check_every_step = self.device.type == "cpu"  # a finiteness check syncs a GPU: there, per log
        signals.immediate = False  # from here, a signal is acted on at the next step boundary
        self.model.train()
        first = True
        with logging_redirect_tqdm(), tqdm(total=self.total_steps, initial=self.step, desc="train",
                                           disable=None, dynamic_ncols=True) as bar:
            while self.step < self.total_steps and not self.stopped_early:
                x = self.next_batch()
                means = self.train_step(x)
                if first:
                    if self.job_start is not None:
                        log.info("first training step after %.2f s from this job's start",
                                 time.perf_counter() - self.job_start)
                    else:
                        log.info("first training step after %.2f s from process start", seconds_since_process_start())
                    first = False
                    opening = time.perf_counter()  # TensorBoard's writer (its imports), outside the epoch's clock
                    self.writer.open()
                    self.epoch_start += time.perf_counter() - opening
                self.sums += means
                self.count += 1
                self.step += 1
                self.index += 1
                self.seen += x.shape[0]
                if check_every_step or self.step % log_every == 0:
                    self.check_finite(means)
                if self.step % log_every == 0 or self.step == self.total_steps:
                    elbo = self.log_window()
                    bar.set_postfix(elbo=f"{elbo:.2f}", epoch=self.epoch + 1)
                if diag_every and self.step % diag_every == 0:
                    self.writer.scalars("diagnostics", gradient_diagnostics(
                        self.model, self.estimator, self.diag_x, cfg.diagnostics.num_estimates, cfg.beta), self.step)
                bar.update(1)
                if self.index == self.steps_per_epoch or self.step == self.total_steps:
                    self.end_epoch()
                    status.update(time.perf_counter() - start, step=self.step, epoch=self.epoch,
                                  images_per_sec=self.images_per_sec)
                    next_save = time.monotonic() + every if every > 0 else math.inf
                elif signals.pending or time.monotonic() >= next_save:
                    self.save()
                    status.update(time.perf_counter() - start, step=self.step, epoch=self.epoch)
                    next_save = time.monotonic() + every if every > 0 else math.inf
                if signals.pending:
                    name = signal.Signals(signals.signum).name
                    raise Stopped(signals.signum, (
                        f"stopped by {name} at step {self.step} of {self.total_steps} ({self.position()}); "
                        f"checkpoint written; resume with: {resume_command(self.run_dir)}"))

    def next_batch(self) -> torch.Tensor:
        """The next training batch: a new permutation at an epoch's start; blocks of PREPARE_AHEAD batches
        gathered and prepared in one call, drawn from batch_gen whose state before the block is kept
        (block_state), so a checkpoint taken inside a block re-draws the same block on resume."""
        if self.index == 0:
            self.perm = torch.randperm(self.train_x.shape[0], generator=self.batch_gen, device=self.device)
            self.seen, self.epoch_start = 0, time.perf_counter()
        ahead_max = PREPARE_AHEAD
        offset = self.index % ahead_max
        if offset == 0 or self.batches is None:
            first = self.index - offset  # the block's first batch in the epoch
            self.block_state = self.batch_gen.get_state()
            # Not cut at max_steps: the draws that binarize a block depend on its length, so a run ended by
            # max_steps trains on the batches of the run without it, which an extension continues.
            ahead = min(ahead_max, self.steps_per_epoch - first)
            rows = self.perm[first * self.batch_size:(first + ahead) * self.batch_size]
            block = self.train_x.index_select(0, rows)  # 6 us against 99 us for train_x[rows], 128 uint8 rows
            self.batches = self.likelihood.prepare_pixels(block.view(ahead, self.batch_size, -1), self.batch_gen)
        return self.batches[offset]

    def block_rng(self) -> torch.Tensor:
        """The batch generator's state where the block holding the next batch is (or will be) drawn: what
        checkpoint.pt keeps, so that a resumed run draws that block again, identically."""
        return self.batch_gen.get_state() if self.index % PREPARE_AHEAD == 0 else self.block_state

    def check_finite(self, means: torch.Tensor) -> None:
        """Stops the run at a non-finite term or gradient norm (measured when clipping). Without clipping a
        non-finite gradient whose loss was finite shows at the next step (or in check_parameters)."""
        grad_norm = getattr(self.train_step, "grad_norm", None)
        bad = [name for name, ok in zip(TERM_NAMES, torch.isfinite(means).tolist()) if not ok]
        if grad_norm is not None and not bool(torch.isfinite(grad_norm)):
            bad.append("gradient norm")
        if bad:
            self.diverged(self.step, f"non-finite {', '.join(bad)}")

    def check_parameters(self) -> None:
        """A checkpoint is never written from non-finite weights: the last good one stays. On the CPU every
        step's terms were checked, so the last update made them; elsewhere one since the last check did."""
        if not self.weights_finite():
            self.diverged(self.step if self.device.type == "cpu" else None,
                          "an update left non-finite weights (a non-finite gradient)")

    def weights_finite(self) -> bool:
        return all(bool(torch.isfinite(p).all()) for p in self.model.parameters())

    def diverged(self, step: int | None, what: str) -> NoReturn:
        last = self.run_dir / CHECKPOINT
        saved = (f"the last good checkpoint is {last} (step {self.saved_step})" if last.is_file()
                 else "no checkpoint was written before it")
        where = f"at step {step}" if step is not None else f"by step {self.step}"
        raise Diverged(f"training diverged {where} ({self.position()}): {what}; {saved}; {self.remedy()}")

    def position(self) -> str:
        """Where the run is, for messages: in an epoch, or after one (its end: validation, checkpoint)."""
        return f"after epoch {self.epoch}" if self.index == 0 and self.epoch else f"in epoch {self.epoch + 1}"

    def remedy(self) -> str:
        """What to change after a divergence: the learning rate, and clipping (lower, if it is on already)."""
        clip = self.cfg.optimizer.get("clip_grad_norm")
        clipping = ("set optimizer.clip_grad_norm, e.g. 10" if clip is None
                    else f"a lower optimizer.clip_grad_norm (now {clip})")
        return f"lower optimizer.lr (now {self.cfg.optimizer.lr}) or {clipping}"

    def log_window(self) -> float:
        """train/* scalars: the terms' means over the steps since the last log; returns the mean ELBO."""
        means = dict(zip(TERM_NAMES, (self.sums / max(self.count, 1)).tolist()))
        self.writer.scalars("train", means, self.step)
        extras = self.train_step.extras()
        self.writer.scalars("train", {k: float(v) for k, v in extras.items()}, self.step)
        if hasattr(self.likelihood, "last_sigma") and self.likelihood.scale != "fixed":
            self.writer.scalars("train", {"sigma": self.likelihood.last_sigma.item()}, self.step)
        self.sums.zero_()
        self.count = 0
        return means["elbo"]

    def end_epoch(self) -> None:
        """Validation, model selection, early stopping, pictures and checkpoint.pt, after an epoch, or at
        max_steps inside one. There the epoch stays unfinished (its position kept, the scheduler and early
        stopping not stepped), so a run extended past max_steps takes the steps the uninterrupted run
        would have taken; its validation still offers that model as the best one."""
        cfg = self.cfg
        complete = self.index == self.steps_per_epoch
        if self.seen:
            self.images_per_sec = self.seen / (time.perf_counter() - self.epoch_start)
            self.writer.scalars("train", {"images_per_sec": self.images_per_sec}, self.step)
        self.writer.scalars("train", {"epoch": self.epoch + 1, "lr": self.scheduler.get_last_lr()[0]}, self.step)
        if complete:
            self.scheduler.step()  # once per epoch (configs/scheduler/)
        val = self.validate()
        if complete:
            self.epoch, self.index, self.batches = self.epoch + 1, 0, None
        in_epoch = self.epoch if complete else self.epoch + 1  # the epoch this step is in, counted from 1
        patience = cfg.early_stopping.patience
        better = not val or val["elbo"] > self.best["elbo"]  # no validation split: the last model is the best
        # max_steps inside an epoch: a better model here is the run's best for its figures (the last model:
        # no file), not for selection and early stopping, which an extension continues as if unstopped
        self.provisional = None if complete or not better else {
            "elbo": val.get("elbo", -math.inf), "step": self.step, "epoch": in_epoch, "val": val}
        if complete and better:
            self.best = {"elbo": val.get("elbo", -math.inf), "step": self.step, "epoch": self.epoch, "val": val}
            self.bad_epochs = 0
            self.check_parameters()
            save_checkpoint(self.run_dir / BEST, {"model": self.model.state_dict(), "step": self.step,
                                                  "epoch": self.epoch, "val": val,
                                                  "config": OmegaConf.to_container(cfg, resolve=True)})
        elif complete:
            self.bad_epochs += 1
            if patience is not None and self.bad_epochs >= patience:
                self.stopped_early = True
                log.info("early stopping after epoch %d: no better validation ELBO for %d epochs (best %.3f at "
                         "epoch %d)", self.epoch, patience, self.best["elbo"], self.best["epoch"])
        self.training_done = self.step >= self.total_steps or self.stopped_early
        self.write_pictures(self.step)
        self.save()
        fraction = OmegaConf.select(cfg, "data.val_fraction", default=0)
        checked = (f"val elbo {val['elbo']:.3f}" if val else f"no validation split (data.val_fraction={fraction}"
                   + (")" if not fraction else " holds no image)"))
        where = (f"epoch {self.epoch} step {self.step}" if complete else f"max_steps reached at step {self.step}, "
                 f"partway through epoch {in_epoch} ({self.index} of its {self.steps_per_epoch} steps)")
        log.info("%s: %s, %.0f images/s", where, checked, self.images_per_sec or float("nan"))

    def validate(self) -> dict:
        cfg = self.cfg
        self.model.eval()
        val = average_terms(self.model, self.estimator, self.val_x, cfg.eval_batch_size, cfg.beta,
                            seed=stream_seed(cfg.eval_seed, VAL_DRAWS))  # the same draws every epoch
        self.model.train()
        if val and not all(math.isfinite(v) for v in val.values()):
            self.check_parameters()  # names the update, when one left non-finite weights
            self.diverged(self.step, "non-finite validation terms")
        self.writer.scalars("val", val, self.step)
        return val

    def save(self) -> None:
        self.check_parameters()
        self.writer.flush()  # the events up to the checkpoint's step are on disk before it, even if killed
        save_checkpoint(self.run_dir / CHECKPOINT, capture(self))
        self.saved_step = self.step

    def write_pictures(self, step: int) -> dict:
        grids = picture_grids(self.model, self.test_x[:self.cfg.num_images // 2], self.prior_z,
                              self.data.image_shape)
        for name, images in grids.items():
            self.writer.images(PICTURE_TAGS[name], images, step)
        return grids
