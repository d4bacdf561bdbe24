"""Checkpoints that cannot corrupt: a failed write (an exception, a full disk) leaves the previous file
loadable; loading refuses truncated, foreign and pickled-object files in one line naming the file."""
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from vae_cli.checkpoint import load_checkpoint, save_checkpoint
from vae_cli.errors import ConfigError, WriteError
from vae_cli.training_state import load_best_weights

STATE = {"model": {"w": torch.arange(4.0)}, "config": {"seed": 0}, "step": 7}


def test_an_exception_inside_the_write_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, STATE)
    real_save = torch.save

    def failing(state, f):
        real_save(state, f)  # the new bytes are all written to the temporary file ...
        raise RuntimeError("injected failure")  # ... and then the write fails before the rename

    monkeypatch.setattr(torch, "save", failing)
    with pytest.raises(WriteError, match=r"could not write .*checkpoint.pt \(injected failure\); the earlier one is kept"):
        save_checkpoint(path, {**STATE, "step": 8})
    monkeypatch.undo()
    assert load_checkpoint(path)["step"] == 7
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]  # no temporary file left


FULL_DISK = """
import resource, signal, sys, torch
from vae_cli.checkpoint import load_checkpoint, save_checkpoint
path = sys.argv[1]
save_checkpoint(path, {"model": {"w": torch.zeros(10)}, "config": {}, "step": 1})
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG, as on a full disk
resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, 20_000))
try:
    save_checkpoint(path, {"model": {"w": torch.zeros(100_000)}, "config": {}, "step": 2})
except Exception as err:  # torch's writer reports the short write as a RuntimeError, told as a WriteError
    print("write failed:", type(err).__name__, err)
print("step", load_checkpoint(path)["step"])
"""


def test_a_full_disk_leaves_the_previous_checkpoint(tmp_path):
    path = tmp_path / "checkpoint.pt"
    result = subprocess.run([sys.executable, "-c", FULL_DISK, str(path)], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert "step 1" in result.stdout  # the write fails; the old one stays
    assert "write failed: WriteError could not write" in result.stdout and "Is the disk full?" in result.stdout
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]


@pytest.mark.parametrize("content,message", [
    (lambda p: p.write_bytes(b""), "truncated"),
    (lambda p: p.write_bytes(b"PK\x03\x04 not really a zip"), "truncated, corrupt"),
    (lambda p: p.write_text("junk\n"), "truncated, corrupt"),  # torch's unpickler: KeyError
    (lambda p: p.write_text("hello world\n"), "truncated, corrupt"),
    (lambda p: torch.save({"weights": torch.zeros(2)}, p), "lacks model, config, step"),
    (lambda p: torch.save({**STATE, "model": Path("/etc")}, p), "pickled Python objects"),
])
def test_unreadable_checkpoints_are_one_line_naming_the_file(content, message, tmp_path):
    path = tmp_path / "checkpoint.pt"
    content(path)
    with pytest.raises(ConfigError, match=message) as err:
        load_checkpoint(tmp_path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_a_checkpoint_without_read_permission_is_not_called_corrupt(tmp_path, monkeypatch):
    """It was 'truncated, corrupt or not written by vae-train: rerun the training', for a whole file."""
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, STATE)

    def denied(*args, **kwargs):  # as torch.load of a file chmod 000 (root reads it: faked here)
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(torch, "load", denied)
    with pytest.raises(ConfigError) as err:
        load_checkpoint(path)
    assert str(err.value) == (f"checkpoint {path} cannot be read (permission denied); give this user read access "
                              "to it (e.g. chmod u+r)")


def test_a_truncated_real_checkpoint_is_refused(tmp_path):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, STATE)
    path.write_bytes(path.read_bytes()[:-200])
    with pytest.raises(ConfigError, match="truncated"):
        load_checkpoint(path)


def test_best_pt_at_the_end_of_a_run_unreadable_is_one_line_and_missing_is_the_last_model(tmp_path):
    model = torch.nn.Linear(2, 1)
    save_checkpoint(tmp_path / "best.pt", {**STATE, "model": torch.nn.Linear(2, 1).state_dict()})
    best = {"step": 3, "epoch": 1}
    assert load_best_weights(tmp_path / "best.pt", model, best, 6) == "best (epoch 1, step 3 of 6)"
    assert torch.equal(model.weight, torch.load(tmp_path / "best.pt")["model"]["weight"])
    (tmp_path / "best.pt").write_text("junk\n")
    with pytest.raises(ConfigError, match="best.pt could not be read"):
        load_best_weights(tmp_path / "best.pt", model, best, 6)
    (tmp_path / "best.pt").unlink()
    assert load_best_weights(tmp_path / "best.pt", model, best, 6) == "last (best.pt missing)"


def test_a_state_dict_mismatch_is_named_by_its_first_detail():
    """load_state_dict's first line is only 'Error(s) in loading state_dict for Linear:': the one-line errors
    quoted it, naming nothing."""
    from vae_cli.errors import reason

    with pytest.raises(RuntimeError) as raised:
        torch.nn.Linear(2, 3).load_state_dict(torch.nn.Linear(2, 4).state_dict())
    assert reason(raised.value).startswith("size mismatch for weight: copying a param with shape torch.Size([4, 2])")
    assert reason(RuntimeError("PytorchStreamReader failed reading zip archive: failed finding central directory. "
                               "If you are seeing this error...")) == ("PytorchStreamReader failed reading zip "
                                                                        "archive: failed finding central directory")
