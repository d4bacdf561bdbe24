"""Semi-supervised probe (docs/math.md 10): logistic regression on n labelled examples per class, test accuracy.

The classifier is scikit-learn's default LogisticRegression on standardised features (StandardScaler),
written in torch so that it runs on the features' device in seconds: multinomial, with an intercept
and the L2 penalty of C = 1 on the weights only (scikit-learn's user guide, "Logistic regression",
multinomial case):

    min_{W, b}  sum_i -log softmax(W x_i + b)_{y_i}  +  1/2 ||W||_F^2

minimised by full-batch L-BFGS (torch.optim.LBFGS, strong Wolfe line search). tests/test_probe.py
checks accuracy, coefficients and loss against scikit-learn itself.
"""
import numpy as np
import torch

from vae_cli.errors import ConfigError

MAX_ITER = 1000  # L-BFGS iterations at most (the scikit-learn probe used max_iter=1000 as well)
# scikit-learn's stopping rule (lbfgs, tol=1e-4): the largest entry of the gradient of the objective
# divided by N, in W and b, at most this. Checked every CHECK_EVERY iterations.
TOLERANCE = 1e-4
CHECK_EVERY = 10
HISTORY = 20  # L-BFGS memory


def check_sizes(sizes) -> list:
    """eval.probe_sizes: labelled examples per class, positive integers, or "all" (the whole train split)."""
    sizes = list(sizes)
    for n in sizes:
        if n != "all" and not (isinstance(n, int) and not isinstance(n, bool) and n > 0):
            raise ConfigError(f"eval.probe_sizes={sizes!r}: {n!r} is not accepted; use positive integers "
                              "(labelled examples per class) or all, e.g. eval.probe_sizes=[10,100,all]")
    return sizes


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

    Preconditioned: L-BFGS runs on U with W = U L^-1, where L L^T = P = N S / C + I is the curvature
    of the objective in W at the start (S the standardised features' covariance, 1/C the softmax's
    curvature at uniform probabilities, I the penalty's), so that the curvature in U starts at the
    identity. The objective and its minimiser are unchanged; with collinear features (class
    probabilities that sum to one) L-BFGS needs ~10x fewer steps than on W. The (N, F) features stay
    float32 (their products are memory-bound); weights, losses and sums over examples are float64.
    It runs on the process's intra-op threads, the run's `threads` setting, like the rest of vae-train
    (benchmarks/eval_throughput.py prints the fit with one thread beside it).
    """

    def __init__(self, penalty: float = 1.0, max_iter: int = MAX_ITER, tolerance: float = TOLERANCE):
        self.penalty, self.max_iter, self.tolerance = penalty, max_iter, tolerance  # penalty = 1 / C

    def _standardise(self, x: torch.Tensor) -> torch.Tensor:
        return ((x.to(torch.float64) - self.mean) / self.std).to(torch.float32)

    def fit(self, x: torch.Tensor, y: torch.Tensor) -> "LogisticRegression":
        x = torch.as_tensor(x)
        y = torch.as_tensor(y, device=x.device)
        self.classes, target = torch.unique(y, return_inverse=True)  # labels -> 0..C-1
        num, num_classes = x.shape[0], len(self.classes)
        x64 = x.to(torch.float64)
        self.mean = x64.mean(0)
        self.std = x64.std(0, correction=0)
        self.std[self.std == 0] = 1.0  # as StandardScaler: a constant feature stays 0, not NaN
        features = self._standardise(x)  # (N, F)
        covariance = (features.T @ features).to(torch.float64) / num  # S, (F, F)
        identity = torch.eye(len(covariance), dtype=torch.float64, device=x.device)
        factor = torch.linalg.cholesky(num / num_classes * covariance + self.penalty * identity)  # L L^T = P
        inverse_factor = torch.linalg.solve_triangular(factor, identity, upper=False)  # M = L^-1: W = U M
        features_t = features.T.contiguous()  # (F, N): logits and their reductions run along N
        one_hot_t = torch.nn.functional.one_hot(target, num_classes).T.to(torch.float64)  # (C, N)
        one_hot_t32 = one_hot_t.to(torch.float32)
        u = torch.zeros(num_classes, features.shape[1], dtype=torch.float64, device=x.device)
        bias = torch.zeros(num_classes, dtype=torch.float64, device=x.device)
        bias_scale = (num / num_classes) ** -0.5  # the intercept's curvature, N / C, rescaled to 1
        optimizer = torch.optim.LBFGS([u, bias], lr=1, max_iter=CHECK_EVERY, max_eval=25 * CHECK_EVERY,
                                      history_size=HISTORY, tolerance_grad=0.0, tolerance_change=1e-12,
                                      line_search_fn="strong_wolfe")
        largest_gradient = []  # per closure call: the largest entry of the (W, b) gradient of loss / N

        def closure():  # the objective and its gradient in (U, b), written out: no autograd graph
            weight = u @ inverse_factor  # (C, F)
            logits = (weight.to(torch.float32) @ features_t).to(torch.float64) + (bias * bias_scale)[:, None]
            log_probs = torch.log_softmax(logits, 0)  # (C, N)
            loss = -(log_probs * one_hot_t).sum() + 0.5 * self.penalty * weight.pow(2).sum()
            # d loss / d logits, (C, N), in float32 as the product it feeds (exp in float64 took as long
            # as that product); its sum over the examples is taken in float64
            residual = log_probs.to(torch.float32).exp_().sub_(one_hot_t32)
            weight_grad = (residual @ features).to(torch.float64) + self.penalty * weight
            bias_grad = residual.sum(1, dtype=torch.float64)
            u.grad = weight_grad @ inverse_factor.T
            bias.grad = bias_grad * bias_scale
            largest_gradient.append(max(weight_grad.abs().max(), bias_grad.abs().max()) / num)
            return loss

        loss = closure()
        while optimizer.state[u].get("n_iter", 0) < self.max_iter and largest_gradient[-1] > self.tolerance:
            before = optimizer.state[u].get("n_iter", 0), loss  # L-BFGS's history carries over calls
            optimizer.step(closure)
            loss = closure()  # and the gradient, where the iterations ended
            if optimizer.state[u]["n_iter"] == before[0] or before[1] - loss <= 1e-12 * abs(loss):
                break  # no progress left in float32 products: as close as they allow
        self.weight = u @ inverse_factor  # (C, F), on standardised features
        self.bias = bias * bias_scale
        self.loss = float(closure())  # the objective at the solution, in nats (sum over examples)
        self.iterations = optimizer.state[u]["n_iter"]
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
    for per_class in check_sizes(sizes):
        index = torch.as_tensor(labelled_subset(train_labels.cpu().numpy(), per_class, seed))
        suffix = "all" if per_class == "all" else f"n{per_class}"
        for name, (train_features, test_features) in features.items():
            train_features = torch.as_tensor(train_features)
            accuracy[f"{name}_{suffix}"] = probe_accuracy(
                train_features[index.to(train_features.device)], train_labels[index].to(train_features.device),
                test_features, test_labels)
    return accuracy
