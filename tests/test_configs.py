"""Every option of every config group composes and instantiates; bad keys and values fail clearly."""
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from conftest import compose_config, run_cli
from vae_cli.build import build_estimator, build_model, build_optimizer
from vae_cli.config_keys import known_keys, unknown_key_line
from vae_cli.errors import ConfigError
from vae_cli.likelihoods import Bernoulli, pixel_levels
from vae_cli.train import train

CONFIGS = Path(__file__).parents[1] / "configs"
GROUPS = sorted(p.name for p in CONFIGS.iterdir() if p.is_dir() and p.name != "hydra")  # hydra/: Hydra's own


# Options that pair only with some others: estimators of categorical latents (exact: a small one).
NEEDS = {("estimator", "exact"): ["latent=categorical", "model.latent_dim=2"],
         ("estimator", "gumbel_softmax"): ["latent=categorical"],
         ("estimator", "straight_through"): ["latent=categorical"]}


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONFIGS / group).glob("*.yaml"))


def test_every_group_has_options():
    assert {"data", "likelihood", "latent", "estimator", "model", "optimizer", "debug",
            "experiment"} <= set(GROUPS)
    assert all(options(g) for g in GROUPS)


def composed_keys(cfg, prefix=""):
    for key, value in cfg.items_ex(resolve=False):
        yield prefix + key
        if isinstance(value, DictConfig):
            yield from composed_keys(value, f"{prefix}{key}.")


@pytest.mark.parametrize("group,option", [(g, o) for g in GROUPS for o in options(g)])
def test_known_keys_hold_every_key_hydra_composes(group, option):
    """The keys vae_cli.config_keys reads from the YAML files (for the error line of a mistyped key) hold
    those Hydra composes, option by option."""
    composed = composed_keys(compose_config(f"{group}={option}", *NEEDS.get((group, option), [])))
    assert set(composed) <= set(known_keys())


def test_known_keys_name_the_option_defining_a_key():
    known = known_keys()
    assert known["likelihood.scale"] == {"likelihood=gaussian"} and "train.yaml" in known["epochs"]
    assert known["likelihood.dequantize"] == {"likelihood=gaussian", "likelihood=continuous_bernoulli"}
    assert known_keys("eval")["eval.num_samples"] == {"eval=full", "eval=light"} and "epochs" not in known_keys("eval")


def test_a_key_without_its_group_is_matched_by_its_last_part():
    assert "did you mean optimizer.lr?" in unknown_key_line("lr", "lr=0.01")
    assert "did you mean estimator.num_samples or eval.num_samples?" in unknown_key_line("num_samples", "num_samples=4")
    assert "did you mean eval.num_samples?" in unknown_key_line("num_samples", "num_samples=4", "eval")
    assert "did you mean epochs?" in unknown_key_line("epoch", "epoch=3")  # no key ends so: the near spelling


@pytest.mark.parametrize("group,option", [(g, o) for g in GROUPS for o in options(g)])
def test_option_composes_and_instantiates(group, option, tmp_path, monkeypatch):
    monkeypatch.setenv("VAE_CLI_CACHE", str(tmp_path))  # no cached data: the offline paths
    cfg = compose_config(f"{group}={option}", *NEEDS.get((group, option), []), "data.download=false" if option in ("mnist", "fashion_mnist") else "seed=0")
    data_dim = 64
    if group == "data":
        if option == "fashion_mnist" and not Path("/usr/share/datasets/fashion-mnist").is_dir():
            with pytest.raises(ConfigError, match="fashion"):
                instantiate(cfg.data)
            return
        data = instantiate(cfg.data)
        assert data.train_x.dtype == torch.uint8 and data.train_x.shape[1] == data.data_dim
        data_dim = data.data_dim
    model = build_model(cfg, data_dim)
    estimator = build_estimator(cfg, model)
    optimizer = build_optimizer(cfg, model.parameters(), torch.device("cpu"))
    x = model.likelihood.prepare(torch.rand(3, data_dim))
    terms = estimator(model, x, cfg.beta)
    assert torch.isfinite(terms.loss).all() and terms.loss.shape == (3,)
    assert torch.allclose(terms.elbo, terms.recon - terms.kl)
    assert optimizer.param_groups[0]["lr"] == cfg.optimizer.lr


def test_default_model_is_pytorch_examples_vae():
    model = build_model(compose_config(), 784)
    sizes = [(m.in_features, m.out_features) for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert sizes == [(784, 400), (400, 40), (20, 400), (400, 784)]
    cfg = compose_config()
    assert (cfg.batch_size, cfg.epochs, cfg.optimizer.lr) == (128, 10, 1e-3)


def test_burda_experiment_overrides_only_what_differs():
    cfg = compose_config("experiment=burda_mlp")
    model = build_model(cfg, 784)
    sizes = [m.out_features for m in model.encoder if isinstance(m, torch.nn.Linear)]
    assert sizes == [200, 200, 100] and isinstance(model.encoder[1], torch.nn.Tanh)
    assert (cfg.batch_size, cfg.optimizer.eps, cfg.optimizer.lr) == (20, 1e-4, 1e-3)


@pytest.mark.parametrize("override,key", [
    ("likelihood.sigma=-1", "likelihood.sigma"),
    ("likelihood.binarize=sometimes", "likelihood.binarize"),
    ("latent.kl=guess", "latent.kl"),
    ("model.activation=swish", "model.activation"),
    ("device=tpu", "device"),
    ("batch_size=0", "batch_size"),
    ("batch_size=1.5", "batch_size"),
    ("epochs=abc", "epochs"),
    ("seed=abc", "seed"),
    ("beta=abc", "beta"),
    ("max_steps=0", "max_steps"),
    ("num_images=1", "num_images"),
    ("diagnostics.num_estimates=1", "diagnostics.num_estimates"),
    ("optimizer.lr=-1", "optimizer"),
    ("model.hidden_sizes=abc", "model.hidden_sizes"),
    ("model.hidden_sizes=[0]", "model.hidden_sizes"),
    ("likelihood.min_log_scale=abc", "likelihood.min_log_scale"),
    ("estimator.num_samples=two", "estimator.num_samples"),
    ("train_step=sometimes", "train_step"),
])
def test_bad_value_is_a_config_error_naming_the_key(override, key, smoke_cfg, tmp_path):
    extra = ["likelihood=gaussian"] if override.startswith("likelihood.") and "binarize" not in override else []
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")) as err:
        train(smoke_cfg(*extra, override), tmp_path)
    assert "\n" not in str(err.value)


def test_bernoulli_on_non_binary_data_says_how_to_fix(smoke_cfg, tmp_path):
    with pytest.raises(ConfigError, match="binarize=dynamic"):
        train(smoke_cfg("likelihood.binarize=none"), tmp_path)


def test_non_binary_pixels_are_found_in_any_image_of_any_split():
    images = torch.zeros(5000, 4, dtype=torch.uint8)
    images[::2] = 255
    test = images[:3].clone()
    test[-1, -1] = 128  # one grey pixel, in the last test image
    levels = pixel_levels(images, images[:0], test)
    assert torch.equal(levels, torch.tensor([0, 128, 255], dtype=torch.uint8).float() / 255)
    Bernoulli(binarize="none").check_data(images, images[:0], images[:3])  # binary: fine
    with pytest.raises(ConfigError, match="binarize=dynamic"):
        Bernoulli(binarize="none").check_data(images, images[:0], test)
    Bernoulli(binarize="dynamic").check_data(images, images[:0], test)  # binarized: any levels


@pytest.mark.skipif(torch.cuda.is_available(), reason="this check needs a machine without CUDA")
def test_cuda_without_a_gpu_is_a_clear_error(smoke_cfg, tmp_path):
    with pytest.raises(ConfigError, match="device='cuda'.*device=auto or device=cpu"):
        train(smoke_cfg("device=cuda"), tmp_path)


def test_cli_mistyped_key_fails_with_the_key_named(tmp_path):
    result = run_cli("debug=smoke", "epoch=3", cwd=tmp_path)
    assert result.returncode != 0
    assert result.stderr.startswith("error: epoch=3: vae-train's config has no key epoch; did you mean epochs?")
    assert not (tmp_path / "outputs").exists() or not any((tmp_path / "outputs").rglob("*.pt"))


def test_cli_bad_value_is_one_line_and_exit_2(tmp_path):
    result = run_cli("debug=smoke", "likelihood.scale=wobbly", "likelihood=gaussian", cwd=tmp_path)
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert lines == ["error: likelihood.scale='wobbly' is not accepted; use one of: "
                     "learned, fixed, per_pixel, optimal"]


def test_cli_unknown_option_lists_the_available_ones(tmp_path):
    result = run_cli("debug=smoke", "likelihood=gausian", cwd=tmp_path)
    assert result.returncode != 0
    assert result.stderr.strip().splitlines()[-1] == (
        "error: likelihood=gausian: no option gausian in likelihood; did you mean likelihood=gaussian? (the options "
        "of likelihood are bernoulli, continuous_bernoulli, gaussian)")
