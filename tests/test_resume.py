"""Runs that survive: stopped at any step (by a real signal) and resumed, a run ends bit for bit as the
uninterrupted one; TensorBoard shows each step once; finished runs are reported, not retrained."""
import errno
import json
import math
import os
import signal
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2

from conftest import compose_config
from vae_cli import loop as loop_module
from vae_cli.checkpoint import atomic_write
from vae_cli.errors import ConfigError, WriteError
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


def test_stopped_during_the_evaluation_and_resumed_is_bit_identical(references, tmp_path, monkeypatch, caplog):
    """A stop while L_K is being computed: training is done and checkpointed, so the resumed run only
    evaluates again, with the same draws (eval_seed), and ends with the same metrics.json."""
    reference = references("bernoulli")
    real = evaluation_run.log_px_estimates

    def interrupted(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGINT)
        return real(*args, **kwargs)

    monkeypatch.setattr(evaluation_run, "log_px_estimates", interrupted)
    with pytest.raises(Interrupted):
        train(smoke(*CONFIGS["bernoulli"]), tmp_path)
    assert read_status(tmp_path)["state"] == "interrupted" and not (tmp_path / "metrics.json").exists()
    monkeypatch.undo()
    train(smoke(*CONFIGS["bernoulli"]), tmp_path)
    assert_same_run(reference, tmp_path)
    assert "asks for" not in caplog.text  # all its steps were taken, none too many: no warning


def test_a_finished_run_is_reported_not_retrained_and_epochs_extend_it(references, tmp_path):
    finished = references("bernoulli", "~eval")
    run_dir = tmp_path / "run"
    import shutil

    shutil.copytree(finished, run_dir)
    before = {p.name: p.stat().st_mtime_ns for p in run_dir.iterdir()}
    metrics = train(smoke("~eval"), run_dir)
    assert metrics == json.loads((finished / "metrics.json").read_text())
    assert {p.name: p.stat().st_mtime_ns for p in run_dir.iterdir()} == before  # nothing rewritten
    extended = train(smoke("~eval", "epochs=3"), run_dir)
    assert extended["step"] == 42 and extended["epoch"] == 3
    assert read_status(run_dir)["state"] == "finished"
    # the same as a 3-epoch run from the start
    straight = train(smoke("~eval", "epochs=3"), tmp_path / "straight")
    assert extended == straight
    # TensorBoard's HParams view shows the extended run's settings (it showed the first attempt's epochs=2)
    assert hparams_settings(run_dir)["epochs"].number_value == 3
    assert len(list(run_dir.glob("events.out.tfevents.*.hparams"))) == 1


def hparams_settings(run_dir: Path) -> dict:
    """The settings TensorBoard's HParams view reads for the run folder (the first it finds under the tag)."""
    acc = EventAccumulator(str(run_dir), size_guidance={"tensors": 0})
    acc.Reload()
    content = acc.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    return dict(plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info.hparams)


def test_a_run_ended_by_max_steps_inside_an_epoch_extends_as_the_uninterrupted_run(references, tmp_path):
    """max_steps=19 stops 5 steps into epoch 2 (14 steps each), inside a block of 3 prepared batches: that
    epoch stays unfinished, so extending the run takes the uninterrupted run's steps 20-28 (it counted
    epoch 2 done and began a third on a new permutation), with the scheduler and early stopping stepped
    once per whole epoch; and the block was not cut at step 19 (its binarization would have differed)."""
    short = train(smoke("~eval", "max_steps=19"), tmp_path)
    assert (short["step"], short["epoch"]) == (19, 1)  # one whole epoch; step 19 is in the second
    assert short["best/epoch"] in (1, 2) and short["best/step"] in (14, 19)
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert state["scheduler"]["last_epoch"] == 1 and state["loop"]["index"] == 5
    extended = train(smoke("~eval"), tmp_path)  # max_steps back to null: the 2 epochs of the config
    straight = references("bernoulli", "~eval")
    assert (extended["step"], extended["epoch"]) == (28, 2)
    # the same weights, best model and figures: the validation at step 19 chose no model for the extension
    for name in ("checkpoint.pt", "best.pt"):
        reference, resumed = weights(straight / name), weights(tmp_path / name)
        assert all(torch.equal(reference[k], resumed[k]) for k in reference), name
    assert (tmp_path / "metrics.json").read_bytes() == (straight / "metrics.json").read_bytes()


def test_a_resume_asking_for_fewer_steps_than_taken_says_so(tmp_path, monkeypatch, caplog):
    stop_at(monkeypatch, 20)  # in epoch 2 of the smoke run's 2 (14 steps each)
    with pytest.raises(Stopped):
        train(smoke("~eval"), tmp_path)
    monkeypatch.undo()
    train(smoke("~eval", "epochs=1"), tmp_path)  # 14 steps asked, 20 taken
    assert "epochs=1 asks for 14 steps, and the run has taken 20 already: it ends without" in caplog.text
    assert read_status(tmp_path)["step"] == 20


def test_another_runs_folder_is_refused_unless_overwrite(references, tmp_path, caplog):
    import shutil

    shutil.copytree(references("bernoulli", "~eval"), tmp_path / "run")
    with pytest.raises(ConfigError, match=r"another run's files.*beta: 1.0 -> 2\).*overwrite=true"):
        train(smoke("~eval", "beta=2"), tmp_path / "run")
    with caplog.at_level("WARNING", logger="vae_cli.train"):
        metrics = train(smoke("~eval", "beta=2", "overwrite=true"), tmp_path / "run")
    # said, where it was silent: a sweep re-run with overwrite=true replaced its finished jobs unannounced
    assert f"overwrite=true: the finished run in {tmp_path / 'run'} is deleted" in caplog.text
    assert metrics["test/loss"] != pytest.approx(-metrics["test/elbo"])  # beta = 2 trained and reported
    events = sorted(f.suffix == ".hparams" for f in (tmp_path / "run").glob("events.out.tfevents.*"))
    assert events == [False, True]  # the old events are gone: this run's, and its HParams settings


def script_validation(monkeypatch):
    """Validation ELBOs taken from the returned object's .values, an iterator set by the test, one a validation."""
    scripted = type("Script", (), {"values": iter([])})()
    real = loop_module.average_terms

    def validation(model, estimator, x, batch_size, beta, seed):
        figures = real(model, estimator, x, batch_size, beta, seed)
        if x.shape[0] == 51:  # the validation split of the smoke data
            figures["elbo"] = next(scripted.values)
        return figures

    monkeypatch.setattr(loop_module, "average_terms", validation)
    return scripted


def test_a_run_stopped_early_goes_on_when_resumed_with_a_larger_patience(tmp_path, monkeypatch, caplog):
    """patience=1 ends the run after epoch 3 (epoch 2 was the best); resumed with patience=3 it trains
    epochs 4 and 5 as a run with patience=3 from the start does (it was reported finished, untrained)."""
    scripted = script_validation(monkeypatch)
    scripted.values = iter([-50.0, -40.0, -45.0])
    stopped = train(smoke("~eval", "epochs=5", "early_stopping.patience=1"), tmp_path / "run")
    assert (stopped["epoch"], stopped["best/epoch"]) == (3, 2)
    # more epochs under the same patience: finished, and the line says what continues it (a user review: it
    # said only 'finished'); none where the command asks for no more steps
    hint = "early stopping ended it (early_stopping.patience=1): a larger patience, or early_stopping.patience=null"
    # max_steps=100 with epochs=3 asks no more steps than taken (a review: the hint was given)
    for more, said in (("epochs=6", True), ("epochs=3", False), ("epochs=3 max_steps=100", False)):
        caplog.clear()
        with caplog.at_level("INFO"):
            assert train(smoke("~eval", *more.split(), "early_stopping.patience=1"), tmp_path / "run") == stopped
        (line,) = [r.getMessage() for r in caplog.records if "is finished (metrics.json)" in r.getMessage()]
        assert (hint in line) == said, line
    scripted.values = iter([-46.0, -30.0])
    resumed = train(smoke("~eval", "epochs=5", "early_stopping.patience=3"), tmp_path / "run")
    scripted.values = iter([-50.0, -40.0, -45.0, -46.0, -30.0])
    straight = train(smoke("~eval", "epochs=5", "early_stopping.patience=3"), tmp_path / "straight")
    assert (resumed["epoch"], resumed["best/epoch"]) == (5, 5) and resumed == straight
    assert train(smoke("~eval", "epochs=5", "early_stopping.patience=3"), tmp_path / "run") == resumed  # done


def test_a_better_model_at_a_max_steps_stop_is_the_runs_best_but_chooses_nothing_for_its_extension(tmp_path,
                                                                                                     monkeypatch):
    """Validation ELBOs scripted: epoch 1 -50, the max_steps=19 stop in epoch 2 -10, then epochs 2 and 3
    -45 and -40. The short run's figures are its last model's (-10 beats -50); extended, it must stop and
    select as the uninterrupted run does: the -10 model had made epoch 2 'worse', and patience 1 ended the
    run there, with step 19's model as the best."""
    scripted = script_validation(monkeypatch)
    settings = ("~eval", "epochs=3", "early_stopping.patience=1")
    scripted.values = iter([-50.0, -10.0])
    short = train(smoke(*settings, "max_steps=19"), tmp_path / "run")
    assert (short["best/step"], short["val/elbo"], short["model_used"]) == (19, -10.0, "best (= last: epoch 2, step 19)")
    scripted.values = iter([-45.0, -40.0])
    extended = train(smoke(*settings), tmp_path / "run")
    scripted.values = iter([-50.0, -45.0, -40.0])
    straight = train(smoke(*settings), tmp_path / "straight")
    assert (extended["step"], extended["best/epoch"], extended["val/elbo"]) == (42, 3, -40.0)
    assert extended == straight


def test_best_validation_model_is_evaluated_and_early_stopping(tmp_path, monkeypatch):
    """Validation ELBOs scripted per epoch: best.pt holds the best epoch's weights, the test figures come
    from it, and patience 2 stops two epochs after it."""
    real = loop_module.average_terms  # for the test figures below
    script_validation(monkeypatch).values = iter([-50.0, -40.0, -45.0, -46.0, -30.0])
    kept = {}
    save = loop_module.save_checkpoint
    monkeypatch.setattr(loop_module, "save_checkpoint", lambda path, state: (
        kept.__setitem__((path.name, state["epoch"]), {k: v.clone() for k, v in state["model"].items()}),
        save(path, state))[1])
    metrics = train(smoke("~eval", "epochs=5", "early_stopping.patience=2"), tmp_path)
    assert (metrics["epoch"], metrics["best/epoch"], metrics["val/elbo"]) == (4, 2, -40.0)
    best = torch.load(tmp_path / "best.pt", weights_only=True)
    assert best["epoch"] == 2 and all(torch.equal(best["model"][k], kept[("best.pt", 2)][k]) for k in best["model"])
    from omegaconf import OmegaConf

    assert OmegaConf.load(tmp_path / "config.yaml").model_used.startswith("best (epoch 2")
    assert metrics["model_used"] == "best (epoch 2, step 28 of 56)"
    # the test figures are the best model's: recompute them from best.pt's weights
    from vae_cli.build import build_data, build_estimator, build_model
    from vae_cli.eval_data import TEST_DRAWS, prepare_eval_sets

    cfg = smoke("~eval")
    data = build_data(cfg)
    model = build_model(cfg, data.data_dim)
    model.load_state_dict(best["model"])
    estimator = build_estimator(cfg, model, data)
    test_x = prepare_eval_sets(model.likelihood, data, torch.device("cpu"), 0)[1]
    model.eval()
    test = real(model, estimator, test_x, 256, 1.0, seed=TEST_DRAWS)
    assert test["elbo"] == metrics["test/elbo"]


def test_a_full_disk_fails_the_run_in_one_line_and_the_same_command_resumes_it(tmp_path, monkeypatch):
    """The second epoch's checkpoint cannot be written (ENOSPC): the run fails with a WriteError naming the
    file (a traceback before, from torch's writer), the first epoch's checkpoint kept. The same command then
    resumed from it; before, a failed run started afresh, deleting that checkpoint."""
    reference = tmp_path / "reference"
    train(smoke("~eval"), reference)
    real_save = loop_module.save_checkpoint

    def no_space(f):
        raise OSError(errno.ENOSPC, "No space left on device")  # as a write or its fsync meets it

    def full_disk(path, state):  # full from the second epoch (steps 15-28) on
        return real_save(path, state) if state["step"] <= 14 else atomic_write(path, no_space)

    monkeypatch.setattr(loop_module, "save_checkpoint", full_disk)
    run_dir = tmp_path / "run"
    with pytest.raises(WriteError, match=r"could not write .*best.pt \(\[Errno 28\] No space left on device\); "
                                         r"the earlier one is kept\. Is the disk full\?"):
        train(smoke("~eval"), run_dir)
    assert read_status(run_dir)["state"] == "failed"
    assert torch.load(run_dir / "checkpoint.pt", weights_only=True)["step"] == 14
    assert sorted(p.name for p in run_dir.iterdir() if p.name.endswith(".tmp")) == []
    monkeypatch.undo()
    train(smoke("~eval"), run_dir)  # space freed: the same command
    assert_same_run(reference, run_dir)


def test_a_damaged_metrics_json_is_computed_again_and_stale_temporary_files_go(tmp_path, caplog):
    """A finished run's metrics.json cut short: the next command ended in a JSONDecodeError traceback; it
    now resumes the finished run, whose figures are computed again, the same. A temporary file of a write
    killed part way (SIGKILL skips its clean-up) was left for good; the next command removes it."""
    run_dir = tmp_path / "run"
    metrics = train(smoke("~eval"), run_dir)
    written = (run_dir / "metrics.json").read_bytes()
    (run_dir / "metrics.json").write_bytes(written[:20])
    stale = run_dir / ".checkpoint.pt.k1ll3d.tmp"
    stale.write_bytes(b"half a checkpoint")
    with caplog.at_level("WARNING"):
        again = train(smoke("~eval"), run_dir)
    assert "metrics.json is unreadable" in caplog.text
    assert again == metrics and (run_dir / "metrics.json").read_bytes() == written
    assert not stale.exists()


def test_non_finite_values_stop_the_run_and_keep_the_last_good_checkpoint(tmp_path, monkeypatch):
    real = loop_module.Loop.next_batch

    def poisoned(self):  # NaN pixels from step 20 on (the second epoch): the terms go non-finite
        x = real(self)
        return x * math.nan if self.step >= 19 else x

    monkeypatch.setattr(loop_module.Loop, "next_batch", poisoned)
    with pytest.raises(loop_module.Diverged, match=r"step 20 .*non-finite recon.*checkpoint.pt \(step 14\).*lower optimizer.lr"):
        train(smoke("~eval"), tmp_path)
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert state["step"] == 14 and all(torch.isfinite(v).all() for v in state["model"].values())
    status = read_status(tmp_path)
    assert status["state"] == "failed" and "diverged" in status["error"]


def test_a_run_that_diverged_before_its_first_checkpoint_is_not_offered_for_resuming(tmp_path, monkeypatch):
    """Another command in the folder of a run that diverged at step 1 is refused (its events and status stay)
    with the ways on: not `vae-train resume=`, which fails there ('no checkpoint.pt there', a review)."""
    real = loop_module.Loop.next_batch
    monkeypatch.setattr(loop_module.Loop, "next_batch", lambda self: real(self) * math.nan)
    with pytest.raises(loop_module.Diverged, match="at step 1 .*no checkpoint was written before it"):
        train(smoke("~eval"), tmp_path)
    monkeypatch.undo()
    with pytest.raises(ConfigError) as refused:
        train(smoke("~eval", "optimizer.lr=1e-4"), tmp_path)
    message = str(refused.value)
    assert "other settings (optimizer.lr: 0.001 -> 0.0001)" in message and "overwrite=true" in message
    assert "resume" not in message, message
    assert read_status(tmp_path)["state"] == "failed" and not (tmp_path / "checkpoint.pt").exists()


def test_an_update_that_leaves_non_finite_weights_is_named_and_not_checkpointed(tmp_path, monkeypatch):
    """A non-finite gradient with a finite loss (no clipping: its norm is not measured) leaves non-finite
    weights that the step's own terms do not show: the epoch's end names the update, not terms the run
    never computed (it said 'non-finite recon, kl, ...', or 'validation terms are not finite')."""
    real = loop_module.Loop.end_epoch

    def poisoned(self):  # as if the second epoch's last update had had a NaN gradient
        if self.epoch == 1:
            with torch.no_grad():
                next(self.model.parameters()).fill_(math.nan)
        real(self)

    monkeypatch.setattr(loop_module.Loop, "end_epoch", poisoned)
    with pytest.raises(loop_module.Diverged, match=r"^training diverged at step 28 \(in epoch 2\): an update left "
                                                   r"non-finite weights .*checkpoint.pt \(step 14\)"):
        train(smoke("~eval"), tmp_path)
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert state["step"] == 14 and all(torch.isfinite(v).all() for v in state["model"].values())


def test_a_divergence_with_clipping_on_advises_lower_clipping(tmp_path, monkeypatch):
    """It advised 'set optimizer.clip_grad_norm, e.g. 10' to a run that had it set (a review)."""
    real = loop_module.Loop.next_batch
    monkeypatch.setattr(loop_module.Loop, "next_batch", lambda self: real(self) * math.nan)
    with pytest.raises(loop_module.Diverged, match=r"lower optimizer.lr \(now 0.001\) or a lower "
                                                   r"optimizer.clip_grad_norm \(now 5.0\)$"):
        train(smoke("~eval", "optimizer.clip_grad_norm=5.0"), tmp_path)


def test_gradient_clipping_is_applied_and_logged(tmp_path):
    metrics = train(smoke("~eval", "optimizer.clip_grad_norm=0.5", "train_step=autograd"), tmp_path)
    acc = EventAccumulator(str(tmp_path), size_guidance={"scalars": 0})
    acc.Reload()
    norms = [e.value for e in acc.Scalars("train/grad_norm")]
    assert norms and all(math.isfinite(n) for n in norms) and max(norms) > 0.5  # clipped from above 0.5
    assert math.isfinite(metrics["test/elbo"])
