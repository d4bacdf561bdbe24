"""Bad input, as a user meets it on the command line: one `error:` line naming what is wrong and how to
fix it, a non-zero exit, no traceback, no events or checkpoint for a run that never started, and the files
of an existing run untouched."""
import gzip
import json
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from conftest import run_cli, vae_train_exe
from vae_cli.run_state import FolderInUse, run_lock

SMOKE = ("debug=smoke", "~eval")


def one_error_line(result) -> str:
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, result.stderr
    return lines[0]


def idx_folder(root: Path, corrupt: str) -> Path:
    """A data.root folder holding Fashion-MNIST-shaped IDX files, one of them truncated or corrupt."""
    folder = root / corrupt
    folder.mkdir()
    header = (2051).to_bytes(4, "big") + (3).to_bytes(4, "big") + (28).to_bytes(4, "big") * 2
    files = {"train-images-idx3-ubyte": header + bytes(3 * 784),
             "t10k-images-idx3-ubyte": header + bytes(3 * 784)}
    labels = (2049).to_bytes(4, "big") + (3).to_bytes(4, "big") + bytes(3)
    files |= {"train-labels-idx1-ubyte": labels, "t10k-labels-idx1-ubyte": labels}
    if corrupt == "truncated":
        files["train-images-idx3-ubyte"] = files["train-images-idx3-ubyte"][:-100]
    elif corrupt == "bad_magic":
        files["t10k-labels-idx1-ubyte"] = b"\x00\x00\x09\x99" + labels[4:]
    elif corrupt == "empty":
        files["t10k-images-idx3-ubyte"] = b""
    elif corrupt == "no_images":  # headers saying 0 images and 0 labels: numpy's reshape error before
        files["train-images-idx3-ubyte"] = header[:4] + (0).to_bytes(4, "big") + header[8:]
        files["train-labels-idx1-ubyte"] = labels[:4] + (0).to_bytes(4, "big")
    elif corrupt == "bad_gzip":
        files["train-labels-idx1-ubyte.gz"] = gzip.compress(labels)[:-6]
        del files["train-labels-idx1-ubyte"]
    for name, content in files.items():
        (folder / name).write_bytes(content)
    return folder


# (command-line overrides, words the error line must contain). Each runs in a fresh folder.
FRESH_CASES = [
    (("epoch=3",), ["epoch=3: vae-train's config has no key epoch; did you mean epochs?"]),  # unknown key
    (("optimizer.lrr=0.1",), ["no key optimizer.lrr; did you mean optimizer.lr?"]),
    (("+epoch=3",), ["+epoch=3:", "did you mean epochs?"]),  # Hydra would add it, and nothing would read it
    (("++seeed=1",), ["++seeed=1:", "did you mean seed?"]),
    (("likelihood.scale=optimal",), ["likelihood.scale is a key of likelihood=gaussian only"]),
    # without -m the search's sweeper takes no part: it trained one run of the defaults, exit 0, saying nothing
    (("hparams_search=optuna_mlp",), ["hparams_search=optuna_mlp is a search of many runs: start it with -m"]),
    (("data=fashion",), ["data=fashion: no option fashion in data; did you mean data=fashion_mnist? (the options of "
                          "data are fashion_mnist, mnist, synthetic)"]),  # Hydra's "In 'train': Could not find ..."
    (("hydra/launcher=slurmm",), ["hydra/launcher=slurmm: no option slurmm in hydra/launcher; did you mean "
                                  "hydra/launcher=slurm?"]),
    (("epochs=2", "checkpoint=[1"), ["checkpoint=[1: no viable alternative"]),  # syntax: which override
    (("data.root=~/data",), ["data.root=~/data:", "write data.root=$HOME/data"]),  # no shell expanded ~
    (("epochs=abc",), ["epochs='abc'", "integer"]),  # wrong type
    (("optimizer.lr=0",), ["optimizer.lr=0", "> 0"]),
    (("optimizer.lr=abc",), ["optimizer.lr='abc' must be a finite number"]),  # not torch's "'<=' not supported"
    (("optimizer.lr=[1]",), ["optimizer.lr=[1] must be a finite number"]),  # it was torch's "'<=' not supported"
    (("beta=inf",), ["beta=inf must be a finite number >= 0"]),  # accepted: the run diverged, blaming the lr
    (("optimizer.lr=-1",), ["optimizer.lr=-1", "> 0"]),
    (("model.latent_dim=0",), ["model.latent_dim=0", ">= 1"]),
    (("batch_size=0",), ["batch_size=0", ">= 1"]),
    (("batch_size=100000",), ["batch_size=100000", "larger than the training split", "461"]),
    (("epochs=0",), ["epochs=0", ">= 1"]),
    (("beta=-1",), ["beta=-1", ">= 0"]),
    (("estimator.num_samples=0",), ["estimator.num_samples=0", ">= 1"]),
    (("checkpoint.every_minutes=-1",), ["checkpoint.every_minutes=-1"]),
    (("early_stopping.patience=0",), ["early_stopping.patience=0"]),
    (("optimizer.clip_grad_norm=0",), ["optimizer.clip_grad_norm=0", "> 0"]),
    (("likelihood=gaussian", "likelihood.scale=optimal", "estimator=reinforce", "estimator.num_samples=2"),
     ["reinforce", "optimal"]),
    (("latent=categorical", "estimator=exact"), ["estimator=exact", "configurations", "max_configurations"]),
    (("estimator=gumbel_softmax",), ["gumbel_softmax", "latent=categorical"]),
    # sigma's fit would be an unweighted mean over the K configurations, or taken twice a step
    (("latent=categorical", "model.latent_dim=2", "estimator=exact", "likelihood=gaussian", "likelihood.scale=optimal"),
     ["estimator=exact cannot use likelihood.scale=optimal"]),
    (("latent=categorical", "estimator=gumbel_softmax", "likelihood=gaussian", "likelihood.scale=optimal"),
     ["estimator.straight_through=false cannot use likelihood.scale=optimal"]),
    (("objective.metric=test/elbo",), ["objective.metric='test/elbo'", "validation figure"]),
    (("objective.metric=val/elbo_typo",), ["objective.metric='val/elbo_typo'", "one of val/recon", "val/elbo,"]),
    (("data=fashion_mnist", "data.root=/nonexistent/folder"), ["data.root", "/nonexistent/folder"]),
    (("data=fashion_mnist", "data.root=/etc/hostname"), ["data.root='/etc/hostname': a file, not a folder"]),
    (("~early_stopping",), ["~early_stopping: this command needs early_stopping", "only ~eval may be removed"]),
    # a node of settings given one value, as the README's "objective (val/elbo, maximize)" invites: Hydra
    # put the value in the node's place, and the run met it with an AttributeError traceback (a user review)
    (("objective=val/elbo",), ["objective=val/elbo: objective is not one value but a group of settings (objective."
                               "metric, objective.direction); set one of them, e.g. objective.metric=val/elbo"]),
    (("checkpoint=5",), ["checkpoint=5:", "group of one setting, checkpoint.every_minutes; set it"]),
    (("early_stopping=3",), ["early_stopping=3:", "e.g. early_stopping.patience=3"]),
    # a config group given no option's name: Hydra's TypeError and ValueError named neither (a user review)
    (("model=[1,2]",), ["model=[1,2]: model takes the name of one of its options (such as mlp)"]),
    (("eval=123",), ["eval=123: eval takes the name of one of its options (such as full, light)"]),
    (("eval=null",), ["eval=null: write ~eval"]),
    (("experiment=null",), ["experiment=null: experiment is unset unless given", "leave experiment=null out"]),
    (("overwrite=no",), ["overwrite='no' must be true or false"]),  # a string: it counted as true
    (("likelihood=gaussian", "likelihood.dequantize=maybe"), ["likelihood.dequantize='maybe' must be true or false"]),
]
# The end-of-run evaluation's settings (SMOKE turns the evaluation off): refused before training, where
# they were refused after it, the run's training lost.
EVAL_CASES = [("eval.num_samples=0", ["eval.num_samples=0", ">= 1"]),
              ("eval.probe_sizes=[10,0]", ["eval.probe_sizes=[10, 0]", "positive integers"]),
              ("eval.probe_sizes=5", ["eval.probe_sizes=5 must be a list", "eval.probe_sizes=[5]"]),  # a traceback
              ("eval.probe_sizes=null", ["eval.probe_sizes=null: give a list"]),  # a TypeError's traceback
              ("eval.pictures=maybe", ["eval.pictures='maybe' must be true or false"])]
DATA_CASES = [("truncated", ["train-images-idx3-ubyte", "truncated"]),
              ("bad_magic", ["t10k-labels-idx1-ubyte", "magic"]),
              ("bad_gzip", ["train-labels-idx1-ubyte.gz", "cannot read"]),
              ("empty", ["t10k-images-idx3-ubyte: empty, not an IDX file"]),  # "IDX magic number is None"
              ("no_images", ["train-images-idx3-ubyte: holds no images"])]


def assert_nothing_started(run_dir: Path) -> None:
    left = {p.name for p in run_dir.iterdir()} if run_dir.is_dir() else set()
    assert not {name for name in left if name.startswith("events.out") or name.endswith(".pt")}, left


@pytest.mark.slow
@pytest.mark.parametrize("overrides,words", FRESH_CASES, ids=[" ".join(c[0]) for c in FRESH_CASES])
def test_bad_value_is_one_line_exit_2_and_starts_nothing(overrides, words, tmp_path):
    result = run_cli(*SMOKE, *overrides, "hydra.run.dir=run", cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    line = one_error_line(result)
    assert all(word in line for word in words), line
    assert_nothing_started(tmp_path / "run")


@pytest.mark.parametrize("override,words", EVAL_CASES, ids=[c[0] for c in EVAL_CASES])
def test_a_bad_evaluation_setting_is_refused_before_training(override, words, tmp_path):
    result = run_cli("debug=smoke", override, "hydra.run.dir=run", cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    line = one_error_line(result)
    assert all(word in line for word in words), line
    assert_nothing_started(tmp_path / "run")


@pytest.mark.slow
@pytest.mark.parametrize("corrupt,words", DATA_CASES, ids=[c[0] for c in DATA_CASES])
def test_corrupt_data_file_is_named(corrupt, words, tmp_path):
    folder = idx_folder(tmp_path, corrupt)
    result = run_cli(*SMOKE, "data=fashion_mnist", f"data.root={folder}", "hydra.run.dir=run", cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    line = one_error_line(result)
    assert all(word in line for word in words), line
    assert_nothing_started(tmp_path / "run")


def test_unwritable_run_folder(tmp_path):
    (tmp_path / "a_file").write_text("")
    result = run_cli(*SMOKE, f"hydra.run.dir={tmp_path / 'a_file' / 'run'}", cwd=tmp_path)
    assert result.returncode == 2
    line = one_error_line(result)
    assert "a_file" in line and "hydra.run.dir" in line


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A finished smoke run made by the installed vae-train, copied afresh for each test."""
    root = tmp_path_factory.mktemp("finished")
    result = run_cli(*SMOKE, "hydra.run.dir=run", cwd=root)
    assert result.returncode == 0, result.stderr
    return root / "run"


def snapshot(run_dir: Path) -> dict:
    """Every file's bytes and modification time (Hydra's log is only ever appended to)."""
    return {p.relative_to(run_dir): (p.read_bytes(), p.stat().st_mtime_ns) for p in run_dir.rglob("*")
            if p.is_file() and p.suffix != ".log"}


def corrupt_checkpoint(run_dir: Path, how: str) -> None:
    path = run_dir / "checkpoint.pt"
    if how == "truncated":
        path.write_bytes(path.read_bytes()[:1000])
    elif how == "foreign":
        torch.save({"weights": torch.zeros(3)}, path)
    elif how == "pickled":
        torch.save({"model": Path("/x"), "config": {}, "step": 1}, path)  # a Python object, not a tensor


EXISTING_CASES = [
    ("same command, another seed", ("seed=5",), None, ["another run's files", "seed: 0 -> 5", "overwrite=true"]),
    ("resume with another model", ("resume=RUN", "model.latent_dim=3"), None, ["model.latent_dim=3", "resume"]),
    ("resume with another likelihood", ("resume=RUN", "likelihood=gaussian"), None, ["likelihood=gaussian"]),
    # what a training command can do there: start afresh ("rerun the training" said neither how nor where)
    ("truncated checkpoint", (), "truncated", ["checkpoint.pt", "truncated", "overwrite=true", "hydra.run.dir"]),
    ("resume of a truncated checkpoint", ("resume=RUN",), "truncated", ["checkpoint.pt", "overwrite=true"]),
    ("foreign checkpoint", (), "foreign", ["checkpoint.pt", "lacks model"]),
    ("pickled object", (), "pickled", ["checkpoint.pt", "pickled"]),
    ("resume of a folder without a run", ("resume=EMPTY",), None, ["no checkpoint.pt"]),
]


@pytest.mark.slow
@pytest.mark.parametrize("name,overrides,corrupt,words", EXISTING_CASES, ids=[c[0] for c in EXISTING_CASES])
def test_bad_command_on_an_existing_run_changes_nothing(name, overrides, corrupt, words, finished_run, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(finished_run, run_dir)
    (tmp_path / "empty").mkdir()
    if corrupt:
        corrupt_checkpoint(run_dir, corrupt)
    before = snapshot(run_dir)
    args = [a.replace("RUN", str(run_dir)).replace("EMPTY", str(tmp_path / "empty")) for a in overrides]
    if not any(a.startswith("resume=") for a in args):
        args.append("hydra.run.dir=run")
    result = run_cli(*SMOKE, *args, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    line = one_error_line(result)
    assert all(word in line for word in words), line
    assert snapshot(run_dir) == before


@pytest.mark.slow
@pytest.mark.parametrize("overrides,words", FRESH_CASES[1:], ids=[" ".join(c[0]) for c in FRESH_CASES[1:]])
def test_bad_value_pointed_at_an_existing_run_changes_nothing(overrides, words, finished_run, tmp_path):
    """The same bad commands, run into a finished run's folder: one line, exit 2, every file as it was
    (the unknown key, FRESH_CASES[0], fails before any folder is chosen)."""
    run_dir = tmp_path / "run"
    shutil.copytree(finished_run, run_dir)
    before = snapshot(run_dir)
    result = run_cli(*SMOKE, *overrides, "hydra.run.dir=run", cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    one_error_line(result)
    assert snapshot(run_dir) == before


RESUME_CASES = [
    ("resume=", ["resume= names no folder"]),  # resume=$RUN with RUN unset: it trained a new run
    ("resume=absent", ["resume=absent: no such folder"]),  # the folder was created, a failed run recorded in it
    ("resume=a_file", ["resume=a_file is a file; pass its folder"]),
    ("resume=empty", ["resume=empty: no checkpoint.pt there"]),  # a failed run was recorded in the user's folder
    ("resume=busy", ["busy is in use by another vae-train"]),  # said "no checkpoint.pt" before its first one
    ("resume=empty overwrite=true", ["overwrite=true deletes it; give one of them"]),  # it started afresh
    # it extended the run in resume's folder, ignoring the other (a user review)
    ("resume=empty hydra.run.dir=elsewhere", ["continues the run in its own folder: leave hydra.run.dir=elsewhere out",
                                              "copy its folder to elsewhere"]),
    ("resume=empty hydra.run.dir=${hydra:runtime.cwd}/empty", ["leave hydra.run.dir=${hydra:runtime.cwd}/empty out"]),
    # a run that died before its first checkpoint: 'pass the folder of a run started by vae-train' (a review)
    ("resume=died", ["the run there ended before its first checkpoint", "overwrite=true and hydra.run.dir="]),
    # finished, its checkpoint gone: overwrite=true, as advised, would have deleted its figures (a review)
    ("resume=done", ["the run there is finished, but its checkpoint.pt is gone", "figures are in metrics.json"]),
]


@pytest.mark.parametrize("arguments,words", RESUME_CASES, ids=[c[0] for c in RESUME_CASES])
def test_a_bad_resume_folder_is_refused_before_anything_is_written(arguments, words, tmp_path):
    (tmp_path / "a_file").write_text("")
    (tmp_path / "empty").mkdir()
    (tmp_path / "busy").mkdir()
    (tmp_path / "died").mkdir()
    (tmp_path / "died" / "status.json").write_text('{"state": "failed"}')
    (tmp_path / "done").mkdir()
    (tmp_path / "done" / "status.json").write_text('{"state": "finished"}')
    (tmp_path / "done" / "metrics.json").write_text('{}')
    before = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))
    with run_lock(tmp_path / "busy"):  # as a run before its first checkpoint holds it
        result = run_cli(*arguments.split(" "), cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    line = one_error_line(result)
    assert all(word in line for word in words), line
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")) == before  # not even a log file


def test_resume_refuses_a_group_of_settings_it_would_have_ignored(tmp_path):
    """experiment=, debug= set keys all over the config and have no node of their own: on resume they were
    neither compared nor applied, so `resume=RUN experiment=burda_mlp` went on with the run's model, exit 0.
    The run's own choice (from its first command) is accepted."""
    first = run_cli(*SMOKE, "hydra.run.dir=run", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    kept = (tmp_path / "run/metrics.json").read_bytes()
    other = run_cli("resume=run", "experiment=burda_mlp", cwd=tmp_path)
    assert other.returncode == 2, other.stderr
    line = one_error_line(other)
    assert "experiment=burda_mlp would change what the run computes" in line, line
    same = run_cli("resume=run", "debug=smoke", cwd=tmp_path)
    assert same.returncode == 0 and "is finished" in same.stdout + same.stderr, same.stderr
    assert (tmp_path / "run/metrics.json").read_bytes() == kept


def test_resume_may_turn_the_end_of_run_evaluation_off(tmp_path):
    """eval is a key a resume may change (README): `resume=RUN ~eval` was refused as a group of settings."""
    first = run_cli("debug=smoke", "max_steps=5", "eval.num_samples=2", "hydra.run.dir=run", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert "test/L_K" in json.loads((tmp_path / "run/metrics.json").read_text())
    resumed = run_cli("resume=run", "max_steps=10", "~eval", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    metrics = json.loads((tmp_path / "run/metrics.json").read_text())
    assert metrics["step"] == 10 and "test/L_K" not in metrics
    again = run_cli("resume=run", "max_steps=12", "eval.num_samples=3", cwd=tmp_path)  # a partial eval node
    assert again.returncode == 0, again.stderr
    assert "test/L_K" in json.loads((tmp_path / "run/metrics.json").read_text())


def test_an_option_of_ones_own_that_fails_to_build_is_named_with_its_cause(tmp_path, monkeypatch):
    """A --config-dir option whose class hits a NameError (docs/extending.md's outside module, missing an
    import): the line said only "Error locating target ..., set env var HYDRA_FULL_ERROR=1", which showed
    the same line again."""
    (tmp_path / "my_ext").mkdir()
    (tmp_path / "my_ext" / "__init__.py").write_text(
        "from vae_cli.likelihoods import Likelihood\n\n\nclass Lap(Likelihood):\n    params_per_dim = 1\n\n"
        "    def __init__(self):\n        super().__init__()\n        self.scale = torch.zeros(())\n")
    (tmp_path / "my_configs" / "likelihood").mkdir(parents=True)
    (tmp_path / "my_configs" / "likelihood" / "lap.yaml").write_text("_target_: my_ext.Lap\n")
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    result = run_cli("--config-dir", "my_configs", "likelihood=lap", *SMOKE, "hydra.run.dir=run", cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    line = one_error_line(result)
    assert "'likelihood' could not be built" in line and "(NameError: name 'torch' is not defined)" in line, line
    assert "HYDRA_FULL_ERROR" not in line
    monkeypatch.delenv("PYTHONPATH")  # the module not found: say how it is found (a user review)
    result = run_cli("--config-dir", "my_configs", "likelihood=lap", *SMOKE, "hydra.run.dir=run2", cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert one_error_line(result).endswith("(ModuleNotFoundError: No module named 'my_ext'); run the command with "
                                           "PYTHONPATH naming the folder that holds my_ext (docs/extending.md)")
    # a module the option's own module imports, or a class never added to vae-cli's: no PYTHONPATH advice
    (tmp_path / "my_ext" / "__init__.py").write_text("import not_installed_here\n")
    (tmp_path / "my_configs" / "likelihood" / "lap2.yaml").write_text("_target_: vae_cli.likelihoods.Laplace\n")
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    for option, missing in (("lap", "not_installed_here"), ("lap2", "vae_cli.likelihoods.Laplace")):
        result = run_cli("--config-dir", "my_configs", f"likelihood={option}", *SMOKE, "hydra.run.dir=run3",
                         cwd=tmp_path)
        line = one_error_line(result)
        assert result.returncode == 2 and missing in line and "PYTHONPATH" not in line, line


def test_the_run_lock_refuses_a_second_holder(tmp_path):
    with run_lock(tmp_path / "run"):
        with pytest.raises(FolderInUse, match="in use by another vae-train"):
            with run_lock(tmp_path / "run"):
                pass
    with run_lock(tmp_path / "run"):  # released at the end of the first
        pass


@pytest.mark.slow
def test_a_second_vae_train_in_a_folder_in_use_is_refused_and_touches_nothing(tmp_path):
    """Two commands in one folder (as two runs started in the same second get): the second is refused in
    one line naming the first's pid, and the first's status.json and .hydra/ stay its own."""
    first = subprocess.Popen([vae_train_exe(), *SMOKE, "epochs=100000", "hydra.run.dir=run"], cwd=tmp_path,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 300
        while (json.loads((tmp_path / "run/status.json").read_text()).get("state") != "running"
               if (tmp_path / "run/status.json").is_file() else True):
            assert time.monotonic() < deadline and first.poll() is None, "the first run did not start"
            time.sleep(0.2)
        second = run_cli(*SMOKE, "epochs=100000", "seed=1", "hydra.run.dir=run", cwd=tmp_path)
        assert second.returncode == 2, second.stderr
        line = one_error_line(second)
        assert "in use by another vae-train" in line and f"pid {first.pid} " in line, line
        status = json.loads((tmp_path / "run/status.json").read_text())
        assert status["pid"] == first.pid and status["state"] == "running"
        assert "seed=1" not in (tmp_path / "run/.hydra/overrides.yaml").read_text()
    finally:
        first.send_signal(signal.SIGINT)
        _, err = first.communicate(timeout=120)
    assert first.returncode == -signal.SIGINT, err  # died by SIGINT, as a shell expects
    assert json.loads((tmp_path / "run/status.json").read_text())["state"] == "interrupted"


def test_the_corrected_command_runs_in_the_folder_of_a_refused_one(tmp_path):
    """A bad value leaves a failed status.json (for a sweep's summary) and nothing else of a run: the same
    folder then takes the corrected command, which has other settings by construction."""
    refused = run_cli(*SMOKE, "beta=-1", "hydra.run.dir=run", cwd=tmp_path)
    assert refused.returncode == 2 and "beta=-1" in one_error_line(refused)
    assert json.loads((tmp_path / "run/status.json").read_text())["state"] == "failed"
    assert one_error_line(refused).removeprefix("error: ") in (tmp_path / "run/vae-train.log").read_text()
    corrected = run_cli(*SMOKE, "beta=0.5", "hydra.run.dir=run", cwd=tmp_path)
    assert corrected.returncode == 0, corrected.stderr
    assert json.loads((tmp_path / "run/status.json").read_text())["state"] == "finished"


def test_a_second_bad_value_in_the_folder_of_a_refused_one_is_recorded_in_its_place(tmp_path):
    """status.json and .hydra/overrides.yaml kept the first refusal's error and overrides (a review): a
    sweep's re-run then called its failing jobs refused."""
    first = run_cli(*SMOKE, "beta=-1", "hydra.run.dir=run", cwd=tmp_path)
    assert first.returncode == 2 and "beta=-1" in one_error_line(first)
    second = run_cli(*SMOKE, "batch_size=0", "hydra.run.dir=run", cwd=tmp_path)
    assert second.returncode == 2 and "batch_size=0" in one_error_line(second)
    status = json.loads((tmp_path / "run/status.json").read_text())
    assert status["state"] == "failed" and status["error"] == one_error_line(second).removeprefix("error: ")
    assert "batch_size=0" in (tmp_path / "run/.hydra/overrides.yaml").read_text()


@pytest.mark.parametrize("key,multirun", [("hydra.run.dir", ()), ("hydra.sweep.dir", ("-m", "beta=0.5,1"))])
def test_a_run_or_sweep_folder_that_is_a_file_is_one_line(key, multirun, tmp_path):
    """A sweep folder given as an existing file ended in two tracebacks (FileExistsError, then
    NotADirectoryError from the clean-up of the sweep folder); the file is left as it was."""
    (tmp_path / "notes").write_text("mine\n")
    result = run_cli(*multirun, *SMOKE, f"{key}=notes", cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert one_error_line(result) == f"error: {key}=notes is a file, not a folder; give a folder for the " + (
        "run's files" if key == "hydra.run.dir" else "sweep's files")
    assert (tmp_path / "notes").read_text() == "mine\n"


def test_version_names_vae_cli(tmp_path):
    from importlib.metadata import version

    for exe in ("vae-train", "vae-eval"):
        result = run_cli("--version", cwd=tmp_path, exe=shutil.which(exe))
        assert result.returncode == 0 and result.stdout.startswith(f"vae-cli {version('vae-cli')} (Hydra "), result


def test_each_command_runs_as_python_dash_m_of_its_module(tmp_path):
    """python -m vae_cli.cli (a venv's python without its scripts on PATH) is vae-train, not a silent no-op."""
    for module, exe, args in (("cli", "vae-train", ["--version"]), ("eval_cli", "vae-eval", ["--version"]),
                              ("sweep", "vae-sweep", ["--help"])):
        ran = subprocess.run([sys.executable, "-m", f"vae_cli.{module}", *args], cwd=tmp_path, capture_output=True,
                             text=True, timeout=120)
        expected = run_cli(*args, cwd=tmp_path, exe=shutil.which(exe))
        assert ran.returncode == 0 and ran.stdout == expected.stdout and "vae-" in ran.stdout, (ran, expected)


@pytest.mark.parametrize("override,shown", [
    ("objective={metric:val/kl}", "metric: val/kl"),  # Hydra merges a dict into the node of settings
    ("checkpoint={every_minutes:1}", "every_minutes: 1"),
    ("+experiment=[burda_mlp]", "epochs: 3280"),  # Hydra's list of a group's options
    ("experiment=[burda_mlp,categorical_reinforce]", "batch_size: 100"),
])
def test_what_hydra_takes_for_a_node_or_a_group_is_still_taken(override, shown, tmp_path):
    """The checks of objective=val/elbo and model=[1,2] above refused these valid forms (a code review)."""
    result = run_cli("--cfg", "job", override, cwd=tmp_path)
    assert result.returncode == 0 and shown in result.stdout, result.stderr


def test_help_after_a_bad_override_is_one_line_and_m_may_follow_the_overrides(tmp_path):
    """--help composes the overrides outside a task: a mistyped one gave Hydra's traceback, exit 1; and
    `vae-train KEY=VALUE -m ...` gave argparse's whole usage text (a user review)."""
    for args, words in ((("likelihood=gausian", "--help"), "did you mean likelihood=gaussian?"),
                        (("epoch=3", "--help"), "epoch=3: vae-train's config has no key epoch; did you mean epochs?")):
        result = run_cli(*args, cwd=tmp_path)
        assert result.returncode == 2 and words in one_error_line(result), result.stderr
    result = run_cli(*SMOKE, "-m", "seed=0,1", "hydra.sweep.dir=sweep", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in (tmp_path / "sweep").iterdir() if p.is_dir()) == ["0", "1"]


def test_hydra_usage_error_before_the_task_is_one_line(tmp_path):
    result = run_cli("-m", "beta=1,2", "--cfg", "job", cwd=tmp_path)  # Hydra raises a ValueError for it
    assert result.returncode == 2 and "Only one of --run, --multirun, --cfg" in one_error_line(result)


@pytest.mark.parametrize("swept", ["objective.metric=val/elbo,val/kl", "objective.direction=choice(maximize,minimize)",
                                   "hydra.sweeper.params.objective.metric=val/elbo,val/kl"])
def test_a_sweep_over_its_own_objective_is_refused_before_it_starts(swept, tmp_path):
    """Its jobs would be ranked, in one table and by one sampler, by different figures or directions."""
    result = run_cli("-m", *SMOKE, swept, cwd=tmp_path)
    assert result.returncode == 2 and one_error_line(result).startswith(f"error: {swept}: a sweep ranks its jobs "
                                                                        "by one objective")
    assert not (tmp_path / "outputs").exists()


def test_a_sweep_refused_before_its_first_job_leaves_no_sweep_folder(tmp_path):
    """A typo in a swept key: Hydra had made outputs/multirun/<date>/<time> with only multirun.yaml in it,
    an empty sweep to be taken for a real one. It goes, with the folders made for it. A folder that was
    there before (a re-run into hydra.sweep.dir) stays as it was: its multirun.yaml had been overwritten
    with the mistyped command, and its record of refused jobs deleted; an empty one got a stray
    multirun.yaml."""
    (tmp_path / "outputs").mkdir()
    result = run_cli("-m", *SMOKE, "optimizer.lrr=1e-3,1e-2", cwd=tmp_path)
    assert result.returncode == 2 and "did you mean optimizer.lr?" in one_error_line(result)
    assert list((tmp_path / "outputs").iterdir()) == []
    kept = tmp_path / "sweep"
    kept.mkdir()
    files = {"multirun.yaml": "an earlier command's\n", ".refused-job-1.json": "job: 1\n"}
    for name, text in files.items():
        (kept / name).write_text(text)
    result = run_cli("-m", *SMOKE, "data=fashion,mnist", f"hydra.sweep.dir={kept}", cwd=tmp_path)
    assert result.returncode == 2 and "data=fashion: no option" in one_error_line(result)
    assert {p.name: p.read_text() for p in kept.iterdir()} == files
    empty = tmp_path / "empty"
    empty.mkdir()
    result = run_cli("-m", *SMOKE, "optimizer.lrr=1e-3,1e-2", f"hydra.sweep.dir={empty}", cwd=tmp_path)
    assert result.returncode == 2 and list(empty.iterdir()) == []


def test_a_bad_value_on_a_full_disk_is_still_one_line(tmp_path):
    """A bad value in a fresh folder is recorded in its status.json for a sweep's summary; when that write
    fails too (a full disk), the bad value's own line is what the user reads, exit 2, no traceback."""
    script = textwrap.dedent(f"""
        import errno, sys
        from vae_cli import cli, run_state

        def full(self, **changes):
            raise OSError(errno.ENOSPC, "No space left on device")

        run_state.Status.update = full
        sys.argv = ["vae-train", *{list(SMOKE)!r}, "likelihood=gaussian", "likelihood.scale=wobbly",
                    "hydra.run.dir=run"]
        cli.main()
    """)
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 2, result.stderr
    line = one_error_line(result)
    assert "likelihood.scale='wobbly' is not accepted" in line, line
    assert not (tmp_path / "run" / "status.json").exists()
