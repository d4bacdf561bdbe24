"""The reparameterized ELBO step with its gradient written out by hand: the CPU training fast path.

Same estimator as Reparameterized (one sample, analytic KL), same random draws in the same order, so
the two give the same parameters up to float rounding (tests/test_fused_step.py checks the gradients
against autograd, and whole steps against AutogradStep). Written for the common case only: an MLP of
Linear layers with ReLU or tanh between them, a Gaussian latent with the closed-form KL, and a
Bernoulli likelihood or a Gaussian one with one sigma (learned or fixed). Anything else trains through
autograd (unsupported_reason says why); train_step.make_train_step chooses between the two.
What it buys (benchmarks/README.md, "Training step"): no autograd graph, so fewer allocations and
operator dispatches, and the 1/B of the batch mean folded into the matrix products. Public torch
operators only.
"""
import torch
import torch.nn.functional as F
from torch import nn

from vae_cli.estimators.reparam import Reparameterized
from vae_cli.estimators.terms import TERM_NAMES
from vae_cli.latents.gaussian import GaussianLatent
from vae_cli.likelihoods import LOG_2PI, Bernoulli, Gaussian
from vae_cli.model import VAE

ACTIVATIONS = (nn.ReLU, nn.Tanh)
GAUSSIAN_SCALES = ("learned", "fixed")  # one shared sigma; per-pixel and optimal sigma train by autograd


def _layers(net: nn.Sequential) -> tuple[list[nn.Linear], list[nn.Module]] | None:
    """(linears, activations) of Linear, act, Linear, ..., Linear; None for any other shape."""
    modules = list(net)
    linears, activations = modules[0::2], modules[1::2]
    if not all(type(m) is nn.Linear for m in linears) or len(linears) != len(activations) + 1:
        return None
    if not all(type(a) in ACTIVATIONS for a in activations) or not all(m.bias is not None for m in linears):
        return None
    return linears, activations


def _activate(h: torch.Tensor, activation: nn.Module) -> torch.Tensor:
    return h.relu_() if type(activation) is nn.ReLU else h.tanh_()


def _activation_backward(grad: torch.Tensor, output: torch.Tensor, activation: nn.Module) -> torch.Tensor:
    """d loss / d pre-activation from d loss / d output (grad, overwritten), using the output only."""
    # Two elementwise passes (~12 us for 128 x 400 on one core); masked_fill_ or where with a boolean
    # mask took 90-240 us here.
    if type(activation) is nn.ReLU:
        return grad.mul_(torch.sign(output))  # output >= 0: sign is 1 where output > 0, else 0
    return grad.mul_(torch.addcmul(torch.ones_like(output), output, output, value=-1))  # grad (1 - output^2)


def unsupported_reason(model: nn.Module, estimator: nn.Module) -> str | None:
    """None when FusedReparamStep computes this model's step; else what rules it out."""
    if type(model) is not VAE:  # a subclass may compute posterior, decode or log_likelihood its own way
        return f"it computes vae_cli.model.VAE's own forward pass, not that of its subclass {type(model).__name__}"
    if type(estimator) is not Reparameterized or estimator.num_samples != 1:
        return "it needs estimator=reparam with estimator.num_samples=1"
    if type(model.latent) is not GaussianLatent or model.latent.kl_mode != "analytic":
        return "it needs latent=gaussian with latent.kl=analytic"
    likelihood = model.likelihood
    one_sigma_gaussian = type(likelihood) is Gaussian and likelihood.scale in GAUSSIAN_SCALES
    if not (type(likelihood) is Bernoulli or one_sigma_gaussian):
        return ("it needs likelihood=bernoulli, or likelihood=gaussian with likelihood.scale in "
                f"{GAUSSIAN_SCALES}")
    if _layers(model.encoder) is None or _layers(model.decoder) is None:
        return f"it needs Linear layers with model.activation in {[a.__name__.lower() for a in ACTIVATIONS]}"
    if any(p.requires_grad for p in model.latent.parameters()):
        return "it has no gradient for latent parameters"
    return None


class FusedReparamStep:
    """One training step of the reparameterized ELBO, its gradient written by hand (no autograd).

    loss = mean_b [beta KL(q(z|x_b) || p(z)) - log p(x_b|z_b)], z = loc + exp(log_var / 2) * eps
    (docs/math.md 6; Kingma & Welling 2014, the KL from their Appendix B).
    Backward, per example (then / B):
        d/d logits = sigmoid(logits) - x                    (Bernoulli from logits)
        d/d mean = (mean - x) / sigma^2;  d/d log sigma = sum_d [1 - (x_d - mean_d)^2 / sigma^2]   (Gaussian)
        d/d loc = d/dz + beta loc;  d/d log_var = d/dz * eps * scale / 2 + beta (scale^2 - 1) / 2
    step(x) writes d loss / d theta into each parameter's .grad, clips the gradient norm if asked
    (torch.nn.utils.clip_grad_norm_), and calls optimizer.step(); it returns the batch means of the
    named terms in TERM_NAMES order (6,), as Terms.stacked_means does. Same interface as AutogradStep
    (train_step.py).
    """

    name = "fused"

    def __init__(self, model: nn.Module, optimizer, beta: float,
                 clip_grad_norm: float | None = None):
        reason = unsupported_reason(model, Reparameterized())
        assert reason is None, reason
        self.encoder, self.encoder_activations = _layers(model.encoder)
        self.decoder, self.decoder_activations = _layers(model.decoder)
        self.num_vars = model.latent.num_vars
        self.likelihood = model.likelihood
        self.optimizer = optimizer
        self.clip_grad_norm = clip_grad_norm
        self.grad_norm = None  # the last step's total gradient norm before clipping (when clipping)
        self.beta = beta = float(beta)
        k = self.num_vars
        # means = A @ [recon_sum, sum loc^2 + scale^2, sum log_var] / B + c: kl = (sq - lv) / 2 - K/2;
        # entropy = K (log 2 pi + 1) / 2 + lv / 2; cross_entropy = H + KL = K log(2 pi) / 2 + sq / 2
        # (GaussianLatent's closed forms, summed over the batch). Rows: (A row, c) per term.
        rows = {"recon": ([1.0, 0.0, 0.0], 0.0),
                "kl": ([0.0, 0.5, -0.5], -0.5 * k),
                "entropy": ([0.0, 0.0, 0.5], 0.5 * k * (LOG_2PI + 1)),
                "cross_entropy": ([0.0, 0.5, 0.0], 0.5 * k * LOG_2PI),
                "elbo": ([1.0, -0.5, 0.5], 0.5 * k),  # recon - kl
                "loss": ([-1.0, 0.5 * beta, -0.5 * beta], -0.5 * k * beta)}  # beta kl - recon
        weight = self.encoder[0].weight  # the constants in float64, rounded once to the model's dtype
        matrix, offset = zip(*(rows[name] for name in TERM_NAMES))  # in the order Terms uses
        self.term_matrix = torch.tensor(matrix, dtype=torch.float64).to(weight)
        self.term_offset = torch.tensor(offset, dtype=torch.float64).to(weight)
        self.batch_weights = torch.empty(0)  # 1/B per example: bias gradients are batch means

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Gradients, clipping, optimizer.step() on a prepared batch x (B, D); the 6 term means."""
        means = self.gradients(x)
        if self.clip_grad_norm is not None:
            self.grad_norm = nn.utils.clip_grad_norm_(
                [p for group in self.optimizer.param_groups for p in group["params"]], self.clip_grad_norm)
        self.optimizer.step()
        return means

    def extras(self) -> dict:
        """Estimator diagnostics: none for this estimator; the gradient norm when clipping."""
        return {} if self.grad_norm is None else {"grad_norm": self.grad_norm}

    @torch.no_grad()
    def gradients(self, x: torch.Tensor) -> torch.Tensor:
        """Write d loss / d theta into each parameter's .grad (every entry overwritten); the 6 term means."""
        batch, k, beta = x.shape[0], self.num_vars, self.beta
        inv_batch = 1.0 / batch
        weights = self.batch_weights
        if weights.shape[0] != batch or weights.dtype != x.dtype or weights.device != x.device:
            self.batch_weights = torch.full((batch,), inv_batch, dtype=x.dtype, device=x.device)
        inputs, latent_params = self._forward(self.encoder, self.encoder_activations, x)  # (B, 2K)
        loc, log_var = latent_params[:, :k], latent_params[:, k:]  # (B, K) each, as GaussianLatent splits
        var = torch.exp(log_var)
        scale = torch.sqrt(var)
        eps = torch.randn(loc.shape, dtype=loc.dtype, device=loc.device)  # rsample((1,))'s draws, in order
        z = torch.addcmul(loc, scale, eps)  # (B, K)
        decoder_inputs, likelihood_params = self._forward(self.decoder, self.decoder_activations, z)  # (B, D)

        # the terms (the KL in closed form); grad = d (B loss) / d (a layer's output), the 1/B is applied
        # in the products
        recon, grad = self._likelihood_terms(x, likelihood_params, inv_batch)
        sums = torch.stack([recon, torch.addcmul(var, loc, loc).sum(), log_var.sum()])  # (3,): batch sums
        means = torch.addmv(self.term_offset, self.term_matrix, sums, alpha=inv_batch)  # (6,)
        grad = self._backward(self.decoder, self.decoder_activations, decoder_inputs, grad, inv_batch)  # at z
        grad_params = torch.cat([torch.add(grad, loc, alpha=beta),  # at loc: d/dz + beta loc
                                 torch.addcmul(torch.sub(var, 1).mul_(0.5 * beta), grad.mul_(eps), scale,
                                               value=0.5)], dim=1)  # at log_var; (B, 2K)
        self._backward(self.encoder, self.encoder_activations, inputs, grad_params, inv_batch,
                       first_input_grad=False)
        return means

    def _likelihood_terms(self, x: torch.Tensor, params: torch.Tensor, inv_batch: float):
        """(sum over the batch of log p(x|z), d (-B recon) / d params) for the decoder's output params
        (B, D): Bernoulli logits or the Gaussian mean. A learned Gaussian sigma gets its .grad here."""
        if type(self.likelihood) is Bernoulli:  # log p = -sum_d BCE(l, x) = -sum_d [softplus(l) - x l]
            # summed per pixel, not as sum(x l) - sum(softplus(l)): two large float32 sums would cancel
            recon = -F.softplus(params).addcmul_(x, params, value=-1).sum()
            return recon, torch.sigmoid(params).sub_(x)
        # Gaussian, params = the mean m:
        # log p = sum_d [-log(2 pi) / 2 - log sigma - (x_d - m_d)^2 / (2 sigma^2)]
        log_sigma = self.likelihood.log_sigma
        self.likelihood.last_log_scale = log_sigma.detach()  # as Gaussian.log_prob keeps it, for logging
        residual = torch.sub(x, params)  # (B, D)
        squares = torch.dot(residual.reshape(-1), residual.reshape(-1))
        precision = torch.exp(-2 * log_sigma)
        recon = -params.numel() * (0.5 * LOG_2PI + log_sigma) - 0.5 * precision * squares
        if log_sigma.requires_grad:  # d loss / d log sigma = (B D - squares / sigma^2) / B
            log_sigma.grad = (params.numel() - precision * squares) * inv_batch
        return recon, residual.mul_(-precision)

    @staticmethod
    def _forward(layers, activations, h: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """(each Linear's input, kept for its weight gradient; the last layer's output h W^T + b)."""
        inputs = []
        for i, layer in enumerate(layers):
            inputs.append(h)
            h = torch.addmm(layer.bias, h, layer.weight.t())  # (B, n_out)
            if i < len(activations):
                h = _activate(h, activations[i])
        return inputs, h

    def _backward(self, layers, activations, inputs, grad, inv_batch: float, first_input_grad: bool = True):
        """Backpropagate grad = d (B loss) / d (last layer output) through layers, writing d loss / d W, b
        into .grad; returns d (B loss) / d (first layer input) (None if not first_input_grad)."""
        for i in range(len(layers) - 1, -1, -1):
            layer, layer_input = layers[i], inputs[i]
            for p in (layer.weight, layer.bias):
                if p.grad is None:  # kept between steps (no zero_grad): every entry is overwritten
                    p.grad = torch.empty_like(p)
            # d loss / d W = grad^T input / B (beta=0: the old .grad is not read); d loss / d b = batch mean
            torch.addmm(layer.weight.grad, grad.t(), layer_input, beta=0, alpha=inv_batch,
                        out=layer.weight.grad)
            torch.mv(grad.t(), self.batch_weights, out=layer.bias.grad)
            # at the layer's input (not needed at the data): grad W
            grad = torch.mm(grad, layer.weight) if i > 0 or first_input_grad else None
            if i > 0:
                grad = _activation_backward(grad, layer_input, activations[i - 1])
        return grad
