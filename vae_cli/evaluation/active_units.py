"""Latent means E_q[z|x] over a data set, and the active units among the latent variables (Burda et al.)."""
import torch

# Burda et al. (2016, section 5.2): unit u is active when A_u = Cov_x(E_q[u]) > 0.01.
ACTIVE_THRESHOLD = 0.01


@torch.inference_mode()
def latent_means(model, x: torch.Tensor, batch_size: int) -> torch.Tensor:
    """E_q[z|x] for every row of x (N, D): loc (N, K) for Gaussian latents, the posterior class
    probabilities (N, V, C) for one-hot categorical latents."""
    return torch.cat([model.posterior(x[i:i + batch_size]).mean for i in range(0, x.shape[0], batch_size)])


def activity(means: torch.Tensor) -> torch.Tensor:
    """A_v, one figure per latent variable v: (V,).

    Gaussian: A_v = Var_x(E_q[z_v]) (Burda et al. 2016). Categorical one-hot z_v: E_q[z_v] = q_v(x), the
    vector of class probabilities, and A_v = trace Cov_x(q_v(x)) = sum_c Var_x(q_vc(x)). A variable whose
    posterior does not depend on x (for a uniform prior, the collapsed posterior is uniform) has A_v = 0:
    the decoder can learn nothing about x from it. For C = 2 classes, A_v = 2 Var_x(q_v1).
    """
    variance = means.var(0)  # (N, V) -> (V,) or (N, V, C) -> (V, C)
    return variance.flatten(1).sum(1) if variance.dim() > 1 else variance


def active_units(unit_activity: torch.Tensor, threshold: float = ACTIVE_THRESHOLD) -> int:
    """How many latent variables have A_v > threshold (0.01, Burda et al. 2016), of activity(means)."""
    return int((unit_activity > threshold).sum())
