"""Categorical latents: exact KL/entropy identities, the exact estimator, configs, invalid pairs, smoke runs."""
import math

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch.distributions import Independent, OneHotCategorical, kl_divergence

from conftest import compose_config, run_cli
from vae_cli.build import build_estimator, build_model
from vae_cli.checkpoint import load_checkpoint
from vae_cli.errors import ConfigError
from vae_cli.estimators import Exact, Reinforce
from vae_cli.latents import CategoricalLatent
from vae_cli.likelihoods import Bernoulli
from vae_cli.model import VAE
from vae_cli.train import train


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: see conftest.one_thread


def random_latent(prior: str, seed=0):
    torch.manual_seed(seed)
    latent = CategoricalLatent(num_vars=2, num_classes=3, prior=prior).double()
    if prior == "learned":
        with torch.no_grad():
            latent.prior_logits.normal_()
    return latent


@pytest.mark.parametrize("prior", ["uniform", "learned"])
def test_kl_entropy_cross_entropy_equal_sums_over_every_configuration(prior):
    latent = random_latent(prior)
    posterior = latent.posterior(torch.randn(5, 6, dtype=torch.float64) * 2)  # B = 5
    z = latent.enumerate().unsqueeze(1).expand(-1, 5, -1, -1)  # (9, B, V, C)
    log_q, log_p = posterior.log_prob(z), latent.prior().log_prob(z)  # (9, B)
    q = log_q.exp()
    terms = latent.divergence_terms(posterior)
    assert torch.allclose(q.sum(0), torch.ones(5, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(terms["entropy"], -(q * log_q).sum(0), atol=1e-12)  # H = E_q[-log q]
    assert torch.allclose(terms["cross_entropy"], -(q * log_p).sum(0), atol=1e-12)  # CE = E_q[-log p]
    assert torch.allclose(terms["kl"], (q * (log_q - log_p)).sum(0), atol=1e-12)
    assert torch.allclose(terms["kl"], terms["cross_entropy"] - terms["entropy"], atol=1e-12)  # (4)
    reference = Independent(OneHotCategorical(logits=posterior.logits), 1)  # torch.distributions' q
    assert torch.allclose(terms["kl"], kl_divergence(reference, latent.prior()), atol=1e-12)
    assert torch.allclose(log_q, reference.log_prob(z), atol=1e-12)
    assert torch.allclose(posterior.mean, reference.mean, atol=1e-12)
    assert torch.all(terms["kl"] >= 0) and torch.all(terms["entropy"] > 0)
    assert torch.all(terms["entropy"] <= latent.max_entropy()) and latent.max_entropy() == 2 * math.log(3)
    uniform = latent.divergence_terms(latent.posterior(torch.zeros(1, 6, dtype=torch.float64)))
    assert uniform["entropy"].item() == pytest.approx(2 * math.log(3), abs=1e-12)


def test_enumerate_lists_every_configuration_once():
    configurations = CategoricalLatent(num_vars=3, num_classes=4).enumerate()
    assert configurations.shape == (64, 3, 4)
    assert torch.all(configurations.sum(-1) == 1) and len({tuple(c.argmax(-1).tolist()) for c in configurations}) == 64


def test_prior_samples_follow_the_learned_prior():
    latent = random_latent("learned").float()
    z = latent.sample_prior(40_000, torch.Generator().manual_seed(0))  # (N, V, C)
    probs = torch.softmax(latent.prior_logits.detach(), -1)
    stderr = (probs * (1 - probs) / z.shape[0]).sqrt()
    assert torch.all((z.mean(0) - probs).abs() < 4 * stderr)


def test_exact_elbo_is_every_decomposition_and_the_mean_of_reinforce():
    torch.manual_seed(0)
    model = VAE(8, CategoricalLatent(2, 3, prior="learned"), Bernoulli("none"), [6], "tanh", 2).double()
    with torch.no_grad():
        model.latent.prior_logits.normal_()
    x = torch.bernoulli(torch.full((4, 8), 0.4, dtype=torch.float64))
    with torch.no_grad():
        exact = Exact()(model, x)
        posterior = model.posterior(x)
        z = model.latent.enumerate().unsqueeze(1).expand(-1, 4, -1, -1)  # (9, B, V, C)
        q = posterior.log_prob(z).exp()
        joint = model.log_likelihood(x, z) + model.latent.log_prior(z)  # log p(x, z), (9, B)
        assert torch.allclose(exact.elbo, exact.recon - exact.kl)  # (2)
        assert torch.allclose(exact.elbo, (q * joint).sum(0) + exact.entropy, atol=1e-12)  # (3)
        assert torch.allclose(exact.elbo, (q * (joint - posterior.log_prob(z))).sum(0), atol=1e-12)  # (1)
        torch.manual_seed(1)
        sampled = Reinforce(num_samples=1, baseline="none")(model, x.repeat(20_000, 1)).elbo.view(20_000, 4)
    stderr = sampled.std(0) / math.sqrt(sampled.shape[0])
    assert torch.all((sampled.mean(0) - exact.elbo).abs() < 4 * stderr)


def test_latent_categorical_selects_reinforce_and_the_documented_defaults():
    cfg = compose_config("latent=categorical")
    model = build_model(cfg, 784)
    estimator = build_estimator(cfg, model)
    assert (model.latent.num_vars, model.latent.num_classes) == (20, 10)  # Jang et al. (2017)
    assert isinstance(estimator, Reinforce)
    assert (estimator.baseline_name, estimator.num_samples) == ("leave_one_out", 4)
    assert compose_config().estimator._target_.endswith("Reparameterized")  # gaussian keeps reparam
    assert compose_config("latent=categorical", "estimator=exact").estimator._target_.endswith("Exact")


def test_experiment_configs_compose_as_their_headers_say():
    cfg = compose_config("experiment=categorical_reinforce", "estimator.baseline=none")
    model = build_model(cfg, 784)
    estimator = build_estimator(cfg, model)
    assert [m.out_features for m in model.encoder if isinstance(m, torch.nn.Linear)] == [512, 256, 200]
    assert (estimator.baseline_name, estimator.num_samples, cfg.batch_size) == ("none", 4, 100)
    for name in ("reparam", "reinforce"):
        cfg = compose_config("experiment=gaussian_reinforce_vs_reparam", f"estimator={name}")
        estimator = build_estimator(cfg, build_model(cfg, 784))
        assert estimator.num_samples == 4 and cfg.latent._target_.endswith("GaussianLatent")


@pytest.mark.parametrize("overrides,message", [
    (["latent=categorical", "estimator=reparam"], "use estimator=reinforce"),
    (["estimator=gumbel_softmax"], "needs latent=categorical"),
    (["estimator=straight_through"], "needs latent=categorical"),
    (["estimator=exact"], "use latent=categorical"),
    (["latent=categorical", "estimator=exact"], r"10 \*\* 4 = 10000 configurations, above estimator.max_configurations=4096"),
    (["latent=categorical", "estimator.num_samples=1"], r"estimator.num_samples=1 is too few for estimator.baseline=leave_one_out"),
    (["estimator=reinforce", "latent.kl=monte_carlo"], "set latent.kl=analytic"),
    (["estimator=reinforce", "likelihood=gaussian", "likelihood.scale=optimal"],
     r"estimator=reinforce cannot use likelihood.scale=optimal.*set likelihood.scale=learned"),
    (["latent=categorical", "likelihood=gaussian", "likelihood.scale=optimal"],
     r"estimator=reinforce cannot use likelihood.scale=optimal"),
    (["latent=categorical", "estimator.baseline=average"], "estimator.baseline='average' is not accepted"),
    (["latent=categorical", "estimator=gumbel_softmax", "estimator.min_temperature=2"], "min_temperature"),
])
def test_invalid_combination_is_a_one_line_config_error(overrides, message, smoke_cfg, tmp_path):
    with pytest.raises(ConfigError, match=message) as err:
        train(smoke_cfg(*overrides), tmp_path)
    assert "\n" not in str(err.value)
    assert not (tmp_path / "checkpoint.pt").exists()


def test_cli_reparam_with_categorical_says_what_to_type(tmp_path):
    result = run_cli("debug=smoke", "latent=categorical", "estimator=reparam", cwd=tmp_path)
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "estimator=reinforce" in errors[0]


def scalars(run_dir) -> dict[str, list[float]]:
    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [event.value for event in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


SMOKE_RUNS = {
    "loo": ["latent=categorical"],
    "none": ["latent=categorical", "estimator.baseline=none", "estimator.num_samples=1"],
    "moving_average": ["latent=categorical", "estimator.baseline=moving_average", "estimator.num_samples=1"],
    "learned": ["latent=categorical", "estimator.baseline=learned", "estimator.num_samples=1"],
    "gumbel": ["latent=categorical", "estimator=gumbel_softmax", "estimator.anneal_rate=0.01"],
    "straight_through": ["latent=categorical", "estimator=straight_through"],
    "exact": ["latent=categorical", "estimator=exact", "latent.num_classes=3"],  # 3 ** 4 = 81
    "gaussian_reinforce": ["estimator=reinforce"],
}


@pytest.mark.parametrize("name", SMOKE_RUNS)
def test_smoke_run_for_each_estimator(name, smoke_cfg, tmp_path):
    metrics = train(smoke_cfg("epochs=1", *SMOKE_RUNS[name]), tmp_path)
    numbers = [v for v in metrics.values() if not isinstance(v, str)]  # (metrics also name e.g. the model used)
    assert numbers and all(math.isfinite(v) for v in numbers), metrics
    assert metrics["test/elbo"] == pytest.approx(metrics["test/recon"] - metrics["test/kl"])
    assert metrics["test/kl"] >= 0 and metrics["step"] == 461 // 32
    logged = scalars(tmp_path)
    diagnostics = logged["diagnostics/grad_variance"][-1], logged["diagnostics/grad_mean_sq_norm"][-1]
    assert all(math.isfinite(v) for v in diagnostics)
    estimator_state = load_checkpoint(tmp_path)["estimator"]
    if name in ("loo", "none", "moving_average", "learned", "gaussian_reinforce"):
        values = {t: logged[f"train/{t}"] for t in ("baseline", "signal_mean", "signal_std", "residual_rms")}
        assert all(v < 0 for v in values["signal_mean"]) and all(v > 0 for v in values["signal_std"])
        if name == "none":  # f itself multiplies the score: rms f = sqrt(mean^2 + std^2)
            assert values["baseline"] == [0.0] * len(values["baseline"])
            assert values["residual_rms"] == pytest.approx(
                [math.hypot(m, s) for m, s in zip(values["signal_mean"], values["signal_std"])], rel=1e-4)
        else:  # the baseline tracks the signal and shrinks what multiplies the score
            assert values["baseline"][-1] == pytest.approx(values["signal_mean"][-1], rel=0.1)
            assert values["residual_rms"][-1] < 0.1 * abs(values["signal_mean"][-1])
    if name in ("moving_average", "learned"):
        assert estimator_state["baseline.num_updates"].item() == metrics["step"]
    if name == "learned":
        assert estimator_state["baseline.net.2.weight"].abs().max() > 0  # the fit moved it from zero
    if name == "gumbel":
        temperature = logged["train/temperature"]
        assert temperature[0] > temperature[-1] >= 0.5 and estimator_state["step"].item() == metrics["step"]
    if name == "exact":  # no sampling: every gradient estimate is the same
        assert diagnostics[0] <= 1e-12 * diagnostics[1]
    if name in ("none", "loo", "gaussian_reinforce"):
        assert diagnostics[0] > 0


def test_posterior_samples_are_one_hot_draws_of_q():
    latent = random_latent("uniform")
    posterior = latent.posterior(torch.randn(3, 6, dtype=torch.float64) * 2)  # B = 3, V = 2, C = 3
    torch.manual_seed(0)
    z = latent.sample(posterior, 40_000)  # (S, B, V, C)
    assert z.shape == (40_000, 3, 2, 3) and torch.all(z.sum(-1) == 1) and not z.requires_grad
    probs = posterior.probs
    stderr = (probs * (1 - probs) / z.shape[0]).sqrt()
    assert torch.all((z.mean(0) - probs).abs() < 4 * stderr)
    assert torch.allclose(probs.sum(-1), torch.ones(3, 2, dtype=torch.float64))
