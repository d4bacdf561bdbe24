"""What checkpoint.pt holds to resume a run exactly, and how it is put back: weights, optimizer, scheduler,
estimator state, the loop's position and every random generator."""
import logging
import random

import numpy as np
import torch
from omegaconf import OmegaConf

from vae_cli.checkpoint import load_checkpoint
from vae_cli.errors import ConfigError, reason

log = logging.getLogger(__name__)
FORMAT = 2  # checkpoint layout version: 2 resumes at any step (1: weights, optimizer, scheduler only)


def _rng_states(loop) -> dict:
    """Every generator a run draws from, as tensors and plain values (loadable with weights_only)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, python_state, python_gauss = random.getstate()
    rng = {"torch": torch.get_rng_state(), "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos,
                                                     has_gauss, gauss],
           "python": [version, list(python_state), python_gauss],
           "batches": loop.block_rng()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    return rng


def capture(loop) -> dict:
    """checkpoint.pt's contents: enough to rebuild the model from the file alone, and to resume."""
    return {
        "format": FORMAT,
        "model": loop.model.state_dict(), "estimator": loop.estimator.state_dict(),
        "optimizer": loop.optimizer.state_dict(), "scheduler": loop.scheduler.state_dict(),
        "config": OmegaConf.to_container(loop.cfg, resolve=True),
        "step": loop.step, "epoch": loop.epoch, "steps_per_epoch": loop.steps_per_epoch,
        "loop": {"index": loop.index, "perm": loop.perm if loop.index else None,
                 "sums": loop.sums.clone(), "count": loop.count, "best": dict(loop.best),
                 "provisional": loop.provisional,
                 "bad_epochs": loop.bad_epochs, "images_per_sec": loop.images_per_sec},
        "training_done": loop.training_done, "stopped_early": loop.stopped_early,
        "rng": _rng_states(loop),
    }


def restore(state: dict, model, estimator, optimizer, scheduler) -> None:
    """Put a checkpoint's weights and optimizer, scheduler and estimator state back."""
    if state.get("format") != FORMAT:
        raise ConfigError(f"this checkpoint was written by an older vae-cli (format {state.get('format', 1)}) "
                          "that cannot resume at a step; start afresh with overwrite=true")
    try:
        model.load_state_dict(state["model"])
        estimator.load_state_dict(state["estimator"])
        optimizer.load_state_dict(state["optimizer"])
    except (RuntimeError, ValueError, KeyError) as err:
        raise ConfigError(f"the checkpoint does not fit the model built from the config ({reason(err)}); the run "
                          "folder holds another model: choose another folder or pass overwrite=true") from err
    scheduler.load_state_dict(state["scheduler"])


def restore_loop(loop, state: dict) -> None:
    """The loop's position, running sums, model selection and every random generator."""
    position = state["loop"]
    loop.step, loop.epoch, loop.index = state["step"], state["epoch"], position["index"]
    loop.perm = position["perm"].to(loop.device) if position["perm"] is not None else None
    loop.sums.copy_(position["sums"])
    loop.count, loop.best, loop.bad_epochs = position["count"], dict(position["best"]), position["bad_epochs"]
    loop.provisional = position.get("provisional")
    # the images/s of a resumed epoch count its images since this process began it (loop.seen stays 0), not
    # those of the stopped process, timed from now: that read 2-9 times the true speed
    loop.images_per_sec = position["images_per_sec"]
    loop.training_done, loop.stopped_early = state["training_done"], state["stopped_early"]
    loop.saved_step = state["step"]
    rng = state["rng"]
    torch.set_rng_state(rng["torch"])
    kind, keys, pos, has_gauss, gauss = rng["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    version, python_state, python_gauss = rng["python"]
    random.setstate((version, tuple(python_state), python_gauss))
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    loop.batch_gen.set_state(rng["batches"])
    loop.block_state = rng["batches"]


def chosen_model(best: dict, step: int) -> str | None:
    """Which model a run's test figures use, in words, where it is the last one (the state at step); None
    where it is best.pt's. best: the loop's provisional model (max_steps inside an epoch) or else its best.
    Training's end (load_best_weights) and vae-eval (evaluation.run.load_run) both choose by it."""
    if best.get("val") == {} and best.get("step") is not None:  # data.val_fraction=0: nothing chose a best model
        return f"last (no validation split: epoch {best['epoch']}, step {step})"
    if best.get("step") is None or best["step"] == step:
        return "last" if best.get("step") is None else f"best (= last: epoch {best['epoch']}, step {step})"
    return None


def best_label(best: dict, step: int) -> str:
    """model_used for best.pt's model, the best epoch's, in a run that ended at step."""
    return f"best (epoch {best['epoch']}, step {best['step']} of {step})"


def load_best_weights(path, model, best: dict, step: int) -> str:
    """Load best.pt's weights into model when the best epoch is not the current state; say which model."""
    last = chosen_model(best, step)
    if last is not None:
        return last
    if not path.is_file():
        log.warning("%s is missing: the test figures are the last model's (step %d)", path, step)
        return "last (best.pt missing)"
    state = load_checkpoint(path, map_location=next(model.parameters()).device)  # one line if unreadable
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as err:
        raise ConfigError(f"{path}: its weights do not fit this run's model (a best.pt of another run?); "
                          "rerun the training, or delete it to test the last model") from err
    return best_label(best, step)
