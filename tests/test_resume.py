"""Runs that survive: stopped at any step (by a real signal) and resumed, a run ends bit for bit as the
uninterrupted one; TensorBoard shows each step once; finished runs are reported, not retrained."""
import json
import os
import signal
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from conftest import compose_config
from vae_cli import loop as loop_module
from vae_cli.errors import ConfigError
from vae_cli.evaluation import run as evaluation_run
from vae_cli.interrupts import Interrupted
from vae_cli.loop import Loop, Stopped
from vae_cli.run_state import read_status
from vae_cli.train import train

# The configurations the issue names; each trains 2 epochs of 14 steps on the synthetic smoke data.
CONFIGS = {
    "bernoulli": (),
    "bernoulli_autograd": ("train_step=autograd",),
    "gaussian": ("likelihood=gaussian",),
    "categorical_learned": ("latent=categorical", "estimator.baseline=learned", "estimator.num_samples=1"),
    "categorical_leave_one_out": ("latent=categorical", "estimator.baseline=leave_one_out"),
}


def smoke(*overrides):
    return compose_config("debug=smoke", "diagnostics.every=5", *overrides)


def stop_at(monkeypatch, step: int, signum=signal.SIGTERM):
    """Send a real signal to this process while the given step (1-based) is under way."""
    next_batch = Loop.next_batch
    sent = []

    def sending(self):
        if self.step + 1 == step and not sent:
            sent.append(step)
            os.kill(os.getpid(), signum)
        return next_batch(self)

    monkeypatch.setattr(Loop, "next_batch", sending)
    return sent


def weights(path: Path) -> dict:
    return torch.load(path, weights_only=True)["model"]


def assert_same_run(reference: Path, resumed: Path) -> None:
    assert (resumed / "metrics.json").read_bytes() == (reference / "metrics.json").read_bytes()
    for name in ("checkpoint.pt", "best.pt"):
        ref, new = weights(reference / name), weights(resumed / name)
        assert ref.keys() == new.keys() and all(torch.equal(ref[k], new[k]) for k in ref), name
    ref_state = torch.load(reference / "checkpoint.pt", weights_only=True)
    new_state = torch.load(resumed / "checkpoint.pt", weights_only=True)
    for key in ("estimator", "scheduler"):  # baselines' moving averages, the learned baseline's net
        assert str(ref_state[key]) == str(new_state[key]), key
    assert read_status(resumed)["state"] == "finished"
    # TensorBoard: every step once, in order, with the uninterrupted run's values (the running sums of a
    # logging window cut by the stop included); timings aside
    ref_events, new_events = scalars(reference), scalars(resumed)
    assert ref_events.keys() == new_events.keys()
    for tag, points in ref_events.items():
        steps = [step for step, _ in new_events[tag]]
        assert steps == sorted(set(steps)), (tag, steps)
        if not tag.endswith("images_per_sec"):
            assert new_events[tag] == points, tag


def scalars(run_dir: Path) -> dict:
    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


@pytest.fixture(scope="module", autouse=True)
def small_blocks():
    """Blocks of 3 batches (not 16): a stop at step 7 falls inside a block, whose draws must be redone."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(loop_module, "PREPARE_AHEAD", 3)
        yield


@pytest.fixture(scope="module")
def references(tmp_path_factory, small_blocks):
    """Each configuration's uninterrupted run, trained once for the module."""
    done = {}

    def reference(name, *extra):
        key = (name, extra)
        if key not in done:
            run_dir = tmp_path_factory.mktemp(name)
            train(smoke(*CONFIGS[name], *extra), run_dir)
            done[key] = run_dir
        return done[key]

    return reference


@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.parametrize("stop_step", [7, 14])  # inside a block of batches and a logging window; an epoch end
def test_stopped_and_resumed_run_is_bit_identical(name, stop_step, references, tmp_path, monkeypatch):
    reference = references(name, "~eval")
    stop_at(monkeypatch, stop_step)  # arrives during that step: the run stops after it
    with pytest.raises(Stopped, match=f"step {stop_step} of 28.*resume with: vae-train resume="):
        train(smoke(*CONFIGS[name], "~eval"), tmp_path)
    status = read_status(tmp_path)
    assert status["state"] == "interrupted" and status["step"] == stop_step
    assert not (tmp_path / "metrics.json").exists()
    monkeypatch.undo()  # no more signals
    train(smoke(*CONFIGS[name], "~eval"), tmp_path)
    assert_same_run(reference, tmp_path)
    assert read_status(tmp_path)["attempts"] == 2
