"""Semi-supervised probe (docs/math.md 10): logistic regression on n labelled examples per class, test accuracy.

The classifier is scikit-learn's default LogisticRegression on standardised features (StandardScaler),
written in torch so that it runs on the features' device in seconds: multinomial, with an intercept
and the L2 penalty of C = 1 on the weights only (scikit-learn's user guide, "Logistic regression",
multinomial case):

    min_{W, b}  sum_i -log softmax(W x_i + b)_{y_i}  +  1/2 ||W||_F^2

minimised by full-batch L-BFGS (minimise() below: Nocedal & Wright's two-loop recursion and a
backtracking line search, written out: building torch.optim.LBFGS would import torch's compiler stack,
1.0-1.5 s, which vae-train's training no longer imports; vae_cli/optim.py). tests/test_probe.py checks
accuracy, coefficients and loss against scikit-learn itself.
"""
import logging

import numpy as np
import torch

from vae_cli.eval_data import check_sizes

log = logging.getLogger(__name__)

MAX_ITER = 1000  # L-BFGS iterations at most (the scikit-learn probe used max_iter=1000 as well)
# scikit-learn's stopping rule (lbfgs, tol=1e-4): the largest entry of the gradient of the objective
# divided by N, in W and b, at most this.
TOLERANCE = 1e-4
HISTORY = 20  # L-BFGS memory
ARMIJO = 1e-4  # sufficient decrease: loss(x + t d) <= loss(x) + ARMIJO t g.d
NOISE = 1e-6  # the approximate Wolfe conditions allow this relative rise of the loss (Hager & Zhang 2005)
STALL_CHECK = 10  # iterations between checks that the loss still falls


def minimise(evaluate, x: torch.Tensor, max_iter: int, tolerance: float):
    """L-BFGS on a smooth convex objective: evaluate(x) -> (loss, gradient, largest), `largest` the
    figure the stopping rule compares with tolerance. Directions by the two-loop recursion over the last
    HISTORY pairs (s, y) (Nocedal & Wright 2006, algorithms 7.4-7.5); steps from t = 1, halved until the
    loss falls by ARMIJO t g.d, or until the slope along d meets the approximate Wolfe conditions.
    Stops at tolerance, after max_iter iterations, when STALL_CHECK iterations lowered the loss by no
    more than 1e-12 of it, or when no step lowers it (float32 products leave the last digits).
    Returns x, its (loss, gradient, largest) and the iterations taken."""
    loss, grad, largest = evaluate(x)
    checked_loss = loss
    pairs = []  # (s, y, 1 / y.s), oldest first
    iterations = 0
    while iterations < max_iter and largest > tolerance:
        direction = -grad
        alphas = []
        for s, y, rho in reversed(pairs):
            alphas.append(rho * (s @ direction))
            direction -= alphas[-1] * y
        if pairs:
            s, y, _ = pairs[-1]
            direction *= (s @ y) / (y @ y)  # the initial inverse curvature, N & W eq. 7.20
        for (s, y, rho), alpha in zip(pairs, reversed(alphas)):
            direction += (alpha - rho * (y @ direction)) * s
        slope = grad @ direction
        if not slope < 0:  # not a descent direction (curvature pairs gone stale): steepest descent afresh
            pairs, direction, slope = [], -grad, -(grad @ grad)
        step = 1.0
        while True:
            new_x = x + step * direction
            new_loss, new_grad, new_largest = evaluate(new_x)
            if new_loss <= loss + ARMIJO * step * slope:
                break
            new_slope = new_grad @ direction  # near the optimum the loss's float32 rounding exceeds its fall:
            if new_loss <= loss + NOISE * abs(loss) and 0.9 * slope <= new_slope <= (2 * ARMIJO - 1) * slope:
                break  # Hager & Zhang's approximate Wolfe conditions, on the (accurate) directional slope
            step /= 2
            if step < 1e-10:
                return x, (loss, grad, largest), iterations
        s, y = new_x - x, new_grad - grad
        if s @ y > 1e-12 * (s @ s) ** 0.5 * (y @ y) ** 0.5:  # positive curvature: keep the pair
            pairs = [*pairs[-(HISTORY - 1):], (s, y, 1 / (s @ y))]
        x, loss, grad, largest = new_x, new_loss, new_grad, new_largest
        iterations += 1
        if iterations % STALL_CHECK == 0:  # no progress left in float32 products
            if checked_loss - loss <= 1e-12 * abs(loss):
                break
            checked_loss = loss
    return x, (loss, grad, largest), iterations


def labelled_subset(labels: np.ndarray, per_class, seed: int) -> np.ndarray:
    """Indices of per_class examples of each class, drawn by a seeded permutation; "all": every index.

    The draw is nested (the first 10 of each class are among the first 100) and the same for every
    feature set, so the latent and the pixel probes see exactly the same labelled examples.
    """
    labels = np.asarray(labels)
    if per_class == "all":
        return np.arange(len(labels))
    order = np.random.default_rng(seed).permutation(len(labels))
    chosen = [order[labels[order] == c][:per_class] for c in np.unique(labels)]
    return np.sort(np.concatenate(chosen))


class LogisticRegression:
    """Multinomial logistic regression with scikit-learn's defaults (C = 1, intercept unpenalised) on
    standardised features: fit(x, y), then predict(x) or score(x, y).

    Preconditioned: L-BFGS runs on U with W = U L^-1, where L L^T = P = N S / K + I / C is the curvature
    of the objective in W at the start (S the standardised features' covariance, 1/K the softmax's
    curvature at uniform probabilities over K classes, I / C the penalty's: I at C = 1), so that the
    curvature in U starts at the identity. The objective and its minimiser are unchanged; with collinear
    features (class probabilities that sum to one) L-BFGS needs ~10x fewer steps than on W. The (N, F)
    features stay float32 (their products are memory-bound); weights, losses and sums over examples are float64.
    It runs on the process's intra-op threads, the run's `threads` setting, like the rest of vae-train
    (benchmarks/eval_throughput.py prints the fit with one thread beside it).
    """

    def __init__(self, penalty: float = 1.0, max_iter: int = MAX_ITER, tolerance: float = TOLERANCE):
        self.penalty, self.max_iter, self.tolerance = penalty, max_iter, tolerance  # penalty = 1 / C

    def _standardise(self, x: torch.Tensor) -> torch.Tensor:
        """(x - mean) / std in float32, the precision the products take them in: no float64 copy of x."""
        return (x.to(torch.float32) - self.mean.to(torch.float32)).div_(self.std.to(torch.float32))

    def fit(self, x: torch.Tensor, y: torch.Tensor) -> "LogisticRegression":
        x = torch.as_tensor(x)
        y = torch.as_tensor(y, device=x.device)
        self.classes, target = torch.unique(y, return_inverse=True)  # labels -> 0..C-1
        num, num_classes = x.shape[0], len(self.classes)
        self.mean = x.mean(0, dtype=torch.float64)
        centred = x.to(torch.float32) - self.mean.to(torch.float32)  # (N, F)
        self.std = centred.pow(2).mean(0, dtype=torch.float64).sqrt()  # about the mean rounded to float32
        self.std[self.std == 0] = 1.0  # as StandardScaler: a constant feature stays 0, not NaN
        features = centred.div_(self.std.to(torch.float32))  # (N, F), standardised
        covariance = (features.T @ features).to(torch.float64) / num  # S, (F, F)
        identity = torch.eye(len(covariance), dtype=torch.float64, device=x.device)
        factor = torch.linalg.cholesky(num / num_classes * covariance + self.penalty * identity)  # L L^T = P
        inverse_factor = torch.linalg.solve_triangular(factor, identity, upper=False)  # M = L^-1: W = U M
        features_t = features.T.contiguous()  # (F, N): logits and their reductions run along N
        one_hot_t = torch.nn.functional.one_hot(target, num_classes).T.to(torch.float64)  # (C, N)
        one_hot_t32 = one_hot_t.to(torch.float32)
        num_features = features.shape[1]
        bias_scale = (num / num_classes) ** -0.5  # the intercept's curvature, N / K, rescaled to 1

        def evaluate(theta):  # the objective and its gradient in (U, b) flattened, written out: no autograd
            u, bias = theta[:-num_classes].view(num_classes, num_features), theta[-num_classes:] * bias_scale
            weight = u @ inverse_factor  # (C, F)
            logits = (weight.to(torch.float32) @ features_t).to(torch.float64) + bias[:, None]
            log_probs = torch.log_softmax(logits, 0)  # (C, N)
            loss = -(log_probs * one_hot_t).sum() + 0.5 * self.penalty * weight.pow(2).sum()
            # d loss / d logits, (C, N), in float32 as the product it feeds (exp in float64 took as long
            # as that product); its sum over the examples is taken in float64
            residual = log_probs.to(torch.float32).exp_().sub_(one_hot_t32)
            weight_grad = (residual @ features).to(torch.float64) + self.penalty * weight
            bias_grad = residual.sum(1, dtype=torch.float64)
            grad = torch.cat([(weight_grad @ inverse_factor.T).flatten(), bias_grad * bias_scale])
            largest = float(max(weight_grad.abs().max(), bias_grad.abs().max())) / num
            return float(loss), grad, largest

        start = torch.zeros(num_classes * (num_features + 1), dtype=torch.float64, device=x.device)
        theta, (self.loss, _, _), self.iterations = minimise(evaluate, start, self.max_iter, self.tolerance)
        self.weight = theta[:-num_classes].view(num_classes, num_features) @ inverse_factor  # (C, F), standardised
        self.bias = theta[-num_classes:] * bias_scale
        return self

    def decision_function(self, x: torch.Tensor) -> torch.Tensor:
        features = self._standardise(torch.as_tensor(x, device=self.mean.device))  # (M, F)
        return (features @ self.weight.T.to(torch.float32)).to(torch.float64) + self.bias  # (M, C)

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return self.classes[self.decision_function(x).argmax(1)]

    def score(self, x: torch.Tensor, y: torch.Tensor) -> float:
        y = torch.as_tensor(y, device=self.mean.device)
        return float((self.predict(x) == y).to(torch.float64).mean())


def probe_accuracy(train_features, train_labels, test_features, test_labels) -> float:
    """Test accuracy of a multinomial logistic regression fitted on standardised training features."""
    return LogisticRegression().fit(train_features, train_labels).score(test_features, test_labels)


def probe(features: dict, train_labels, test_labels, sizes, seed: int) -> dict:
    """Accuracy per feature set and size: {"<name>_n<size>": accuracy} ("<name>_all" for all).

    features maps a name (e.g. "latent", "pixels") to (train_features (N, F), test_features (M, F)),
    tensors (on any device) or arrays; labels likewise.
    """
    accuracy = {}
    train_labels = torch.as_tensor(train_labels)
    fewest = int(torch.unique(train_labels, return_counts=True)[1].min())
    for per_class in check_sizes(sizes):
        if per_class != "all" and per_class > fewest:  # a user review: n100000 was read as 100,000 labels
            log.warning("eval.probe_sizes: %d labelled images per class is more than the smallest class has "
                        "(%d): probe/*_n%d takes every image of the classes smaller than that", per_class, fewest,
                        per_class)
        index = torch.as_tensor(labelled_subset(train_labels.cpu().numpy(), per_class, seed))
        suffix = "all" if per_class == "all" else f"n{per_class}"
        for name, (train_features, test_features) in features.items():
            train_features = torch.as_tensor(train_features)
            accuracy[f"{name}_{suffix}"] = probe_accuracy(
                train_features[index.to(train_features.device)], train_labels[index].to(train_features.device),
                test_features, test_labels)
    return accuracy
