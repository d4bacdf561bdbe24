"""The torch probe against scikit-learn's LogisticRegression (a test dependency only) and its own optimum."""
import math
import subprocess
import sys

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression as SklearnLogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from vae_cli.evaluation.probe import LogisticRegression, probe


def blobs(seed: int, num: int, labels=(0, 1, 2, 3)):
    """Overlapping Gaussian classes in 6 features, plus a constant and a collinear feature (8 in all),
    on unequal scales; labels need not be 0..C-1."""
    rng = np.random.default_rng(seed)
    y = rng.choice(np.array(labels), num)
    centres = np.random.default_rng(99).normal(size=(max(labels) + 1, 6))
    x = centres[y] + 1.5 * rng.normal(size=(num, 6))
    x = x * np.array([1, 10, 0.1, 1, 3, 100])
    x = np.concatenate([x, np.full((num, 1), 7.0), x[:, :1] - 2 * x[:, 3:4]], 1)  # constant, collinear
    return x.astype(np.float32), y


def objective(weight, bias, x_standard, y_index):
    """sum_i -log softmax(W x_i + b)_{y_i} + 1/2 ||W||^2, in float64 with autograd (the reference)."""
    logits = x_standard @ weight.T + bias
    return torch.nn.functional.cross_entropy(logits, y_index, reduction="sum") + 0.5 * weight.pow(2).sum()


def sklearn_fit(x, y, tol):
    return make_pipeline(StandardScaler(), SklearnLogisticRegression(max_iter=10_000, tol=tol)).fit(
        x.astype(np.float64), y)


@pytest.mark.parametrize("labels", [(0, 1, 2, 3), (2, 5, 7)])
def test_matches_scikit_learn_coefficients_loss_and_accuracy(labels):
    x, y = blobs(0, 600, labels)
    test_x, test_y = blobs(1, 4000, labels)
    ours = LogisticRegression(tolerance=1e-8).fit(torch.from_numpy(x), torch.from_numpy(y))
    reference = sklearn_fit(x, y, tol=1e-10)
    scaler, classifier = reference[0], reference[1]
    assert np.allclose(ours.mean.numpy(), scaler.mean_, rtol=1e-6)
    assert np.allclose(ours.std.numpy(), scaler.scale_, rtol=1e-6)  # 1 for the constant feature
    coef = torch.from_numpy(classifier.coef_)
    assert torch.allclose(ours.weight, coef, atol=2e-4 * coef.abs().max()), (ours.weight - coef).abs().max()
    assert torch.allclose(ours.bias, torch.from_numpy(classifier.intercept_), atol=2e-4)
    # scikit-learn minimises the same objective (mean cross-entropy + ||W||^2 / (2 C N), C = 1): equal losses
    standard = torch.from_numpy(scaler.transform(x.astype(np.float64)))
    index = torch.from_numpy(np.searchsorted(np.array(labels), y))
    theirs = objective(coef, torch.from_numpy(classifier.intercept_), standard, index).item()
    assert ours.loss == pytest.approx(theirs, rel=1e-7, abs=1e-6)
    accuracy, sklearn_accuracy = ours.score(test_x, test_y), reference.score(test_x.astype(np.float64), test_y)
    assert abs(accuracy - sklearn_accuracy) < 0.005 and 0.5 < accuracy < 0.95  # informative, not trivial


def test_default_stopping_rule_gives_scikit_learns_accuracy():
    """With both at their default tolerance (scikit-learn's gtol 1e-4 on the mean objective)."""
    x, y = blobs(2, 3000)
    test_x, test_y = blobs(3, 4000)
    ours = LogisticRegression().fit(torch.from_numpy(x), torch.from_numpy(y))
    reference = sklearn_fit(x, y, tol=1e-4)
    assert abs(ours.score(test_x, test_y) - reference.score(test_x.astype(np.float64), test_y)) < 0.005
    optimum = LogisticRegression(tolerance=1e-9).fit(torch.from_numpy(x), torch.from_numpy(y)).loss
    assert 0 <= ours.loss - optimum < 1e-3 * len(y) * 1e-2  # within 1e-5 nats per example of the optimum


def test_solution_is_a_stationary_point_of_the_documented_objective():
    x, y = blobs(4, 500)
    ours = LogisticRegression(tolerance=1e-9).fit(torch.from_numpy(x), torch.from_numpy(y))
    weight, bias = ours.weight.clone().requires_grad_(), ours.bias.clone().requires_grad_()
    standard = (torch.from_numpy(x).double() - ours.mean) / ours.std
    loss = objective(weight, bias, standard, torch.from_numpy(y))
    loss.backward()
    assert loss.item() == pytest.approx(ours.loss, rel=1e-8)  # float32 logits in the fit
    # float32 products limit how close it gets: 1e-5 nats per example, 10x below scikit-learn's default tol
    assert weight.grad.abs().max() < 1e-5 * len(y) and bias.grad.abs().max() < 1e-5 * len(y)
    nudged = objective(weight.detach() * 1.01, bias.detach(), standard, torch.from_numpy(y)).item()
    assert nudged > loss.item()  # a minimum, not merely flat: the penalty is there


def test_probe_is_at_chance_on_noise_and_reads_tensors():
    rng = np.random.default_rng(0)
    train, test = torch.from_numpy(rng.normal(size=(2000, 5))), torch.from_numpy(rng.normal(size=(4000, 5)))
    train_y, test_y = torch.from_numpy(rng.integers(0, 4, 2000)), torch.from_numpy(rng.integers(0, 4, 4000))
    accuracy = probe({"noise": (train, test)}, train_y, test_y, ["all"], seed=0)["noise_all"]
    assert abs(accuracy - 0.25) < 4 * math.sqrt(0.25 * 0.75 / 4000)


def test_a_size_beyond_the_smallest_class_is_said_to_take_all_of_it(caplog):
    """eval.probe_sizes=[100000] reported latent_n100000, the figure of every labelled image (a user review)."""
    rng = np.random.default_rng(0)
    train, test = torch.from_numpy(rng.normal(size=(40, 3))), torch.from_numpy(rng.normal(size=(20, 3)))
    train_y = torch.tensor([0] * 30 + [1] * 10)
    with caplog.at_level("WARNING"):
        figures = probe({"x": (train, test)}, train_y, torch.zeros(20, dtype=torch.long), [10, 20], seed=0)
    assert set(figures) == {"x_n10", "x_n20"}
    (warning,) = [r.getMessage() for r in caplog.records]
    assert warning.startswith("eval.probe_sizes: 20 labelled images per class is more than the smallest class "
                              "has (10): probe/*_n20 takes every image"), warning


def test_the_probe_module_does_not_import_scikit_learn():
    code = "import sys, vae_cli.evaluation.probe; print('sklearn' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == "False", result.stderr
