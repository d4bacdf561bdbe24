"""Adam for vae-train: torch's own Adam update on state kept here, without a torch.optim.Optimizer object.

Constructing any torch.optim optimizer imports torch's compiler stack (Optimizer.add_param_group is
wrapped to keep the compiler out of it): 1.0-1.5 s of vae-train's 2.5-4 s from process start to the
first training step on 2 cores (benchmarks/startup.py --phases). This class calls the public functional
torch.optim.adam.adam, the very update torch.optim.Adam.step() calls, on the same state, and its
state_dict() has torch.optim.Adam's layout, so checkpoints load either way. tests/test_optim.py checks
parameters and state bit for bit against torch.optim.Adam, fused and not, with AMSGrad, weight decay and
AdamW's decoupled decay. The end-of-run probe has its own L-BFGS for the same reason
(vae_cli/evaluation/probe.py); tests/test_optim.py checks that neither vae-train nor vae-eval imports
the compiler.
"""
import torch
from torch.optim.adam import adam

SETTINGS = ("lr", "betas", "eps", "weight_decay", "amsgrad", "maximize", "foreach", "fused",
            "decoupled_weight_decay")


class Adam:
    """Adam (Kingma & Ba 2015) with torch.optim.Adam's arguments and defaults: lr, betas, eps,
    weight_decay (added to the gradient; with decoupled_weight_decay=True it is AdamW's decay), amsgrad,
    maximize, and the kernel: fused or foreach (None: torch's choice for the device). One parameter
    group, all of the parameters given (what vae-train builds); step() updates those with a gradient."""

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, amsgrad: bool = False, *, maximize: bool = False,
                 foreach: bool | None = None, fused: bool | None = None, decoupled_weight_decay: bool = False):
        if not 0.0 <= lr:
            raise ValueError(f"Invalid learning rate: {lr}")
        if not 0.0 <= eps:
            raise ValueError(f"Invalid epsilon value: {eps}")
        betas = tuple(float(beta) for beta in betas)
        if len(betas) != 2 or not all(0.0 <= beta < 1.0 for beta in betas):
            raise ValueError(f"Invalid beta parameters: {betas}; two numbers in [0, 1)")
        if not 0.0 <= weight_decay:
            raise ValueError(f"Invalid weight_decay value: {weight_decay}")
        if fused and foreach:
            raise ValueError("`fused` and `foreach` cannot be `True` together.")
        params = list(params)
        if not params:
            raise ValueError("optimizer got an empty parameter list")
        if not all(isinstance(p, torch.Tensor) for p in params):
            raise TypeError("Adam takes an iterable of tensors (one parameter group)")
        self.defaults = {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay, "amsgrad": amsgrad,
                         "maximize": maximize, "foreach": foreach, "fused": fused,
                         "decoupled_weight_decay": decoupled_weight_decay}
        self.param_groups = [dict(self.defaults, params=params)]
        self.state: dict[torch.Tensor, dict] = {}  # parameter -> step, exp_avg, exp_avg_sq[, max_exp_avg_sq]

    def _state(self, p: torch.Tensor, group: dict) -> dict:
        """p's state, created at its first update as torch.optim.Adam creates it (zeros; a float32 step
        counter on p's device for the fused kernel, else a CPU one of the default float type)."""
        if p not in self.state:
            if group["fused"]:
                step = torch.zeros((), dtype=torch.float32, device=p.device)
            else:
                float64 = torch.get_default_dtype() == torch.float64
                step = torch.tensor(0.0, dtype=torch.float64 if float64 else torch.float32)
            state = {"step": step, "exp_avg": torch.zeros_like(p, memory_format=torch.preserve_format),
                     "exp_avg_sq": torch.zeros_like(p, memory_format=torch.preserve_format)}
            if group["amsgrad"]:
                state["max_exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            self.state[p] = state
        return self.state[p]

    @torch.no_grad()
    def step(self) -> None:
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            states = [self._state(p, group) for p in params]
            beta1, beta2 = group["betas"]
            adam(params, [p.grad for p in params], [s["exp_avg"] for s in states],
                 [s["exp_avg_sq"] for s in states],
                 [s["max_exp_avg_sq"] for s in states] if group["amsgrad"] else [],
                 [s["step"] for s in states], foreach=group["foreach"], capturable=False, differentiable=False,
                 fused=group["fused"], grad_scale=None, found_inf=None,
                 has_complex=any(torch.is_complex(p) for p in params),
                 decoupled_weight_decay=group["decoupled_weight_decay"], amsgrad=group["amsgrad"],
                 beta1=beta1, beta2=beta2, lr=group["lr"], weight_decay=group["weight_decay"], eps=group["eps"],
                 maximize=group["maximize"])

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.param_groups[0]["params"]:
            if p.grad is None:
                continue
            if set_to_none:
                p.grad = None
            else:
                p.grad.detach_().zero_()

    def state_dict(self) -> dict:
        """torch.optim.Optimizer.state_dict()'s layout: state by parameter index, the group's settings."""
        group = self.param_groups[0]
        index = {p: i for i, p in enumerate(group["params"])}
        return {"state": {index[p]: state for p, state in self.state.items()},
                "param_groups": [{**{k: v for k, v in group.items() if k != "params"},
                                  "params": list(range(len(group["params"])))}]}

    def load_state_dict(self, state_dict: dict) -> None:
        """A state_dict() of this class or of torch.optim.Adam over the same parameters, in order. Its
        settings replace the group's, as in torch; tensors go to each parameter's device (and float
        type, the step counter aside)."""
        groups = state_dict["param_groups"]
        params = self.param_groups[0]["params"]
        if len(groups) != 1 or len(groups[0]["params"]) != len(params):
            raise ValueError("loaded state dict contains a parameter group that doesn't match the size of "
                             "optimizer's group")
        group = self.param_groups[0]
        group.update({k: groups[0][k] for k in SETTINGS if k in groups[0]})
        group["betas"] = tuple(group["betas"])
        self.state = {}
        for i, saved in state_dict["state"].items():
            p = params[groups[0]["params"].index(i)]
            state = {}
            for key, value in saved.items():
                if key == "step":
                    state[key] = (value.to(device=p.device, dtype=torch.float32, copy=True) if group["fused"]
                                  else value.clone())
                else:
                    state[key] = value.to(device=p.device, dtype=p.dtype, copy=True)
                if state[key].shape != (() if key == "step" else p.shape):
                    raise ValueError(f"loaded state {key} of parameter {i} has shape {tuple(value.shape)}, "
                                     f"the parameter {tuple(p.shape)}")
            self.state[p] = state
