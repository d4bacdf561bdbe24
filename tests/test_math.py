"""Closed forms and identities of docs/math.md 3-5: KL, log-likelihoods, the three decompositions, ELBO <= log p(x)."""
import math

import pytest
import torch
from torch.distributions import Independent, Normal

from linear_gaussian import exact_log_px, linear_gaussian, set_true_posterior
from vae_cli.estimators import Reparameterized
from vae_cli.latents import GaussianLatent
from vae_cli import likelihoods
from vae_cli.likelihoods import Bernoulli, ContinuousBernoulli, Gaussian, binarize_pixels, soft_clip_below


def test_analytic_gaussian_kl_matches_large_sample_monte_carlo():
    torch.manual_seed(0)
    latent = GaussianLatent(num_vars=5).double()
    params = torch.randn(4, 10, dtype=torch.float64)
    posterior = latent.posterior(params)
    z = latent.sample(posterior, 200_000)  # (S, B, K)
    log_ratio = posterior.log_prob(z) - latent.prior().log_prob(z)  # (S, B)
    mc, stderr = log_ratio.mean(0), log_ratio.std(0) / math.sqrt(z.shape[0])
    analytic = latent.divergence_terms(posterior, z[:1])["kl"]
    assert torch.all((analytic - mc).abs() < 4 * stderr), (analytic, mc, stderr)
    reference = Independent(Normal(params[:, :5], torch.exp(0.5 * params[:, 5:])), 1)
    assert torch.allclose(posterior.log_prob(z[:3]), reference.log_prob(z[:3]), atol=1e-12)
    assert torch.allclose(analytic, torch.distributions.kl_divergence(reference, latent.prior()))


def test_analytic_gaussian_kl_is_finite_for_a_collapsed_variance():
    """log sigma^2 = -300: sigma^2 underflows to 0 in float32, the KL must still be finite and exact."""
    latent = GaussianLatent(num_vars=1)
    posterior = latent.posterior(torch.tensor([[0.5, -300.0]]))
    kl = latent.divergence_terms(posterior, None)["kl"]
    assert kl.item() == pytest.approx(0.5 * (0.25 + 0 - 1 + 300))


def test_bernoulli_log_likelihood_is_the_direct_sum():
    torch.manual_seed(0)
    logits = torch.randn(3, 7, 11, dtype=torch.float64) * 3
    x = torch.bernoulli(torch.full((7, 11), 0.4, dtype=torch.float64))
    p = torch.sigmoid(logits)
    direct = (x * torch.log(p) + (1 - x) * torch.log(1 - p)).sum(-1)
    assert torch.allclose(Bernoulli().log_prob(logits.unsqueeze(-1), x), direct, atol=1e-10)


def test_bernoulli_from_logits_is_stable_where_probabilities_underflow():
    logits = torch.tensor([[[-200.0], [200.0]]])  # sigmoid is 0 and 1 in float32
    ll = Bernoulli().log_prob(logits, torch.tensor([[1.0, 0.0]]))
    assert torch.allclose(ll, torch.tensor([-400.0]))


def test_binarization_modes():
    x = torch.tensor([[0.2, 0.7, 0.5, 1.0]])
    assert torch.equal(Bernoulli("threshold").prepare(x), torch.tensor([[0.0, 1.0, 0.0, 1.0]]))
    draws = Bernoulli("dynamic").prepare(x.expand(20_000, 4), torch.Generator().manual_seed(0))
    assert set(draws.unique().tolist()) <= {0.0, 1.0}
    assert torch.allclose(draws.mean(0), x[0], atol=0.015)


def test_pixel_binarization_has_probability_level_over_255_for_every_level():
    levels = torch.arange(256, dtype=torch.uint8)
    draws = 40_000
    counts = torch.zeros(256)
    generator = torch.Generator().manual_seed(0)
    for _ in range(draws // 1000):
        counts += binarize_pixels(levels.expand(1000, 256), generator).sum(0)
    p = levels.double() / 255
    assert counts[0] == 0 and counts[255] == draws  # the ends exactly
    z = (counts.double() / draws - p)[1:-1] / (p * (1 - p) / draws).sqrt()[1:-1]
    assert z.abs().max() < 5 and abs(z.mean()) < 0.3 and 0.7 < z.var() < 1.3  # standard normal scores


def test_pixel_binarization_decides_a_byte_of_255_by_a_32_bit_draw(monkeypatch):
    """Bytes r give x = [r < k]; where r = 255 a 32-bit w gives x = [w < 16843009 k], and a w of
    2^32 - 1 is drawn again."""
    step = 16843009  # (2^32 - 1) / 255
    bytes_ = torch.tensor([255, 3, 255, 200, 9, 255], dtype=torch.uint8)
    words = iter([torch.tensor([2**32 - 1, 11 * step - 1, 5 * step + 2**32], dtype=torch.int64),  # high bits ignored
                  torch.tensor([5 * step - 1], dtype=torch.int64)])  # again for position 0: 5 step - 1 < 5 step
    monkeypatch.setattr(likelihoods, "random_bytes", lambda n, generator, device: bytes_[:n])
    monkeypatch.setattr(likelihoods, "random_words", lambda n, generator, device: next(words)[:n].clone())
    pixels = torch.tensor([[5, 3, 11, 201, 10, 6]], dtype=torch.uint8)
    x = binarize_pixels(pixels)
    # 0: w = 5 step - 1 < 5 step (second round); 1: 3 < 3 no; 2: 11 step - 1 < 11 step; 3: 200 < 201;
    # 4: 9 < 10; 5: 5 step (the high bits dropped) < 6 step
    assert torch.equal(x, torch.tensor([[1.0, 0.0, 1.0, 1.0, 1.0, 1.0]]))
    assert next(words, None) is None  # exactly two 32-bit rounds


def test_dynamic_binarization_of_pixels_on_the_cpu_is_the_byte_method(monkeypatch):
    calls = []
    monkeypatch.setattr(likelihoods, "binarize_pixels",
                        lambda pixels, generator: calls.append(pixels) or pixels)
    pixels = torch.tensor([[0, 128, 255]], dtype=torch.uint8)
    Bernoulli("dynamic").prepare_pixels(pixels)
    assert len(calls) == 1 and calls[0] is pixels


def test_pixel_preparation_of_other_likelihoods_is_prepare_of_intensities():
    pixels = torch.tensor([[0, 128, 255]], dtype=torch.uint8)
    assert torch.equal(Bernoulli("threshold").prepare_pixels(pixels), torch.tensor([[0.0, 1.0, 1.0]]))
    assert torch.equal(Gaussian(dequantize=False).prepare_pixels(pixels), pixels / 255.0)


@pytest.mark.parametrize("likelihood", [Bernoulli("dynamic"), Bernoulli("threshold"), Bernoulli("none"),
                                        ContinuousBernoulli(), Gaussian()])
def test_a_block_of_batches_is_prepared_as_its_rows(likelihood):
    """A block of batches (A, B, D), as the training loop prepares them, gets what its rows (A B, D) get:
    the same random draws in the same order, whichever likelihood prepares them."""
    pixels = torch.randint(0, 256, (3, 32, 50), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    block = likelihood.prepare_pixels(pixels, torch.Generator().manual_seed(1))
    flat = likelihood.prepare_pixels(pixels.view(96, 50), torch.Generator().manual_seed(1))
    assert torch.equal(block, flat.view(3, 32, 50)) and block.is_contiguous() and block.dtype == torch.float32
    assert 0.45 < block.mean() < 0.55  # not trivially equal (uniform levels: mean 1/2)


def test_continuous_bernoulli_normaliser_closed_form():
    lam = torch.tensor([0.1, 0.3, 0.7, 0.9], dtype=torch.float64)
    x = torch.tensor([0.25, 0.5, 0.8, 0.1], dtype=torch.float64)
    norm = 2 * torch.atanh(1 - 2 * lam) / (1 - 2 * lam)  # C(l), docs/math.md 4
    expected = (x * torch.log(lam) + (1 - x) * torch.log(1 - lam) + torch.log(norm)).sum()
    logits = torch.log(lam / (1 - lam))
    got = ContinuousBernoulli().log_prob(logits.view(1, 4, 1), x.view(1, 4))
    assert torch.allclose(got, expected.view(1), atol=1e-8)


@pytest.mark.parametrize("logit", [-200.0, -50.0, -20.0, -16.0, -3.0, -0.004, 0.0, 0.3, 16.0, 20.0, 200.0])
def test_continuous_bernoulli_is_a_density_with_a_zero_mean_score_and_its_mean_at_any_logit(logit):
    """Integrated over [0,1] (trapezoid, 400,001 points, float64): the density is 1, the score
    d log p / d l has mean 0 (else training follows a gradient that is not the likelihood's), and E[x] is
    mean(). torch.distributions.ContinuousBernoulli clamps lambda: at |l| = 20 it integrated to 0.80 and
    its score's mean was about -0.05."""
    x = torch.linspace(0, 1, 400_001, dtype=torch.float64)
    logits = torch.full_like(x, logit, requires_grad=True)
    log_p = ContinuousBernoulli().log_prob(logits.view(-1, 1, 1), x.view(-1, 1)).squeeze(-1)  # (N,)
    score, = torch.autograd.grad(log_p.sum(), logits)
    density = log_p.detach().exp()
    assert torch.trapezoid(density, x).item() == pytest.approx(1, abs=1e-6)
    assert abs(torch.trapezoid(density * score, x).item()) < 1e-6
    mean = ContinuousBernoulli.mean(torch.tensor([[logit]], dtype=torch.float64)).item()
    assert mean == pytest.approx(torch.trapezoid(density * x, x).item(), abs=1e-6)
    # float32, as training runs: log C within float32 rounding of the float64 value, also near l = 0
    near = torch.tensor([logit, logit / 3, 0.0099, -0.0101], dtype=torch.float64)
    assert torch.allclose(ContinuousBernoulli.log_normaliser(near.float()).double(),
                          ContinuousBernoulli.log_normaliser(near), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("scale", Gaussian.SCALES)
def test_gaussian_log_likelihood_matches_torch_normal_with_constants(scale):
    torch.manual_seed(0)
    lik = Gaussian(scale=scale, sigma=0.3).double()
    if scale == "learned":
        with torch.no_grad():
            lik.log_sigma.fill_(math.log(0.17))
    params = torch.randn(2, 5, 9, lik.params_per_dim, dtype=torch.float64)  # (S, B, D, P)
    x = torch.rand(5, 9, dtype=torch.float64)
    loc = params[..., 0]
    sigma = {"fixed": torch.tensor(0.3), "learned": torch.tensor(0.17),
             "per_pixel": soft_clip_below(params[..., 1], -6.0).exp() if scale == "per_pixel" else None,
             "optimal": (x - loc).pow(2).mean().sqrt()}[scale]
    expected = Normal(loc, sigma.double()).log_prob(x).sum(-1)
    assert torch.allclose(lik.log_prob(params, x), expected, atol=1e-10)


def test_optimal_sigma_maximises_the_likelihood_given_the_mean():
    torch.manual_seed(0)
    params, x = torch.randn(1, 8, 6, 1, dtype=torch.float64), torch.rand(8, 6, dtype=torch.float64)
    best = Gaussian(scale="optimal").log_prob(params, x).sum()
    for factor in (0.8, 0.95, 1.05, 1.25):
        sigma = float((x - params[..., 0]).pow(2).mean().sqrt()) * factor
        assert Gaussian(scale="fixed", sigma=sigma).double().log_prob(params, x).sum() < best


def test_optimal_sigma_of_a_perfect_fit_is_the_floor_with_a_finite_gradient():
    """A decoder that reproduces the batch exactly (dequantize=false data can allow it): sigma* = 0, floored
    at min_log_scale; the gradient was NaN (log(0)'s slope times the clamp's zero), which ends a run."""
    x = torch.rand(4, 6, dtype=torch.float64)
    params = x.clone().unsqueeze(0).unsqueeze(-1).requires_grad_()
    log_p = Gaussian(scale="optimal", min_log_scale=-6.0).double().log_prob(params, x)
    log_p.sum().backward()
    assert torch.allclose(log_p, torch.full((1, 4), 6 * (6 - 0.5 * math.log(2 * math.pi)), dtype=torch.float64))
    assert torch.isfinite(params.grad).all()


def test_optimal_sigma_is_fitted_on_training_batches_and_frozen_in_eval_mode():
    """Training mode: each batch is scored with its own sigma*^2 = MSE, and log_sigma holds half the log
    of the running fit m_n = m_(n-1) + max(1/n, FIT_MOMENTUM) (MSE_n - m_(n-1)) (m_1 = MSE_1: the mean of
    the fits for the first 1/FIT_MOMENTUM batches). Eval mode: every example is scored with that frozen
    sigma, whatever its batch, and nothing is refitted; the fit travels in the state_dict."""
    lik = Gaussian(scale="optimal", sigma=0.7).double()
    generator = torch.Generator().manual_seed(0)
    params = torch.randn(1, 8, 6, 1, generator=generator, dtype=torch.float64)  # (S, B, D, P)
    running = None
    for n in range(1, 41):
        x = params[..., 0] + torch.randn(8, 6, generator=generator, dtype=torch.float64) * (0.1 + 0.01 * n)
        mse = (x - params[..., 0]).pow(2).mean()
        expected = Normal(params[..., 0], mse.sqrt()).log_prob(x).sum(-1)
        assert torch.allclose(lik.log_prob(params, x), expected, atol=1e-10)  # the batch's own sigma
        running = mse if running is None else running + max(1 / n, Gaussian.FIT_MOMENTUM) * (mse - running)
        assert lik.log_sigma.item() == pytest.approx(0.5 * math.log(running), rel=1e-12)
        assert int(lik.fitted_batches) == n
    assert running.sqrt().item() == pytest.approx(0.1 + 0.01 * 32, rel=0.25)  # the recent batches' scale
    lik.eval()
    frozen = lik.log_sigma.clone()
    x = params[..., 0] + 3.0 * torch.randn(8, 6, generator=generator, dtype=torch.float64)  # far off the fit
    scores = lik.log_prob(params, x)
    assert torch.allclose(scores, Normal(params[..., 0], frozen.exp()).log_prob(x).sum(-1), atol=1e-10)
    assert torch.allclose(lik.log_prob(params[:, :1], x[:, :1]), scores[:, :1], rtol=1e-14)  # batch of one
    assert torch.equal(lik.log_sigma, frozen) and int(lik.fitted_batches) == 40  # not refitted
    reloaded = Gaussian(scale="optimal").double().eval()
    reloaded.load_state_dict(lik.state_dict())
    assert torch.equal(reloaded.log_prob(params, x), scores)


def test_validation_elbo_of_optimal_sigma_does_not_depend_on_the_evaluation_batch_size(monkeypatch):
    """The leak of a sigma fitted to the scored batch (issue 14): one model, its validation ELBO
    computed at batch sizes 1 and 1000. z is the posterior mean (no sampling noise), so only sigma
    could make the two differ: they do (by 0.3 nats of 12 dimensions here) with the batch-fitted sigma of
    training mode, and not at all with the sigma frozen from training batches (eval mode)."""
    from conftest import compose_config
    from vae_cli.build import build_model
    from vae_cli.estimators.train_step import AutogradStep
    from vae_cli.latents.gaussian import DiagonalGaussian

    cfg = compose_config("data=synthetic", "likelihood=gaussian", "likelihood.scale=optimal",
                         "model.hidden_sizes=[16]", "model.latent_dim=3")
    torch.manual_seed(0)
    model = build_model(cfg, 12).double()
    estimator = Reparameterized()
    generator = torch.Generator().manual_seed(1)
    prototypes = torch.rand(4, 12, generator=generator, dtype=torch.float64)
    def images(n):  # noisy copies of four prototypes in [0, 1]
        pick = torch.randint(0, 4, (n,), generator=generator)
        return (prototypes[pick] + 0.05 * torch.randn(n, 12, generator=generator, dtype=torch.float64)).clamp(0, 1)
    step = AutogradStep(model, estimator, torch.optim.Adam(model.parameters(), lr=1e-2), beta=1.0)
    model.train()
    for _ in range(60):
        step(images(32))
    val_x = images(1000)
    monkeypatch.setattr(DiagonalGaussian, "rsample", lambda self, shape=(): self.loc.expand(*shape, *self.loc.shape))

    def val_elbo(batch_size):
        with torch.no_grad():
            return torch.cat([estimator(model, val_x[i:i + batch_size]).elbo
                              for i in range(0, len(val_x), batch_size)]).mean().item()

    fitted = model.likelihood.log_sigma.clone()
    assert int(model.likelihood.fitted_batches) == 60
    model.eval()
    assert val_elbo(1) == pytest.approx(val_elbo(1000), rel=1e-12)
    assert torch.equal(model.likelihood.log_sigma, fitted)  # validation did not fit sigma
    model.train()  # the leak, for contrast: sigma fitted to each scored batch
    assert val_elbo(1) - val_elbo(1000) > 0.1  # a sigma fitted to one example flatters it


def test_per_pixel_log_scale_is_softly_clipped_below():
    clipped = soft_clip_below(torch.tensor([-50.0, -6.0, 0.0, 3.0]), -6.0)
    assert clipped[0] > -6.0 - 1e-6 and clipped[0] < -5.99
    assert torch.allclose(clipped[2:], torch.tensor([0.0, 3.0]), atol=3e-3)


@pytest.mark.parametrize("kl", ["analytic", "monte_carlo"])
def test_three_decompositions_agree_on_the_same_samples(kl):
    torch.manual_seed(0)
    model, *_ = linear_gaussian(latent=GaussianLatent(3, kl=kl))
    x = torch.randn(16, 6, dtype=torch.float64)
    posterior = model.posterior(x)
    z = model.latent.sample(posterior, 4)  # (S, B, K)
    recon = model.log_likelihood(x, z).mean(0)
    div = model.latent.divergence_terms(posterior, z)
    # (4) KL = CE - H
    assert torch.allclose(div["kl"], div["cross_entropy"] - div["entropy"], atol=1e-12)
    # (2) recon - KL  ==  (3) energy + entropy, with energy = E_q[log p(x|z)] + E_q[log p(z)] = recon - CE
    assert torch.allclose(recon - div["kl"], (recon - div["cross_entropy"]) + div["entropy"], atol=1e-12)
    if kl == "monte_carlo":  # on the samples themselves: E_q[log p(x,z) - log q(z|x)]
        joint = model.log_likelihood(x, z) + model.latent.log_prior(z)
        direct = (joint - posterior.log_prob(z)).mean(0)
        assert torch.allclose(recon - div["kl"], direct, atol=1e-10)


def test_entropy_sign_is_negative_for_a_narrow_gaussian():
    latent = GaussianLatent(2)
    posterior = latent.posterior(torch.tensor([[0.0, 0.0, -10.0, -10.0]]))
    assert latent.divergence_terms(posterior, latent.sample(posterior, 1))["entropy"].item() < 0


def test_elbo_is_below_log_px_and_equal_at_the_true_posterior():
    torch.manual_seed(0)
    model, weight, bias, noise = linear_gaussian(latent=GaussianLatent(3, kl="monte_carlo"))
    x = torch.distributions.MultivariateNormal(
        bias, weight @ weight.T + noise**2 * torch.eye(6, dtype=torch.float64)).sample((32,))
    log_px = exact_log_px(x, weight, bias, noise)
    estimator = Reparameterized(num_samples=4000)
    with torch.no_grad():
        elbo = estimator(model, x).elbo  # random encoder: strictly below
        assert torch.all(elbo < log_px - 0.1)
        set_true_posterior(model, weight, bias, noise)
        one = Reparameterized(num_samples=1)(model, x).elbo  # zero variance at the true posterior
    assert torch.allclose(one, log_px, atol=1e-9)
    model.latent.kl_mode = "analytic"
    with torch.no_grad():
        analytic = estimator(model, x).elbo  # Monte Carlo recon: equal within its standard error
        z = model.latent.sample(model.posterior(x), 4000)
        stderr = model.log_likelihood(x, z).std(0) / math.sqrt(4000)
    assert torch.all((analytic - log_px).abs() < 5 * stderr)


@pytest.mark.parametrize("likelihood", [Gaussian(), ContinuousBernoulli()])
def test_continuous_likelihoods_fit_dequantised_data(likelihood):
    levels = torch.arange(256.0).repeat(40)
    x = likelihood.prepare(levels / 255, torch.Generator().manual_seed(0))
    assert torch.all(x >= levels / 256) and torch.all(x < (levels + 1) / 256)  # (k + u)/256, u in [0,1)
    noise = x * 256 - levels
    assert abs(noise.mean().item() - 0.5) < 0.02 and abs(noise.var().item() - 1 / 12) < 0.005  # U[0,1)
    top = likelihood.prepare(torch.ones(2_000_000), torch.Generator().manual_seed(0))  # level 255: [255/256, 1)
    assert top.max() < 1  # (255 + u)/256 rounded to 1.0 in float32 for about 2^-17 of the draws
    likelihood.dequantize = False
    assert torch.equal(likelihood.prepare(levels / 255), levels / 255)


def test_gradient_statistics_are_unbiased_for_the_mean_and_the_trace():
    from vae_cli.diagnostics import gradient_statistics
    gen = torch.Generator().manual_seed(0)
    mean = torch.full((500,), 0.1, dtype=torch.float64)  # ||E g||^2 = 5, tr(Cov) = 500 * 4 = 2000
    stats = [gradient_statistics(mean + 2 * torch.randn(16, 500, generator=gen, dtype=torch.float64))
             for _ in range(200)]
    avg_mean_sq = sum(s["grad_mean_sq_norm"] for s in stats) / len(stats)
    avg_variance = sum(s["grad_variance"] for s in stats) / len(stats)
    assert abs(avg_variance - 2000) < 20
    assert abs(avg_mean_sq - 5) < 2.5  # uncorrected it would be 5 + 2000/16 = 130
