"""The hand-written training step against autograd: the same gradients, terms and training."""
import pytest
import torch

from conftest import compose_config
from vae_cli.build import build_estimator, build_model
from vae_cli.errors import ConfigError
from vae_cli.estimators.fused_reparam import FusedReparamStep, unsupported_reason
from vae_cli.layerwise_adam import LayerwiseAdam
from vae_cli.likelihoods import feature_major
from vae_cli.train import train


def in_layout(x: torch.Tensor, layout: str) -> torch.Tensor:
    """x itself, x stored feature-major, or x as train() hands it out: one batch of a block (3, B, D)
    stored feature-major (a view with an offset into the block)."""
    if layout == "block":
        return feature_major(torch.stack([x + 1, x, x - 1]))[1]
    return feature_major(x) if layout == "feature_major" else x


def autograd_and_fused(overrides, data_dim=30, batch=16, layout="rows"):
    """Gradients and term means of one step on one batch, by autograd and by the fused step, in float64
    and with the same eps (both draw it from the global generator after the same seed); the fused step
    is given x in_layout(x, layout)."""
    cfg = compose_config("data=synthetic", "model.latent_dim=5", *overrides)
    torch.manual_seed(0)
    model = build_model(cfg, data_dim).double()
    estimator = build_estimator(cfg, model)
    x = torch.rand(batch, data_dim, dtype=torch.float64)  # intensities: the Gaussian's data
    if "likelihood=gaussian" not in overrides:
        x = (x < 0.4).double()
    torch.manual_seed(1)
    terms = estimator(model, x, cfg.beta)
    terms.surrogate.backward()
    reference = {name: p.grad.clone() for name, p in model.named_parameters()}
    reference_means = terms.stacked_means()
    for p in model.parameters():
        p.grad = torch.full_like(p, float("nan"))  # the fused step must overwrite every entry
    torch.manual_seed(1)
    means = FusedReparamStep(model, cfg.beta)(in_layout(x, layout))
    return reference, reference_means, {name: p.grad for name, p in model.named_parameters()}, means


@pytest.mark.parametrize("overrides", [
    ["model.hidden_sizes=[50]"],  # pytorch/examples' shape: ReLU, one hidden layer
    ["model.hidden_sizes=[40,30]", "model.activation=tanh", "beta=0.7"],  # Burda's: tanh, two layers
    ["model.hidden_sizes=[20,20,20]", "beta=0"],
    ["likelihood=gaussian", "likelihood.sigma=0.3"],  # learned sigma: its gradient too
    ["likelihood=gaussian", "likelihood.scale=fixed", "likelihood.sigma=0.2", "model.activation=tanh"],
])
@pytest.mark.parametrize("layout", ["rows", "feature_major", "block"])
def test_fused_gradient_and_terms_equal_autograd(overrides, layout):
    reference, reference_means, grads, means = autograd_and_fused(overrides, layout=layout)
    assert grads.keys() == reference.keys()
    for name, grad in grads.items():
        assert torch.allclose(grad, reference[name], rtol=1e-10, atol=1e-14), name
        assert reference[name].abs().max() > 1e-4  # a real gradient, not zeros on both sides
    assert torch.allclose(means, reference_means, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian"])
def test_fused_training_matches_autograd_training(likelihood, smoke_cfg, tmp_path):
    """Whole runs: same draws, same updates; only float32 rounding differs between the two."""
    fused = train(smoke_cfg("train_step=fused", f"likelihood={likelihood}", "~eval"), tmp_path / "fused")
    autograd = train(smoke_cfg("train_step=autograd", f"likelihood={likelihood}", "~eval"), tmp_path / "autograd")
    for key in ("test/elbo", "test/recon", "test/kl", "val/elbo", "val/entropy"):
        assert fused[key] == pytest.approx(autograd[key], rel=1e-4, abs=1e-4), key
    other_seed = train(smoke_cfg("train_step=fused", f"likelihood={likelihood}", "~eval", "seed=1"), tmp_path / "s1")
    assert abs(fused["test/elbo"] - other_seed["test/elbo"]) > 1e-2  # the agreement above is not chance
    assert "train_step_used: fused" in (tmp_path / "fused" / "config.yaml").read_text()
    assert "train_step_used: autograd" in (tmp_path / "autograd" / "config.yaml").read_text()


@pytest.mark.parametrize("overrides, reason", [
    (["likelihood=gaussian", "likelihood.scale=optimal"], "likelihood=bernoulli, or likelihood=gaussian"),
    (["likelihood=continuous_bernoulli"], "likelihood=bernoulli, or likelihood=gaussian"),
    (["estimator.num_samples=2"], "num_samples=1"),
    (["latent.kl=monte_carlo"], "latent.kl=analytic"),
    (["model.activation=elu"], "model.activation"),
    (["latent=categorical"], "estimator=reparam"),
])
def test_fused_step_refuses_what_it_does_not_compute(overrides, reason, smoke_cfg, tmp_path):
    cfg = compose_config("data=synthetic", *overrides)
    model = build_model(cfg, 30)
    assert reason in unsupported_reason(model, build_estimator(cfg, model))
    with pytest.raises(ConfigError, match="train_step=fused cannot train this model") as err:
        train(smoke_cfg("train_step=fused", *overrides), tmp_path)
    assert reason in str(err.value) and "\n" not in str(err.value)
    train(smoke_cfg("train_step=auto", "max_steps=2", "~eval", *overrides), tmp_path / "auto")
    assert "train_step_used: autograd" in (tmp_path / "auto" / "config.yaml").read_text()


def fused_steps(overrides, make_optimizer, layerwise: bool, num_steps=6, data_dim=30, batch=16, between=None):
    """Parameters and optimizer state after num_steps fused steps in float32, the optimizer's update
    taken inside the step (layerwise) or by optimizer.step() after it. Before step 3 the lr is halved,
    as a scheduler would; between(optimizer, i), if given, runs before each step i."""
    cfg = compose_config("data=synthetic", "model.latent_dim=5", "model.hidden_sizes=[20,10]", *overrides)
    torch.manual_seed(0)
    model = build_model(cfg, data_dim)
    optimizer = make_optimizer(model.parameters())
    step = FusedReparamStep(model, cfg.beta, optimizer if layerwise else None)
    batches = torch.Generator().manual_seed(2)
    for i in range(num_steps):
        x = torch.rand(batch, data_dim, generator=batches)
        if "likelihood=gaussian" not in overrides:
            x = (x < 0.4).float()
        if i == 3:
            optimizer.param_groups[0]["lr"] *= 0.5
        if between is not None:
            between(optimizer, i)
        step(x)
        if not layerwise:
            optimizer.step()
    state = [t for p in model.parameters() for t in optimizer.state[p].values()]
    return list(model.parameters()), state, step


def assert_same_training(layerwise_run, reference_run):
    (params, state, _), (reference_params, reference_state, _) = layerwise_run, reference_run
    assert len(state) == len(reference_state) >= len(params)  # each parameter has state
    for p, reference in zip(params + state, reference_params + reference_state):
        assert torch.equal(p, reference)


@pytest.mark.parametrize("overrides, make_optimizer", [
    ([], lambda params: torch.optim.Adam(params, lr=1e-2, fused=True)),
    (["model.activation=tanh", "beta=0.5"],
     lambda params: torch.optim.Adam(params, lr=1e-2, eps=1e-4, amsgrad=True, weight_decay=0.1, fused=True)),
    (["likelihood=gaussian"],
     lambda params: torch.optim.AdamW(params, lr=1e-2, betas=(0.8, 0.9), fused=True)),
    ([], lambda params: torch.optim.Adam(params, lr=1e-2, maximize=True, fused=True)),
])
def test_adam_a_layer_at_a_time_is_optimizer_step_bit_for_bit(overrides, make_optimizer, monkeypatch):
    updates = []
    layer_step = LayerwiseAdam.step
    monkeypatch.setattr(LayerwiseAdam, "step", lambda self, params: updates.append(len(params)) or
                        layer_step(self, params))
    run = fused_steps(overrides, make_optimizer, layerwise=True)
    # the path under test was taken: steps 2-6, each of the 6 layers (then a learned sigma) on its own
    assert updates == ([2] * 6 + [1] * ("likelihood=gaussian" in overrides)) * 5
    assert_same_training(run, fused_steps(overrides, make_optimizer, layerwise=False))
    initial = fused_steps(overrides, make_optimizer, layerwise=True, num_steps=0)[0]
    assert all(not torch.equal(p, p0) for p, p0 in zip(run[0], initial))  # every parameter moved


def test_adam_a_layer_at_a_time_follows_a_reloaded_optimizer_and_runs_its_hooks():
    """load_state_dict replaces the optimizer's group (here with another lr); a step hook added later
    is run on every step (optimizer.step() takes those steps)."""
    calls = []
    def between(optimizer, i):
        if i == 2:
            state = optimizer.state_dict()
            state["param_groups"][0]["lr"] = 0.003
            optimizer.load_state_dict(state)
        if i == 4:
            optimizer.register_step_post_hook(lambda *args: calls.append(i))
    make_optimizer = lambda params: torch.optim.Adam(params, lr=1e-2, fused=True)
    run = fused_steps([], make_optimizer, layerwise=True, between=between)
    assert calls == [4, 4]  # steps 5 and 6
    reference = fused_steps([], make_optimizer, layerwise=False, between=between)
    assert_same_training(run, reference)


def two_groups(params: list) -> torch.optim.Optimizer:
    return torch.optim.Adam([{"params": params[:2]}, {"params": params[2:]}], lr=1e-2, fused=True)


@pytest.mark.parametrize("make_optimizer, reason", [
    (lambda params: torch.optim.SGD(params, lr=0.1, momentum=0.9), "Adam or AdamW"),
    (lambda params: torch.optim.Adam(params, lr=1e-2, foreach=True), "fused=True"),
    (lambda params: two_groups(list(params)), "one parameter group"),
])
def test_other_optimizers_step_after_the_fused_backward(make_optimizer, reason):
    run = fused_steps([], make_optimizer, layerwise=True)
    assert run[2].layerwise is None and reason in LayerwiseAdam.unsupported_reason(run[2].optimizer)
    assert len(run[2].optimizer.param_groups[-1]["params"]) > 2  # every parameter in some group
    assert_same_training(run, fused_steps([], make_optimizer, layerwise=False))
