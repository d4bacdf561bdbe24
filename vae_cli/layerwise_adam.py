"""Adam's update applied a layer at a time inside the hand-written backward, while the layer is in cache."""
import torch
from torch.optim import optimizer as torch_optimizer  # for its global step hooks


class LayerwiseAdam:
    """Steps a torch.optim.Adam or AdamW built with fused=True, for a few parameters at a time.

    Adam's update is elementwise and each parameter keeps its own state (Kingma & Ba 2015, Algorithm
    1), so updating a layer as soon as its gradient is written and its weight is no longer needed by
    the backward pass gives the same parameters and state as one optimizer.step() after the whole
    backward: bit for bit, since step() calls the same kernel, torch._fused_adam_ (or _fused_adamw_),
    on the same tensors. What it buys: the layer's weight, gradient and moments are read while still
    in cache (for the 784-400-20 MLP, ~0.15 ms of a ~4 ms step on 2 CPU cores). The first step goes
    through optimizer.step(), which creates the state, and so does any step that ready() refuses;
    step() here reads the group's lr each time, so LR schedules apply as usual.
    """

    def __init__(self, optimizer: torch.optim.Optimizer):
        reason = self.unsupported_reason(optimizer)
        assert reason is None, reason
        self.optimizer = optimizer
        self.group = optimizer.param_groups[0]
        self.one = torch.ones(())  # the step counters' increment, as a tensor (see step)

    @staticmethod
    def unsupported_reason(optimizer: torch.optim.Optimizer) -> str | None:
        """None when step() reproduces optimizer.step(); else what rules it out."""
        if type(optimizer) not in (torch.optim.Adam, torch.optim.AdamW) or not hasattr(torch, "_fused_adam_"):
            return "it needs torch.optim.Adam or AdamW"
        if len(optimizer.param_groups) != 1:
            return "it needs one parameter group"
        group = optimizer.param_groups[0]
        if not group["fused"] or group["capturable"] or group["differentiable"]:
            return "it needs fused=True (the default here), capturable=False, differentiable=False"
        if any(isinstance(v, torch.Tensor) for v in (group["lr"], *group["betas"])):
            return "it needs lr and betas as numbers"
        return None

    def ready(self, params: list[torch.Tensor]) -> bool:
        """True when step() may stand in for optimizer.step() this time: the optimizer still qualifies
        (load_state_dict replaces its group; step hooks, which step() does not run, may come at any
        time) and optimizer.step() has created the state of every one of params."""
        optimizer = self.optimizer
        if optimizer.param_groups[0] is not self.group:  # replaced: check the new settings
            supported = self.unsupported_reason(optimizer) is None
            self.group = optimizer.param_groups[0] if supported else None
        hooks = (optimizer._optimizer_step_pre_hooks, optimizer._optimizer_step_post_hooks,
                 getattr(torch_optimizer, "_global_optimizer_pre_hooks", None),
                 getattr(torch_optimizer, "_global_optimizer_post_hooks", None))
        return self.group is not None and not any(hooks) and all(p in optimizer.state for p in params)

    def step(self, params: list[torch.Tensor]) -> None:
        """Update params (each with its .grad written) exactly as optimizer.step() would; only after
        ready(params) said True."""
        group = self.group
        states = [self.optimizer.state[p] for p in params]
        steps = [state["step"] for state in states]
        if self.one.device != steps[0].device or self.one.dtype != steps[0].dtype:
            self.one = torch.ones_like(steps[0])
        # += 1, as torch.optim.adam._fused_adam does before the kernel; a list of tensors takes half the
        # time of the Python scalar 1, which is converted to a tensor for every counter
        torch._foreach_add_(steps, [self.one] * len(steps))
        kernel = torch._fused_adamw_ if group.get("decoupled_weight_decay", False) else torch._fused_adam_
        kernel(params, [p.grad for p in params], [state["exp_avg"] for state in states],
               [state["exp_avg_sq"] for state in states],
               [state["max_exp_avg_sq"] for state in states] if group["amsgrad"] else [], steps,
               amsgrad=group["amsgrad"], lr=group["lr"], beta1=group["betas"][0], beta2=group["betas"][1],
               weight_decay=group["weight_decay"], eps=group["eps"], maximize=group["maximize"])
