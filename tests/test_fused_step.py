"""The training steps: the hand-written gradient against autograd's, whole steps (with Adam, clipping)
against AutogradStep, and which step train_step=auto|fused|autograd picks where."""
import pytest
import torch

from conftest import compose_config
from vae_cli.build import build_estimator, build_model
from vae_cli.errors import ConfigError
from vae_cli.estimators.fused_reparam import unsupported_reason
from vae_cli.estimators.terms import TERM_NAMES
from vae_cli.estimators.train_step import AutogradStep, FusedReparamStep, make_train_step
from vae_cli.train import train

GRADIENT_CASES = [
    ["model.hidden_sizes=[50]"],  # pytorch/examples' shape: ReLU, one hidden layer
    ["model.hidden_sizes=[40,30]", "model.activation=tanh", "beta=0.7"],  # Burda's: tanh, two layers
    ["model.hidden_sizes=[20,20,20]", "beta=0"],
    ["likelihood=gaussian", "likelihood.sigma=0.3"],  # learned sigma: its gradient too
    ["likelihood=gaussian", "likelihood.scale=fixed", "likelihood.sigma=0.2", "model.activation=tanh"],
]


def model_and_batch(overrides, dtype, data_dim=30, batch=16):
    cfg = compose_config("data=synthetic", "model.latent_dim=5", *overrides)
    torch.manual_seed(0)
    model = build_model(cfg, data_dim).to(dtype)
    x = torch.rand(batch, data_dim, dtype=dtype)  # intensities: the Gaussian's data
    if "likelihood=gaussian" not in overrides:
        x = (x < 0.4).to(dtype)
    return cfg, model, x


def autograd_and_fused(overrides, dtype=torch.float64, block=False):
    """Gradients and term means of one step on one batch, by autograd and by the fused step, with the
    same eps (both draw it from the global generator after the same seed); block: the fused step gets
    x as the loop hands it out, a batch sliced from a block of batches (a view with an offset)."""
    cfg, model, x = model_and_batch(overrides, dtype)
    estimator = build_estimator(cfg, model)
    torch.manual_seed(1)
    terms = estimator(model, x, cfg.beta)
    terms.surrogate.backward()
    reference = {name: p.grad.clone() for name, p in model.named_parameters()}
    reference_means = terms.stacked_means()
    for p in model.parameters():
        p.grad = torch.full_like(p, float("nan"))  # the fused step must overwrite every entry
    torch.manual_seed(1)
    step = FusedReparamStep(model, torch.optim.SGD(model.parameters(), lr=0.1), cfg.beta)
    means = step.gradients(torch.stack([x + 1, x, x - 1])[1] if block else x)
    return reference, reference_means, {name: p.grad for name, p in model.named_parameters()}, means


@pytest.mark.parametrize("overrides", GRADIENT_CASES)
@pytest.mark.parametrize("block", [False, True])
def test_fused_gradient_and_terms_equal_autograd_in_float64(overrides, block):
    reference, reference_means, grads, means = autograd_and_fused(overrides, block=block)
    assert grads.keys() == reference.keys()
    for name, grad in grads.items():
        assert torch.allclose(grad, reference[name], rtol=1e-10, atol=1e-14), name
        assert reference[name].abs().max() > 1e-4  # a real gradient, not zeros on both sides
    assert torch.allclose(means, reference_means, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("overrides", GRADIENT_CASES)
def test_fused_gradient_and_terms_equal_autograd_in_float32(overrides):
    """Float32 rounding only: each gradient within 1e-4 of its largest entry, terms within 1e-5."""
    reference, reference_means, grads, means = autograd_and_fused(overrides, dtype=torch.float32)
    for name, grad in grads.items():
        scale = reference[name].abs().max()
        assert (grad - reference[name]).abs().max() <= 1e-4 * scale, name
        assert scale > 1e-4
    assert torch.allclose(means, reference_means, rtol=1e-5, atol=1e-4)


def two_steppers(overrides, make_optimizer, dtype, clip=None):
    """(fused, autograd): FusedReparamStep and AutogradStep on two copies of one model, each with its
    own optimizer made by make_optimizer."""
    cfg, model, _ = model_and_batch(overrides, dtype)
    _, twin, _ = model_and_batch(overrides, dtype)
    fused = FusedReparamStep(model, make_optimizer(model.parameters()), cfg.beta, clip)
    autograd = AutogradStep(twin, build_estimator(cfg, twin), make_optimizer(twin.parameters()), cfg.beta, clip)
    return fused, autograd


def run_steps(stepper, dtype, num_steps=6, data_dim=30, batch=16, binary=True):
    """num_steps steps on fixed batches (eps from the global generator, seeded per step); the lr is
    halved before step 3, as a scheduler would. Returns the stacked term means of every step."""
    batches = torch.Generator().manual_seed(2)
    means = []
    for i in range(num_steps):
        x = torch.rand(batch, data_dim, generator=batches, dtype=dtype)
        x = (x < 0.4).to(dtype) if binary else x
        if i == 3:
            stepper.optimizer.param_groups[0]["lr"] *= 0.5
        torch.manual_seed(10 + i)
        means.append(stepper(x))
    return torch.stack(means)


OPTIMIZER_CASES = [
    ([], lambda params: torch.optim.Adam(params, lr=1e-2, fused=True)),  # vae-cli's default, built fused
    (["model.activation=tanh", "beta=0.5"],
     lambda params: torch.optim.Adam(params, lr=1e-2, eps=1e-4, amsgrad=True, weight_decay=0.1)),
    (["likelihood=gaussian"], lambda params: torch.optim.AdamW(params, lr=1e-2, betas=(0.8, 0.9), fused=True)),
    ([], lambda params: torch.optim.SGD(params, lr=0.1, momentum=0.9)),
]


@pytest.mark.parametrize("overrides, make_optimizer", OPTIMIZER_CASES)
@pytest.mark.parametrize("dtype, tolerance", [(torch.float64, 1e-9), (torch.float32, 2e-4)])
def test_fused_step_trains_like_the_autograd_step(overrides, make_optimizer, dtype, tolerance):
    """Whole steps (gradient, optimizer.step()) give the same terms, parameters and optimizer state."""
    fused, autograd = two_steppers(overrides, make_optimizer, dtype)
    initial = [p.detach().clone() for p in fused.optimizer.param_groups[0]["params"]]
    binary = "likelihood=gaussian" not in overrides
    fused_means = run_steps(fused, dtype, binary=binary)
    autograd_means = run_steps(autograd, dtype, binary=binary)
    assert fused_means.shape == (6, len(TERM_NAMES))
    assert torch.allclose(fused_means, autograd_means, rtol=tolerance, atol=tolerance)
    params = fused.optimizer.param_groups[0]["params"]
    for p, q, p0 in zip(params, autograd.optimizer.param_groups[0]["params"], initial):
        assert torch.allclose(p, q, rtol=tolerance, atol=tolerance)
        assert (p - p0).abs().max() > 10 * tolerance  # every parameter moved: the comparison can fail
        fused_state, autograd_state = fused.optimizer.state[p], autograd.optimizer.state[q]
        assert fused_state.keys() == autograd_state.keys() and len(fused_state) > 0
        for key in fused_state:
            assert torch.allclose(fused_state[key], autograd_state[key], rtol=tolerance, atol=tolerance)
    assert fused.extras() == {} and autograd.extras() == {} and fused.grad_norm is None


def test_clipping_equals_torchs_and_records_the_norm_before_clipping():
    """The total gradient norm before clipping is recorded, and the gradients are scaled to norm
    max_norm as torch.nn.utils.clip_grad_norm_ scales them, identically in both steps: with SGD at lr 1 the new
    parameters are the old ones minus the clipped gradient."""
    dtype, max_norm = torch.float64, 0.05
    fused, autograd = two_steppers([], lambda params: torch.optim.SGD(params, lr=1.0), dtype, clip=max_norm)
    initial = [p.detach().clone() for p in fused.optimizer.param_groups[0]["params"]]
    x = (torch.rand(16, 30, generator=torch.Generator().manual_seed(3), dtype=dtype) < 0.4).to(dtype)
    torch.manual_seed(4)
    fused.gradients(x)  # the unclipped gradient, parameters untouched
    unclipped = [p.grad.clone() for p in fused.optimizer.param_groups[0]["params"]]
    norm = torch.linalg.vector_norm(torch.cat([g.flatten() for g in unclipped]))
    assert norm > 10 * max_norm  # clipping really scales
    for stepper in (fused, autograd):
        torch.manual_seed(4)
        stepper(x)
        assert torch.allclose(stepper.grad_norm, norm, rtol=1e-10)
        assert torch.equal(stepper.extras()["grad_norm"], stepper.grad_norm)
        for p, p0, grad in zip(stepper.optimizer.param_groups[0]["params"], initial, unclipped):
            # torch's coefficient: max_norm / (norm + 1e-6) (torch.nn.utils.clip_grad_norm_'s documentation)
            assert torch.allclose(p, p0 - grad * (max_norm / (norm + 1e-6)), rtol=1e-10, atol=1e-14)


def test_make_train_step_picks_the_hand_written_step_on_the_cpu_only():
    cfg, model, _ = model_and_batch([], torch.float32)
    estimator = build_estimator(cfg, model)
    optimizer = torch.optim.Adam(model.parameters())
    make = lambda choice, device: make_train_step(choice, model, estimator, optimizer, 1.0, device)
    assert type(make("auto", torch.device("cpu"))) is FusedReparamStep
    assert make("auto", "cpu").name == "fused" and make("fused", "cpu").name == "fused"
    assert type(make("autograd", "cpu")) is AutogradStep and make("autograd", "cpu").name == "autograd"
    for device in ("cuda", "cuda:1", "mps"):  # device strings only: no accelerator is needed
        assert type(make("auto", device)) is AutogradStep
        with pytest.raises(ConfigError, match="train_step=fused cannot train this model") as err:
            make("fused", device)
        assert "CPU only" in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("overrides, reason", [
    (["likelihood=gaussian", "likelihood.scale=optimal"], "likelihood=bernoulli, or likelihood=gaussian"),
    (["likelihood=continuous_bernoulli"], "likelihood=bernoulli, or likelihood=gaussian"),
    (["estimator.num_samples=2"], "num_samples=1"),
    (["latent.kl=monte_carlo"], "latent.kl=analytic"),
    (["model.activation=elu"], "model.activation"),
    (["latent=categorical"], "estimator=reparam"),
])
def test_fused_step_refuses_what_it_does_not_compute(overrides, reason):
    cfg = compose_config("data=synthetic", *overrides)
    model = build_model(cfg, 30)
    estimator = build_estimator(cfg, model)
    optimizer = torch.optim.Adam(list(model.parameters()) + list(estimator.parameters()))
    assert reason in unsupported_reason(model, estimator)
    with pytest.raises(ConfigError, match="train_step=fused cannot train this model") as err:
        make_train_step("fused", model, estimator, optimizer, 1.0, "cpu")
    assert reason in str(err.value) and "\n" not in str(err.value)
    assert type(make_train_step("auto", model, estimator, optimizer, 1.0, "cpu")) is AutogradStep


def test_a_subclass_of_the_model_is_trained_through_autograd():
    """docs/extending.md's way to a model of one's own, a subclass of VAE: one whose decode() adds a learned
    offset was given the fused step, whose hand-written gradient left the offset at its start (a user review)."""
    from vae_cli.model import VAE

    class OffsetVAE(VAE):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.offset = torch.nn.Parameter(torch.full((30,), -3.0))

        def decode(self, z):
            return super().decode(z) + self.offset.unsqueeze(-1)

    cfg = compose_config("data=synthetic")
    plain = build_model(cfg, 30)
    model = OffsetVAE(30, plain.latent, plain.likelihood, [8], "relu", cfg.model.latent_dim)
    estimator = build_estimator(cfg, model)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.1)
    assert unsupported_reason(plain, estimator) is None
    assert "not that of its subclass OffsetVAE" in unsupported_reason(model, estimator)
    step = make_train_step("auto", model, estimator, optimizer, 1.0, "cpu")
    assert type(step) is AutogradStep
    step((torch.rand(16, 30) < 0.5).float())
    assert (model.offset.detach() != -3.0).all()  # Adam's first step moves every entry with a gradient by ~lr


@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian"])
def test_fused_training_matches_autograd_training(likelihood, smoke_cfg, tmp_path):
    """Whole runs through train(): same draws, same updates; only float32 rounding differs."""
    fused = train(smoke_cfg("train_step=fused", f"likelihood={likelihood}", "~eval"), tmp_path / "fused")
    autograd = train(smoke_cfg("train_step=autograd", f"likelihood={likelihood}", "~eval"), tmp_path / "autograd")
    for key in ("test/elbo", "test/recon", "test/kl", "val/elbo", "val/entropy"):
        assert fused[key] == pytest.approx(autograd[key], rel=1e-4, abs=1e-4), key
    other_seed = train(smoke_cfg("train_step=fused", f"likelihood={likelihood}", "~eval", "seed=1"), tmp_path / "s1")
    assert abs(fused["test/elbo"] - other_seed["test/elbo"]) > 1e-2  # the agreement above is not chance
    assert "train_step_used: fused" in (tmp_path / "fused" / "config.yaml").read_text()
    assert "train_step_used: autograd" in (tmp_path / "autograd" / "config.yaml").read_text()
