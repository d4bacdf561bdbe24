"""Semi-supervised probe (MATH.md 6): logistic regression on n labelled examples per class, test accuracy."""
import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from vae_cli.errors import ConfigError

MAX_ITER = 1000  # L-BFGS iterations: enough for standardised features on every size tried here


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
    if per_class == "all":
        return np.arange(len(labels))
    order = np.random.default_rng(seed).permutation(len(labels))
    chosen = [order[labels[order] == c][:per_class] for c in np.unique(labels)]
    return np.sort(np.concatenate(chosen))


def probe_accuracy(train_features: np.ndarray, train_labels: np.ndarray, test_features: np.ndarray,
                   test_labels: np.ndarray) -> float:
    """Test accuracy of a multinomial logistic regression fitted on standardised training features."""
    classifier = make_pipeline(StandardScaler(), LogisticRegression(max_iter=MAX_ITER))
    # float64: scikit-learn's loss and gradient run in it, and float32 input would be cast every step
    classifier.fit(train_features.astype(np.float64), train_labels)
    return float(classifier.score(test_features.astype(np.float64), test_labels))


def probe(features: dict, train_labels: np.ndarray, test_labels: np.ndarray, sizes, seed: int) -> dict:
    """Accuracy per feature set and size: {"<name>_n<size>": accuracy} ("<name>_all" for all).

    features maps a name (e.g. "latent", "pixels") to (train_features (N, F), test_features (M, F)).
    """
    accuracy = {}
    for per_class in check_sizes(sizes):
        index = labelled_subset(train_labels, per_class, seed)
        suffix = "all" if per_class == "all" else f"n{per_class}"
        for name, (train_features, test_features) in features.items():
            accuracy[f"{name}_{suffix}"] = probe_accuracy(
                train_features[index], train_labels[index], test_features, test_labels)
    return accuracy
