"""vae-eval on smoke runs' folders, in process and as the installed script; vae-train's light evaluation."""
import errno
import json
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from conftest import compose_config, run_cli
from vae_cli.errors import ConfigError
from vae_cli import eval_data, loop as loop_module
from vae_cli.eval_cli import main
from vae_cli.run_state import read_status
from vae_cli.train import train

TEST_TAGS = {"test/L_K", "test/elbo_L1", "test/posterior_gap", "test/active_units"}
STDERR_TAGS = {"test/L_K_stderr", "test/elbo_L1_stderr"}
LATENT_PROBE_TAGS = {f"probe/latent_{n}" for n in ("n10", "n100", "all")}
PROBE_TAGS = LATENT_PROBE_TAGS | {tag.replace("latent", "pixels") for tag in LATENT_PROBE_TAGS}
IMAGE_TAGS = {"latents/traversal", "latents/interpolations", "test/reconstructions", "samples/prior"}


def events(run_dir: Path) -> EventAccumulator:
    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    acc.Reload()
    return acc


def vae_eval_exe() -> str:
    exe = shutil.which("vae-eval")
    assert exe, "vae-eval is not on PATH: install the package first (pip install -e .)"
    return exe


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    """A smoke run (with Burda's schedule, to check it too): its folder, metrics and subfolders."""
    run_dir = tmp_path_factory.mktemp("smoke_run")
    metrics = train(compose_config("debug=smoke", "scheduler=burda", "epochs=2"), run_dir)
    return run_dir, metrics, [p.name for p in run_dir.iterdir() if p.is_dir()]  # before any vae-eval


def test_vae_train_ends_with_the_light_evaluation(smoke_run):
    run_dir, metrics, subfolders = smoke_run
    assert TEST_TAGS | STDERR_TAGS | LATENT_PROBE_TAGS <= set(metrics)
    assert not (PROBE_TAGS - LATENT_PROBE_TAGS) & set(metrics)
    assert "test/bits_per_dim" not in metrics  # Bernoulli on binarized pixels: nats only
    assert metrics["test/L_K"] >= metrics["test/elbo_L1"]  # L_K >= L_1 on the same draws
    assert metrics["test/posterior_gap"] == pytest.approx(metrics["test/L_K"] - metrics["test/elbo_L1"],
                                                          abs=1e-5)
    assert 0 < metrics["test/L_K_stderr"] < 1  # std over 128 test images / sqrt(128)
    acc = events(run_dir)
    assert TEST_TAGS | LATENT_PROBE_TAGS <= set(acc.Tags()["scalars"])
    assert acc.Scalars("test/L_K")[0].value == pytest.approx(metrics["test/L_K"], rel=1e-6)
    assert [e.value for e in acc.Scalars("train/lr")] == pytest.approx([1e-3, 1e-3 * 10 ** (-1 / 7)])
    assert subfolders == []  # no projector subfolder: eval=light leaves it to vae-eval


def test_vae_eval_light_reproduces_the_figures_of_training(smoke_run):
    run_dir, metrics, _ = smoke_run
    main([str(run_dir), "eval=light"])  # same test set, model, K and seed: the same numbers
    report = json.loads((run_dir / "eval.json").read_text())
    assert report["figures"] == pytest.approx({k: metrics[k] for k in report["figures"]}, rel=1e-6)
    assert report["model_used"].startswith("best")


def scripted_validation(monkeypatch, values):
    """Validation ELBOs, one per validation (the smoke data's split: 51 images), in place of the real ones."""
    real, values = eval_data.average_terms, iter(values)

    def validation(model, estimator, x, batch_size, beta, seed=None):
        figures = real(model, estimator, x, batch_size, beta, seed)
        if x.shape[0] == 51:
            figures["elbo"] = next(values)
        return figures

    monkeypatch.setattr(loop_module, "average_terms", validation)


def test_vae_eval_evaluates_the_model_the_runs_own_figures_used(tmp_path, monkeypatch):
    """max_steps inside epoch 2 at a better model: the run's figures used that last model, and vae-eval's
    default took best.pt (epoch 1) instead (a user review: test ELBO -215.4 in metrics.json, -222.7 from
    vae-eval). Its TensorBoard figures go at the step of the model evaluated: the best and the last model
    at one K had the same tags at the same step."""
    scripted_validation(monkeypatch, [-50.0, -40.0])
    metrics = train(compose_config("debug=smoke", "max_steps=20"), tmp_path / "stopped")  # 14 steps an epoch
    assert metrics["model_used"] == "best (= last: epoch 2, step 20)", metrics["model_used"]
    main([str(tmp_path / "stopped"), "eval=light"])
    report = json.loads((tmp_path / "stopped" / "eval.json").read_text())
    assert report["model_used"] == metrics["model_used"] and report["step"] == 20
    assert report["figures"] == pytest.approx({k: metrics[k] for k in report["figures"]}, rel=1e-6)
    scripted_validation(monkeypatch, [-50.0, -60.0])  # epoch 1 is the best
    metrics = train(compose_config("debug=smoke", "epochs=2", "~eval"), tmp_path / "run")
    assert metrics["model_used"] == "best (epoch 1, step 14 of 28)", metrics["model_used"]
    steps = {}
    for which in ("best", "last"):
        main([str(tmp_path / "run"), "eval=light", "eval.probe_sizes=[10]", f"checkpoint={which}"])
        steps[which] = json.loads((tmp_path / "run" / "eval.json").read_text())["step"]
    assert steps == {"best": 14, "last": 28}
    assert [e.step for e in events(tmp_path / "run").Scalars("vae-eval/K100/test/L_K")] == [14, 28]
    # named as training named them (a review: 'best (epoch 1, step 14)' beside metrics.json's '... of 28')
    main([str(tmp_path / "run"), "eval=light", "eval.probe_sizes=[10]"])
    assert json.loads((tmp_path / "run" / "eval.json").read_text())["model_used"] == metrics["model_used"]
    # the stopped run's best.pt, named: its own model (epoch 1), not the last one its figures used (a review)
    main([str(tmp_path / "stopped" / "best.pt"), "eval=light", "eval.probe_sizes=[10]"])
    report = json.loads((tmp_path / "stopped" / "eval.json").read_text())
    assert (report["model_used"], report["step"]) == ("best.pt (epoch 1, step 14)", 14)
    (tmp_path / "run" / "best.pt").unlink()  # the last model, as training's end does without it
    main([str(tmp_path / "run"), "eval=light", "eval.probe_sizes=[10]"])
    report = json.loads((tmp_path / "run" / "eval.json").read_text())
    assert (report["model_used"], report["step"]) == ("last (best.pt missing)", 28)


def test_vae_eval_of_a_folder_without_checkpoint_pt_evaluates_best_pt(tmp_path, monkeypatch, capsys):
    """checkpoint.pt (the optimizer's state beside the weights) deleted to save space: vae-eval said "no
    checkpoint at RUN/checkpoint.pt" though best.pt, the model a user evaluates, was there."""
    scripted_validation(monkeypatch, [-50.0, -60.0])  # epoch 1 is the best: best.pt is not the last model
    train(compose_config("debug=smoke", "epochs=2", "~eval"), tmp_path / "run")
    main([str(tmp_path / "run"), "eval=light", "eval.probe_sizes=[10]"])
    whole = json.loads((tmp_path / "run" / "eval.json").read_text())
    assert whole["step"] == 14
    (tmp_path / "run" / "checkpoint.pt").unlink()
    for argv in ([str(tmp_path / "run")], [str(tmp_path / "run" / "best.pt")]):
        main([*argv, "eval=light", "eval.probe_sizes=[10]"])
        report = json.loads((tmp_path / "run" / "eval.json").read_text())
        assert (report["model_used"], report["step"]) == ("best.pt (epoch 1, step 14)", 14)
        assert report["figures"] == whole["figures"]
    with pytest.raises(SystemExit) as exit_info:
        main([str(tmp_path / "run"), "checkpoint=last"])
    assert exit_info.value.code == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "has no checkpoint.pt" in lines[0] and "leave checkpoint=last out" in lines[0], lines


def test_vae_eval_of_an_unfinished_run_says_so(smoke_run, tmp_path, caplog):
    """A run stopped by Ctrl-C was evaluated without a word, though vae-eval --help speaks of a finished run
    (a user review)."""
    run_dir = shutil.copytree(smoke_run[0], tmp_path / "run")
    main([str(run_dir), "eval=light", "eval.probe_sizes=[10]"])
    assert json.loads((run_dir / "eval.json").read_text())["run_state"] == "finished"
    assert "a model of the run so far" not in caplog.text
    status = json.loads((run_dir / "status.json").read_text())
    (run_dir / "status.json").write_text(json.dumps(status | {"state": "interrupted", "step": 20,
                                                              "resume_command": f"vae-train resume={run_dir}"}))
    main([str(run_dir), "eval=light", "eval.probe_sizes=[10]"])
    assert json.loads((run_dir / "eval.json").read_text())["run_state"] == "interrupted"
    assert (f"the run in {run_dir} is interrupted, at step 20 of {status['total_steps']}: evaluating best "
            f"(= last: epoch 2, step 28), a model of the run so far; `vae-train resume={run_dir}` finishes it"
            in caplog.text)
    caplog.clear()  # a diverged run (train() records no resume command) cannot be finished by resuming it
    (run_dir / "status.json").write_text(json.dumps(status | {"state": "failed", "resume_command": None}))
    main([str(run_dir), "eval=light", "eval.probe_sizes=[10]"])
    assert "(= last: epoch 2, step 28), a model of the run so far\n" in caplog.text + "\n"
    assert "finishes it" not in caplog.text


def test_vae_eval_without_best_pt_evaluates_and_names_the_last_model(smoke_run, tmp_path):
    """The smoke run's best epoch is its last: best.pt is not needed, and the model is named as training did."""
    run_dir = shutil.copytree(smoke_run[0], tmp_path / "run")
    main([str(run_dir), "eval=light", "checkpoint=last"])
    last = json.loads((run_dir / "eval.json").read_text())
    (run_dir / "best.pt").unlink()
    main([str(run_dir), "eval=light"])
    report = json.loads((run_dir / "eval.json").read_text())
    assert report["model_used"] == smoke_run[1]["model_used"] == "best (= last: epoch 2, step 28)"
    assert report["figures"] == last["figures"]


def test_vae_eval_of_a_checkpoint_file_evaluates_the_model_it_holds(smoke_run, tmp_path, capsys):
    """RUN/checkpoint.pt evaluated best.pt (the folder's default), though the error text itself offers a
    checkpoint.pt's path; another file of the folder was taken for the folder."""
    run_dir = shutil.copytree(smoke_run[0], tmp_path / "run")
    main([str(run_dir / "checkpoint.pt"), "eval=light"])
    assert json.loads((run_dir / "eval.json").read_text())["model_used"].startswith("last (epoch 2")
    (run_dir / "best.pt").write_bytes((run_dir / "best.pt").read_bytes()[:1000])  # truncated
    for argv, message in (([str(run_dir / "config.yaml")], "config.yaml is a file, not a run folder"),
                          ([str(run_dir / "best.pt"), "checkpoint=last"], "best model, and checkpoint=last asks"),
                          ([str(run_dir / "best.pt")], "or evaluate the run's last model instead: checkpoint=last")):
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        assert exit_info.value.code == 2
        lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
        assert len(lines) == 1 and message in lines[0], (argv, lines)
        assert len(lines[0]) < 400  # torch's 500 characters of advice about zip archives left out


def test_vae_eval_with_one_draw_writes_strict_json_and_names_its_k(smoke_run, tmp_path, caplog):
    """K = 1 has no Monte Carlo spread to measure: eval.json held bare NaN, which strict JSON readers refuse;
    the notes in TensorBoard said "K = eval.num_samples" without the number; the log line said '± nan'."""
    run_dir = shutil.copytree(smoke_run[0], tmp_path / "run")
    with caplog.at_level("INFO"):
        main([str(run_dir), "eval=light", "eval.num_samples=1"])
    (line,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("test L_1 ")]
    assert re.match(r"test L_1 -?\d+\.\d\d nats \(a lower bound", line), line

    def refuse(constant):
        raise ValueError(f"not JSON: {constant}")

    report = json.loads((run_dir / "eval.json").read_text(), parse_constant=refuse)
    assert report["figures"]["test/L_K_stderr"] is None and report["figures"]["test/elbo_L1_stderr"] is None
    assert "here K = 1 draws per test image" in report["notes"]


def test_vae_eval_reads_a_relative_data_root_from_where_training_started(tmp_path):
    """A run trained with data.root=tiny (relative) and evaluated from another folder: the path was taken
    from vae-eval's folder, and the run could not be evaluated there."""
    from test_data import write_folder

    write_folder(tmp_path / "here" / "tiny", gz=False)
    trained = run_cli("data=mnist", "data.root=tiny", "data.download=false", "epochs=1", "batch_size=10",
                      "model.hidden_sizes=[16]", "~eval", "hydra.run.dir=run", cwd=tmp_path / "here")
    assert trained.returncode == 0, trained.stderr
    (tmp_path / "elsewhere").mkdir()
    result = run_cli(str(tmp_path / "here" / "run"), "eval=light", "eval.num_samples=2", "eval.probe_sizes=[1]",
                     cwd=tmp_path / "elsewhere", exe=vae_eval_exe())
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "here" / "run" / "eval.json").read_text())
    assert report["data_source"].startswith(str(tmp_path / "here" / "tiny")), report["data_source"]


def test_a_resume_from_another_folder_reads_a_relative_data_root_from_where_training_started(tmp_path):
    """resume=RUN from elsewhere said data.root='tiny' does not exist, refused the absolute path as another
    setting, and trained on that folder's own tiny/ if it had one; the same command again from another
    folder, whose tiny/ is other data, is refused as another run's."""
    from test_data import write_folder

    write_folder(tmp_path / "here" / "tiny", gz=False)
    common = ("data=mnist", "data.root=tiny", "data.download=false", "batch_size=10", "model.hidden_sizes=[16]",
              "~eval")
    trained = run_cli(*common, "max_steps=5", "hydra.run.dir=run", cwd=tmp_path / "here")
    assert trained.returncode == 0, trained.stderr
    (tmp_path / "elsewhere").mkdir()
    resumed = run_cli(f"resume={tmp_path / 'here' / 'run'}", "max_steps=9", cwd=tmp_path / "elsewhere")
    assert resumed.returncode == 0, resumed.stderr
    assert read_status(tmp_path / "here" / "run")["step"] == 9
    write_folder(tmp_path / "elsewhere" / "tiny", gz=True)
    again = run_cli(*common, "max_steps=9", f"hydra.run.dir={tmp_path / 'here' / 'run'}", cwd=tmp_path / "elsewhere")
    assert again.returncode == 2 and "data.root" in again.stderr and "another run's files" in again.stderr
    # the project moved (its launch folder gone): its relative paths moved with it
    (tmp_path / "here").rename(tmp_path / "moved")
    for command in (("resume=run", "max_steps=12"), (*common, "max_steps=14", "hydra.run.dir=run")):
        moved = run_cli(*command, cwd=tmp_path / "moved")
        assert moved.returncode == 0, moved.stderr
    assert read_status(tmp_path / "moved" / "run")["step"] == 14


def test_a_run_whose_data_root_moved_is_evaluated_and_resumed_with_the_new_one(tmp_path):
    """The data.root folder moved (a run folder copied to another machine): the error said to point data.root
    at the data, and vae-eval had no such key while resume refused it as another setting (a user review)."""
    from test_data import write_folder

    write_folder(tmp_path / "tiny", gz=False)
    common = ("data=mnist", "data.download=false", "batch_size=10", "model.hidden_sizes=[16]", "~eval")
    trained = run_cli(*common, f"data.root={tmp_path / 'tiny'}", "max_steps=5", "hydra.run.dir=run", cwd=tmp_path)
    assert trained.returncode == 0, trained.stderr
    (tmp_path / "tiny").rename(tmp_path / "moved")
    refused = run_cli("run", "eval=light", cwd=tmp_path, exe=vae_eval_exe())
    assert refused.returncode == 2 and "data.root=" in refused.stderr and "does not exist" in refused.stderr
    evaluated = run_cli("run", "eval=light", "eval.num_samples=2", "eval.probe_sizes=[1]", "data.root=moved",
                        cwd=tmp_path, exe=vae_eval_exe())
    assert evaluated.returncode == 0, evaluated.stderr
    assert json.loads((tmp_path / "run" / "eval.json").read_text())["data_source"].startswith(str(tmp_path / "moved"))
    resumed = run_cli("resume=run", "data.root=moved", "max_steps=9", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert f"data.root={tmp_path / 'moved'} in place of the run's {tmp_path / 'tiny'}" in resumed.stderr + resumed.stdout
    assert read_status(tmp_path / "run")["step"] == 9
    # without resume=, into the run's folder: a changed path is another run's, as before
    write_folder(tmp_path / "other", gz=True)
    again = run_cli(*common, "data.root=other", "max_steps=12", "hydra.run.dir=run", cwd=tmp_path)
    assert again.returncode == 2 and "another run's files" in again.stderr and "data.root" in again.stderr


def docs_example(heading: str, language: str) -> str:
    """The first ```language block after a heading's line in docs/extending.md."""
    text = (Path(__file__).parents[1] / "docs" / "extending.md").read_text()
    return text[text.index(heading):].split(f"```{language}\n", 1)[1].split("```", 1)[0]


def test_a_run_whose_data_file_moved_is_evaluated_and_resumed_with_the_new_one(tmp_path, monkeypatch):
    """docs/extending.md's .npz data set, as the user would copy it (outside the package, --config-dir): its
    file moved, vae-eval had no data.path (it said `Key 'path' is not in struct`) though resume took it."""
    import numpy as np

    (tmp_path / "my_data.py").write_text(docs_example("## A data set", "python"))
    config = docs_example("`configs/data/npz.yaml`", "yaml").replace("vae_cli.data.npz.load_npz", "my_data.load_npz")
    (tmp_path / "my_configs" / "data").mkdir(parents=True)
    (tmp_path / "my_configs" / "data" / "npz.yaml").write_text(config)
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    rng = np.random.default_rng(0)
    arrays = {f"{part}_x": rng.integers(0, 256, (n, 8, 8), dtype=np.uint8) for part, n in (("train", 60), ("test", 20))}
    arrays.update({f"{part}_y": np.arange(n) % 2 for part, n in (("train", 60), ("test", 20))})
    np.savez(tmp_path / "images.npz", **arrays)
    common = ("--config-dir", "my_configs", "data=npz", "batch_size=10", "model.hidden_sizes=[16]", "~eval")
    trained = run_cli(*common, "data.path=images.npz", "max_steps=5", "hydra.run.dir=run", cwd=tmp_path)
    assert trained.returncode == 0, trained.stderr
    (tmp_path / "images.npz").rename(tmp_path / "moved.npz")
    light = ("eval=light", "eval.num_samples=2", "eval.probe_sizes=[1]")
    refused = run_cli("run", *light, cwd=tmp_path, exe=vae_eval_exe())
    assert refused.returncode == 2 and "data.path=" in refused.stderr and "is not a file" in refused.stderr
    evaluated = run_cli("run", *light, "data.path=moved.npz", cwd=tmp_path, exe=vae_eval_exe())
    assert evaluated.returncode == 0, evaluated.stderr
    assert json.loads((tmp_path / "run" / "eval.json").read_text())["data_source"] == str(tmp_path / "moved.npz")
    assert f"data.path={tmp_path / 'moved.npz'} in place of the run's {tmp_path / 'images.npz'}" in evaluated.stderr
    resumed = run_cli("--config-dir", "my_configs", "resume=run", "data=npz", "data.path=moved.npz", "max_steps=9",
                      cwd=tmp_path)  # data=npz as the run had it: the default data set has no data.path
    assert resumed.returncode == 0, resumed.stderr
    assert read_status(tmp_path / "run")["step"] == 9
    root = run_cli("run", *light, "data.root=moved.npz", cwd=tmp_path, exe=vae_eval_exe())
    assert root.returncode == 2 and "have no root setting; leave data.root out" in root.stderr, root.stderr


def test_a_data_root_from_home_is_not_taken_for_a_relative_one(tmp_path):
    """data.root='~/fm' became '<launch folder>/~/fm' on resume and in vae-eval."""
    from omegaconf import OmegaConf

    from vae_cli.run_state import with_data_paths_from
    cfg = OmegaConf.create({"data": {"root": "~/fm", "path": "tiny"}})
    assert OmegaConf.to_container(with_data_paths_from(cfg, tmp_path)) == {
        "data": {"root": "~/fm", "path": str(tmp_path / "tiny")}}


@pytest.mark.parametrize("code,words", [(errno.EROFS, "make it writable, or evaluate a copy of the run folder"),
                                        (errno.ENOSPC, "free some space")])
def test_a_run_folder_vae_eval_cannot_write_is_refused_before_the_evaluation(code, words, smoke_run, tmp_path,
                                                                            monkeypatch, capsys):
    """A read-only or full run folder: the figures were computed (minutes at K = 5000), then lost in a
    traceback of TensorBoard's writer thread, exit 1."""
    from vae_cli.evaluation import run as evaluation_run
    run_dir = shutil.copytree(smoke_run[0], tmp_path / "run")
    before = sorted(p.name for p in run_dir.iterdir())

    def cannot_open(path, *args, **kwargs):
        raise OSError(code, os.strerror(code), str(path))

    monkeypatch.setattr(evaluation_run, "open", cannot_open, raising=False)
    monkeypatch.setattr(evaluation_run, "log_px_estimates", lambda *a, **k: pytest.fail("evaluated"))
    with pytest.raises(SystemExit) as stop:
        main([str(run_dir), "eval=light"])
    assert stop.value.code == 2
    line = capsys.readouterr().err.strip()
    assert line == (f"error: {run_dir} cannot be written ({os.strerror(code)}): vae-eval writes eval.json and "
                    f"TensorBoard events there; {words}")
    assert sorted(p.name for p in run_dir.iterdir()) == before


def test_a_read_only_run_folder_is_refused_by_resume_in_one_line(smoke_run, tmp_path, monkeypatch):
    """Hydra's log file was the first thing to fail: 'error: ValueError: Unable to configure handler 'file''."""
    from vae_cli import cli
    from vae_cli.config_keys import hydra_error_line

    monkeypatch.setattr(cli.os, "access", lambda path, mode: False)
    with pytest.raises(ConfigError, match=r"the folder cannot be written \(read-only\?\).*copy the run folder"):
        cli.check_resume(str(smoke_run[0]), [])
    assert hydra_error_line("ValueError: Unable to configure handler 'file'").startswith(
        "the run folder cannot be written: Hydra could not open its log file there")


def test_vae_eval_keeps_an_earlier_report_of_other_settings(smoke_run, tmp_path):
    """eval.json of other settings is renamed, not overwritten; the same settings again replace it."""
    run_dir = shutil.copytree(smoke_run[0], tmp_path / "run")
    for path in run_dir.glob("eval*.json"):
        path.unlink()
    for num_samples in (20, 7, 7):
        main([str(run_dir), "eval=light", f"eval.num_samples={num_samples}"])
    reports = {p.name: json.loads(p.read_text()) for p in run_dir.glob("eval*.json")}
    assert {name: r["settings"]["num_samples"] for name, r in reports.items()} == {"eval-1.json": 20, "eval.json": 7}
    assert reports["eval-1.json"]["figures"]["test/L_K"] != reports["eval.json"]["figures"]["test/L_K"]
    (run_dir / "eval.json").write_text('{"figures": {"test/L_K": -1.0}, "notes": ["edited by hand"')  # not JSON
    main([str(run_dir), "eval=light", "eval.num_samples=7"])  # an unreadable report was overwritten
    assert (run_dir / "eval-2.json").read_text().endswith('["edited by hand"')
    assert json.loads((run_dir / "eval.json").read_text())["settings"]["num_samples"] == 7
    # the same model named another way (best = last here): replaced, not kept as eval-3.json (a user review)
    main([str(run_dir), "eval=light", "eval.num_samples=7", "checkpoint=last"])
    assert json.loads((run_dir / "eval.json").read_text())["model_used"].startswith("last (epoch 2")
    assert sorted(p.name for p in run_dir.glob("eval*.json")) == ["eval-1.json", "eval-2.json", "eval.json"]


def test_vae_eval_writes_every_promised_tag_and_key(smoke_run):
    run_dir, metrics, _ = smoke_run
    main([str(run_dir), "eval.num_samples=300", "eval.chunk_size=64"])
    report = json.loads((run_dir / "eval.json").read_text())
    assert set(report) == {"figures", "notes", "step", "model_used", "data_source", "device", "threads", "settings",
                           "images_x_samples_per_sec", "run_state"} and report["run_state"] == "finished"
    figures = report["figures"]
    assert set(figures) == TEST_TAGS | STDERR_TAGS | PROBE_TAGS and report["settings"]["num_samples"] == 300
    assert "bits/dim not reported" in report["notes"][0] and report["step"] == metrics["step"]
    assert any("LOWER bound" in note for note in report["notes"])  # what L_K and the gap measure
    assert figures["test/L_K"] >= figures["test/elbo_L1"]
    assert 0 <= figures["test/active_units"] <= 4 and all(0 <= figures[t] <= 1 for t in PROBE_TAGS)
    acc = events(run_dir)
    scalars = set(acc.Tags()["scalars"])
    # vae-eval's figures have tags of their own: training's test/L_K (K = 100) keeps its one value
    assert {f"vae-eval/K300/{tag}" for tag in TEST_TAGS | PROBE_TAGS} <= scalars
    assert [e.value for e in acc.Scalars("test/L_K")] == [pytest.approx(metrics["test/L_K"], rel=1e-6)]
    assert {f"vae-eval/K300/{tag}" for tag in IMAGE_TAGS} <= set(acc.Tags()["images"])
    assert acc.Scalars("vae-eval/K300/test/L_K")[-1].step == metrics["step"]
    # an evaluation at another K has tags of its own: each tag holds one value, not two at the same step
    main([str(run_dir), "eval.num_samples=30", "eval.chunk_size=64", "eval.embedding=false"])
    acc = events(run_dir)
    low, high = acc.Scalars("vae-eval/K30/test/L_K"), acc.Scalars("vae-eval/K300/test/L_K")
    assert len(low) == len(high) == 1 and low[0].value == pytest.approx(
        json.loads((run_dir / "eval.json").read_text())["figures"]["test/L_K"], rel=1e-6)
    assert high[0].value == pytest.approx(figures["test/L_K"], rel=1e-6)
    projector = run_dir / f"{metrics['step']:05d}" / "test_latent_means"
    labels = (projector / "metadata.tsv").read_text().split()
    assert len(labels) == 128 and set(labels) == {"0", "1", "2", "3"}  # the synthetic test set
    assert (projector / "sprite.png").is_file() and (run_dir / "projector_config.pbtxt").is_file()


@pytest.mark.parametrize("overrides,continuous", [
    (("likelihood=gaussian", "likelihood.scale=optimal"), True),
    (("latent=categorical",), False),
])
def test_light_evaluation_of_other_likelihoods_and_latents(overrides, continuous, tmp_path, caplog):
    with caplog.at_level("INFO", logger="vae_cli.evaluation.run"):
        metrics = train(compose_config("debug=smoke", "epochs=1", *overrides), tmp_path)
    assert TEST_TAGS <= set(metrics) and ("test/bits_per_dim" in metrics) == continuous
    if continuous:  # bits/dim = -L_K / (D ln 2) + 8, D = 64
        assert metrics["test/bits_per_dim"] == pytest.approx(-metrics["test/L_K"] / (64 * 0.6931471805599453)
                                                             + 8)
        # on the terminal too, where it was only in metrics.json (a user review)
        assert f"nats (a lower bound on log p(x); {metrics['test/bits_per_dim']:.3f} bits/dim, an upper bound)" \
            in caplog.text
    else:
        assert "bits/dim" not in caplog.text
    assert metrics["test/L_K"] >= metrics["test/elbo_L1"]


def test_missing_folder_and_bad_override_are_one_line_errors(smoke_run, tmp_path, capsys):
    for argv, message in (([str(tmp_path / "absent")], "no checkpoint"),
                          ([str(smoke_run[0]), "eval.num_sample=5"], "no key eval.num_sample; did you mean "
                                                                      "eval.num_samples?"),
                          ([str(smoke_run[0]), "+checkpoin=last"], "no key checkpoin; did you mean checkpoint?"),
                          ([str(smoke_run[0]), "eval=lite"], "the options of eval are full, light"),
                          ([str(smoke_run[0]), "~eval"], "~eval: vae-eval always evaluates"),
                          ([str(smoke_run[0]), "~eval=null"], "~eval: vae-eval always evaluates"),
                          ([str(smoke_run[0]), "~eval.probe_sizes"], "~eval.probe_sizes: this command needs"),
                          ([str(smoke_run[0]), "eval.num_samples=[1"], "eval.num_samples=[1: no viable"),
                          ([str(smoke_run[0]), "--cfg", "job"], "--cfg: vae-eval takes key=value settings"),
                          ([str(smoke_run[0]), "eval.num_samples=0"], "eval.num_samples=0 must be"),
                          ([str(smoke_run[0]), "threads=0"], "threads=0"),
                          # synthetic data: load_synthetic() got an unexpected keyword argument 'root' (a review)
                          ([str(smoke_run[0]), "data.root=/tmp"], "data.root=/tmp: the run's data (vae_cli.data."
                                                                  "load_synthetic) have no root setting"),
                          (["eval.num_samples=5"], "first argument must be the run folder"),
                          # Hydra's advice for data=..., +data=fashion_mnist, was taken and not used (a user review)
                          ([str(smoke_run[0]), "+data=fashion_mnist"], "+data=fashion_mnist: vae-eval evaluates a run "
                                                                       "on its own data set"),
                          ([str(smoke_run[0]), "data.val_fraction=0.2"], "only data.root=FOLDER and data.path=FILE"),
                          ([str(smoke_run[0]), "eval=123"], "eval=123: eval takes the name of one of its options"),
                          # a glob: a raw 'LexerNoViableAltException' (a user review)
                          ([str(smoke_run[0]), str(smoke_run[0]), "checkpoint=last"],
                           f"vae-eval evaluates one run folder, and {smoke_run[0]} is another")):
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        assert exit_info.value.code == 2
        lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
        assert len(lines) == 1 and message in lines[0], (argv, lines)


def test_vae_eval_runs_on_the_threads_asked_for_and_records_them(smoke_run):
    import torch

    before = torch.get_num_threads()
    try:
        main([str(smoke_run[0]), "eval=light", "threads=2"])
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    assert json.loads((smoke_run[0] / "eval.json").read_text())["threads"] == 2


def test_installed_vae_eval_runs_and_rejects_a_corrupt_checkpoint(smoke_run, tmp_path):
    run_dir = smoke_run[0]
    result = run_cli(str(run_dir), "eval=light", "eval.probe_sizes=[10]", "eval.pixel_baseline=true",
                     cwd=tmp_path, exe=vae_eval_exe())
    assert result.returncode == 0, result.stderr
    figures = json.loads((run_dir / "eval.json").read_text())["figures"]
    assert set(figures) == TEST_TAGS | STDERR_TAGS | {"probe/latent_n10", "probe/pixels_n10"}
    # the probe's accuracies on the terminal too (they were in eval.json only)
    assert (f"probe accuracy on the test set (logistic regression): latent_n10 {figures['probe/latent_n10']:.3f}, "
            f"pixels_n10 {figures['probe/pixels_n10']:.3f}") in result.stdout + result.stderr
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "checkpoint.pt").write_bytes((run_dir / "checkpoint.pt").read_bytes()[:500])  # truncated
    result = run_cli(str(broken), cwd=tmp_path, exe=vae_eval_exe())
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode == 2 and len(lines) == 1 and "corrupt" in lines[0], result.stderr


@pytest.mark.slow
def test_ctrl_c_during_vae_eval_is_one_line_and_leaves_the_run_as_it_was(smoke_run, tmp_path):
    run_dir = shutil.copytree(smoke_run[0], tmp_path / "run")
    before = {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()}
    log = tmp_path / "stderr.txt"
    with open(log, "w") as err:  # K large enough that the evaluation is still running when stopped
        proc = subprocess.Popen([vae_eval_exe(), str(run_dir), "eval.num_samples=100000"], stderr=err,
                                stdout=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 300
            while "L_100000 on" not in log.read_text():
                assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
                time.sleep(0.1)
            proc.send_signal(signal.SIGINT)
            proc.wait(timeout=60)
        finally:
            proc.kill()
    text = log.read_text()
    assert proc.returncode == -signal.SIGINT and "Traceback" not in text, text
    assert "stopped by SIGINT before vae-eval finished" in text
    assert {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()} == before  # no eval.json
