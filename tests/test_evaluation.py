"""The evaluation's numbers against closed forms and enumeration: L_K, the gap, bits/dim, active units, probe."""
import logging
import math
import re
import time

import numpy as np
import pytest
import torch
from torch.distributions import MultivariateNormal

from conftest import compose_config
from linear_gaussian import exact_log_px, linear_gaussian, set_true_posterior
from vae_cli.errors import ConfigError
from vae_cli.evaluation.active_units import active_units, activity, latent_means
from vae_cli.evaluation.iwae import bits_per_dim, importance_weighted_bounds
from vae_cli.likelihoods import dequantize
from vae_cli.evaluation.pictures import interpolation, tile, traversal
from vae_cli.evaluation.probe import labelled_subset, probe
from vae_cli.latents import CategoricalLatent
from vae_cli.likelihoods import Bernoulli
from vae_cli.model import VAE
from vae_cli.schedules import burda, schedule_epochs


def mismatched_linear_gaussian(num_examples: int, seed: int = 0):
    """The linear-Gaussian bench with q(z|x) off the true posterior (mean +0.3, std x1.5), and data."""
    torch.manual_seed(seed)
    model, weight, bias, noise = linear_gaussian()
    set_true_posterior(model, weight, bias, noise)
    latent_dim = weight.shape[1]
    with torch.no_grad():  # a wider proposal keeps the importance weights' variance finite
        model.encoder[0].bias[:latent_dim] += 0.3
        model.encoder[0].bias[latent_dim:] += 2 * math.log(1.5)
    cov = weight @ weight.T + noise**2 * torch.eye(weight.shape[0], dtype=torch.float64)
    x = MultivariateNormal(bias, cov).sample((num_examples,))
    return model, x, exact_log_px(x, weight, bias, noise)


def test_L_K_increases_with_K_and_converges_to_the_exact_log_px():
    model, x, exact = mismatched_linear_gaussian(1024)
    error, stderr = {}, {}
    for num_samples in (1, 10, 100, 1000, 5000):
        log_px, elbo = importance_weighted_bounds(model, x, num_samples, chunk_size=500)
        assert torch.all(log_px >= elbo - 1e-12)  # L_K >= L_1 on the same draws (Jensen)
        diff = log_px - exact  # (N,)
        error[num_samples], stderr[num_samples] = diff.mean().item(), diff.std().item() / math.sqrt(len(x))
    for small, large in ((1, 10), (10, 100)):  # E[L_K] increases: by many standard errors here
        assert error[large] - error[small] > 5 * math.hypot(stderr[small], stderr[large]), error
    assert error[1] < -1.0  # the ELBO of this mismatched encoder is well below log p(x)
    for num_samples in (1000, 5000):  # and L_K reaches log p(x): no bias left beyond the noise
        assert abs(error[num_samples]) < 4 * stderr[num_samples] + 1e-3, (num_samples, error, stderr)


@pytest.mark.parametrize("num_samples", [1, 3, 100])
def test_at_the_true_posterior_L_K_is_log_px_for_every_K_and_the_gap_is_zero(num_samples):
    torch.manual_seed(0)
    model, weight, bias, noise = linear_gaussian()
    set_true_posterior(model, weight, bias, noise)
    x = torch.randn(32, 6, dtype=torch.float64) * 2
    log_px, elbo = importance_weighted_bounds(model, x, num_samples, chunk_size=2)
    exact = exact_log_px(x, weight, bias, noise)
    assert torch.allclose(log_px, exact, atol=1e-9)
    assert torch.allclose(log_px - elbo, torch.zeros_like(elbo), atol=1e-9, rtol=0)  # the gap is 0


def test_chunks_combine_to_the_logsumexp_of_all_draws(monkeypatch):
    model, x, _ = mismatched_linear_gaussian(16)
    posterior = model.posterior(x)
    bank = model.latent.sample(posterior, 100).detach()  # (K, B, latent)
    taken = []

    def sample(posterior, num_samples):  # hand out the bank in order, chunk by chunk
        start = sum(taken)
        taken.append(num_samples)
        return bank[start:start + num_samples]

    monkeypatch.setattr(model.latent, "sample", sample)
    log_px, elbo = importance_weighted_bounds(model, x, 100, chunk_size=7)
    assert taken == [7] * 14 + [2]  # a ragged last chunk
    log_w = model.log_likelihood(x, bank) + model.latent.log_prior(bank) - posterior.log_prob(bank)
    assert torch.allclose(log_px, torch.logsumexp(log_w, 0) - math.log(100), atol=1e-10)
    assert torch.allclose(elbo, log_w.mean(0), atol=1e-10)


def small_categorical_model(seed: int = 0) -> VAE:
    torch.manual_seed(seed)
    latent = CategoricalLatent(num_vars=2, num_classes=3)
    model = VAE(5, latent, Bernoulli(binarize="none"), hidden_sizes=[8], activation="tanh",
                latent_dim=2).double()
    with torch.no_grad():
        for layer in (model.encoder[-1], model.decoder[-1]):
            layer.weight.mul_(4)  # informative posteriors, distinct decoders
    return model


def test_categorical_L_K_converges_to_log_px_by_enumeration():
    model = small_categorical_model()
    x = torch.bernoulli(torch.full((8, 5), 0.5, dtype=torch.float64))
    z = model.latent.enumerate()  # (9, V, C): every configuration
    with torch.no_grad():
        log_joint = (model.log_likelihood(x, z[:, None].expand(-1, 8, -1, -1))
                     + model.latent.log_prior(z)[:, None])  # (9, B)
        log_q = model.posterior(x).log_prob(z[:, None])  # (9, B)
    exact = torch.logsumexp(log_joint, 0)  # log p(x) = log sum_z p(x, z)
    # Var_q(w) / p(x)^2 = sum_z p(x,z)^2 / q(z|x) / p(x)^2 - 1, also by enumeration; by the delta method
    # L_K has standard error sqrt(v/K) and bias about -v/(2K).
    rel_var = torch.exp(2 * log_joint - log_q - 2 * exact).sum(0) - 1
    num_samples = 20_000
    log_px, elbo = importance_weighted_bounds(model, x, num_samples, chunk_size=4096)
    tolerance = 5 * torch.sqrt(rel_var / num_samples) + rel_var / num_samples
    assert torch.all((log_px - exact).abs() < tolerance), (log_px - exact, tolerance)
    assert torch.all(elbo < exact - 0.05)  # this encoder is not the posterior: the ELBO is below


def test_bits_per_dim_of_the_uniform_density_is_8_and_dequantization_stays_in_its_bin():
    assert bits_per_dim(0.0, 784) == 8.0  # log p = 0 on [0,1]^D: 256 equally likely levels, 8 bits
    assert bits_per_dim(-784 * math.log(2), 784) == pytest.approx(9.0)
    levels = torch.arange(256, dtype=torch.float32).repeat(400)
    x = dequantize(levels / 255, torch.Generator().manual_seed(0))
    assert torch.all(x >= levels / 256) and torch.all(x < (levels + 1) / 256)
    u = x * 256 - levels  # U[0, 1): mean 1/2, standard error sqrt(1/12 / n)
    assert abs(u.mean().item() - 0.5) < 4 * math.sqrt(1 / 12 / len(u))


@pytest.mark.parametrize("dequantize", [False, True])
def test_a_density_is_scored_on_the_test_images_as_it_was_trained(dequantize):
    """dequantize=false: L_K and L_1 are densities at the grid values k/255, the points test/elbo scores,
    and no bits/dim; dequantize=true: the dequantised test set, with bits/dim."""
    from omegaconf import OmegaConf

    from vae_cli.evaluation.run import likelihood_figures
    from vae_cli.latents import GaussianLatent
    from vae_cli.likelihoods import Gaussian
    torch.manual_seed(0)
    likelihood = Gaussian(scale="fixed", sigma=0.002, dequantize=dequantize)
    model = VAE(16, GaussianLatent(2), likelihood, hidden_sizes=[8], activation="tanh", latent_dim=2).double()
    levels = torch.full((200, 16), 128)
    with torch.no_grad():  # the decoder's mean is the grid value 128/255: dequantising costs ~2.5 nats
        model.decoder[-1].weight.zero_()
        model.decoder[-1].bias.fill_(128 / 255)
    test_x = likelihood.prepare_pixels(levels.to(torch.uint8), torch.Generator().manual_seed(2)).double()
    assert torch.equal(test_x, levels / 255) != dequantize
    settings = OmegaConf.create({"num_samples": 10, "chunk_size": 5, "batch_size": 50})
    figures, notes, _ = likelihood_figures(model.eval(), test_x, settings)
    with torch.no_grad():  # L_1 of the same points by 2,000 fresh draws
        posterior = model.posterior(test_x)
        z = model.latent.sample(posterior, 2000)
        log_w = model.log_likelihood(test_x, z) + model.latent.log_prior(z) - posterior.log_prob(z)  # (S, B)
    elbo, stderr = log_w.mean().item(), log_w.mean(1).std().item() / math.sqrt(2000)
    assert abs(figures["elbo_L1"] - elbo) < 5 * (stderr + figures["elbo_L1_stderr"])
    assert ("bits_per_dim" in figures) == dequantize
    assert any(("dequantize=false" in note) != dequantize for note in notes)


def test_active_units_match_the_closed_form_covariance():
    torch.manual_seed(0)
    model, *_ = linear_gaussian(data_dim=4, latent_dim=4)
    gains = torch.tensor([1.0, 0.5, 0.05, 0.0], dtype=torch.float64)  # Var_x(E_q[z_j]) = gain_j^2
    with torch.no_grad():
        model.encoder[0].weight.zero_()
        model.encoder[0].weight[:4] = torch.diag(gains)
    x = torch.randn(20_000, 4, dtype=torch.float64)  # Cov(x) = I
    means = latent_means(model, x, batch_size=4096)
    expected = gains**2
    stderr = expected * math.sqrt(2 / (len(x) - 1))  # of a Gaussian sample variance
    assert torch.all((activity(means) - expected).abs() <= 5 * stderr + 1e-12)
    assert active_units(activity(means)) == 2  # 1 and 0.25 exceed 0.01; 0.0025 and 0 do not


def test_categorical_active_units_count_variables_whose_posterior_moves():
    model = small_categorical_model()
    with torch.no_grad():
        model.encoder[-1].weight[3:].zero_()  # variable 1's logits: constant in x
        model.encoder[-1].bias[3:].zero_()  # and zero: a uniform posterior, as under collapse
    x = torch.bernoulli(torch.full((2000, 5), 0.5, dtype=torch.float64))
    means = latent_means(model, x, batch_size=512)  # (N, V, C) class probabilities
    assert torch.allclose(means[:, 1], torch.full((2000, 3), 1 / 3, dtype=torch.float64))
    expected = means[:, 0].var(0).sum()  # trace of Cov_x(q_0(x))
    assert activity(means)[1] == 0 and torch.isclose(activity(means)[0], expected)
    assert expected > 0.01 and active_units(activity(means)) == 1


def separable_features(rng, n, num_classes, shift):
    labels = rng.integers(0, num_classes, n)
    centres = shift * np.eye(num_classes, 8)  # (C, 8)
    return centres[labels] + rng.normal(size=(n, 8)), labels


def test_probe_recovers_separable_labels_and_is_near_chance_otherwise():
    rng = np.random.default_rng(0)
    num_classes, num_test = 4, 2000
    train_sep, train_y = separable_features(rng, 4000, num_classes, shift=6.0)
    test_sep, test_y = separable_features(rng, num_test, num_classes, shift=6.0)
    noise = (rng.normal(size=(4000, 8)), rng.normal(size=(num_test, 8)))  # independent of the labels
    accuracy = probe({"separable": (train_sep, test_sep), "noise": noise}, train_y, test_y,
                     [10, "all"], seed=0)
    assert accuracy["separable_n10"] > 0.97 and accuracy["separable_all"] > 0.98
    chance, stderr = 1 / num_classes, math.sqrt(0.25 * 0.75 / num_test)
    assert abs(accuracy["noise_all"] - chance) < 4 * stderr
    assert abs(accuracy["noise_n10"] - chance) < 4 * stderr + 0.05  # 40 labels: a little overfitting


def test_labelled_subset_is_balanced_nested_and_seeded():
    labels = np.repeat(np.arange(3), [50, 200, 30])
    ten, hundred = labelled_subset(labels, 10, seed=1), labelled_subset(labels, 100, seed=1)
    assert np.bincount(labels[ten]).tolist() == [10, 10, 10]
    assert np.bincount(labels[hundred]).tolist() == [50, 100, 30]  # a small class gives what it has
    assert set(ten) <= set(hundred) and np.array_equal(ten, labelled_subset(labels, 10, seed=1))
    assert len(labelled_subset(labels, "all", seed=1)) == len(labels)
    with pytest.raises(ConfigError, match=r"eval\.probe_sizes"):
        probe({}, labels, labels, [0], seed=0)


@pytest.mark.parametrize("latent", ["gaussian", "categorical"])
def test_pictures_have_the_promised_grids(latent):
    model = small_categorical_model() if latent == "categorical" else linear_gaussian(data_dim=4)[0]
    model.likelihood = Bernoulli()
    x = torch.rand(20, 4 if latent == "gaussian" else 5, dtype=torch.float64)
    shape = (1, 2, 2) if latent == "gaussian" else (1, 5, 1)
    means = latent_means(model, x, batch_size=8)
    rows = traversal(model, means, activity(means), shape)
    steps = 3 if latent == "categorical" else 9  # one column per class, or 9 values of a Gaussian latent
    assert rows.shape == (min(8, means.shape[1]), steps, *shape)
    pairs = interpolation(model, x, means, shape)
    assert pairs.shape == (8, 11, *shape)
    assert torch.equal(pairs[:, 0].flatten(1), x[0:16:2]) and torch.equal(pairs[:, -1].flatten(1), x[1:16:2])
    assert tile(pairs).shape == (1, 1, 8 * (shape[1] + 1) + 1, 11 * (shape[2] + 1) + 1)


def test_burda_schedule_is_3_to_the_i_epochs_at_10_to_the_minus_i_over_7():
    optimizer = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
    scheduler = burda(optimizer)
    rates = []
    for _ in range(schedule_epochs()):
        rates.append(scheduler.get_last_lr()[0])
        optimizer.step()
        scheduler.step()
    expected = [1e-3 * 10 ** (-i / 7) for i in range(8) for _ in range(3**i)]
    assert len(rates) == 3280 and np.allclose(rates, expected, rtol=1e-12)
    with pytest.raises(ConfigError, match=r"scheduler\.gamma"):
        burda(optimizer, gamma=1.5)


def test_eval_configs_light_and_full_and_the_burda_experiment():
    light, full = compose_config().eval, compose_config("eval=full").eval
    assert (light.num_samples, full.num_samples) == (100, 1000) and not light.embedding and full.embedding
    assert list(light.probe_sizes) == list(full.probe_sizes) == [10, 100, "all"]
    cfg = compose_config("experiment=burda_mlp")
    assert cfg.scheduler._target_ == "vae_cli.schedules.burda" and cfg.epochs == schedule_epochs()
    assert cfg.eval.num_samples == 5000 and "eval" not in compose_config("~eval")


def test_log_px_estimates_says_how_long_the_whole_set_will_take(caplog, monkeypatch):
    """The estimate comes from the batches after the first: a first batch 30 times slower than the rest
    (one-time costs) made the old estimate, first batch x batches, 20 times too long."""
    import vae_cli.evaluation.iwae as iwae

    model, x, _ = mismatched_linear_gaussian(50)
    bounds, calls = iwae.importance_weighted_bounds, []

    def timed_bounds(*args):
        time.sleep(0.6 if not calls else 0.02)
        calls.append(None)
        return bounds(*args)

    monkeypatch.setattr(iwae, "importance_weighted_bounds", timed_bounds)
    start = time.perf_counter()
    with caplog.at_level(logging.INFO, logger="vae_cli.evaluation.iwae"):
        log_px, elbo = iwae.log_px_estimates(model, x, 20, chunk_size=10, batch_size=1, progress=False)
    took = time.perf_counter() - start
    (line,) = [r.getMessage() for r in caplog.records]
    said = re.fullmatch(r"L_20 on 50 images: (\d+) done in [\d.]+ s, so about (\d+) s for all of them", line)
    assert said and 0 < int(said[1]) < 50 and took / 2 <= int(said[2]) <= took * 1.5, (line, took)
    assert log_px.shape == elbo.shape == (50,) and len(calls) == 50
    # two batches, the first long (LONG_FIRST): estimated from it alone, where no batch came after it to wait for
    caplog.clear()
    calls.clear()
    monkeypatch.setattr(iwae, "LONG_FIRST", 0.5)
    with caplog.at_level(logging.INFO, logger="vae_cli.evaluation.iwae"):
        iwae.log_px_estimates(model, x, 20, chunk_size=10, batch_size=25, progress=False)
    (line,) = [r.getMessage() for r in caplog.records]
    assert re.fullmatch(r"L_20 on 50 images: 25 done in 0\.[6-9] s, so about 1 s for all of them", line), line
    assert (iwae.duration(42.4), iwae.duration(450), iwae.duration(9000)) == ("42 s", "7.5 min", "2.5 h")
