"""vae_cli.optim.Adam against torch.optim.Adam, bit for bit; the epoch schedules against torch's schedulers;
and that vae-train and vae-eval never import torch's compiler (what the class is for)."""
import copy
import subprocess
import sys

import pytest
import torch

from vae_cli.optim import Adam
from vae_cli.schedules import burda, constant

CASES = [
    {},  # vae-train's default on the CPU: the fused kernel
    {"fused": False},  # the for-loop kernel
    {"foreach": True},
    {"amsgrad": True, "weight_decay": 0.1, "fused": True},
    {"weight_decay": 0.05, "decoupled_weight_decay": True, "betas": (0.8, 0.99), "eps": 1e-6},  # AdamW
    {"maximize": True, "fused": False},
]


def parameters(seed: int, dtype=torch.float32) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    shapes = [(7, 5), (5,), (3, 4, 2)]
    return [torch.randn(shape, generator=generator, dtype=dtype).requires_grad_() for shape in shapes]


def run_steps(optimizer, params, steps: range, seed: int) -> None:
    """Gradients drawn from a seeded generator; the second parameter has none on every third step, and
    the rate halves at step 5 (as a schedule would)."""
    generator = torch.Generator().manual_seed(seed)
    for step in steps:
        for i, p in enumerate(params):
            grad = torch.randn(p.shape, generator=generator, dtype=p.dtype)
            p.grad = None if (i == 1 and step % 3 == 0) else grad
        if step == 5:
            optimizer.param_groups[0]["lr"] *= 0.5
        optimizer.step()


def assert_same(ours: Adam, theirs: torch.optim.Optimizer, ours_params, their_params) -> None:
    for p, q in zip(ours_params, their_params):
        assert torch.equal(p, q)
    ours_state, their_state = ours.state_dict(), theirs.state_dict()
    assert ours_state["state"].keys() == their_state["state"].keys()
    for index, state in their_state["state"].items():
        assert ours_state["state"][index].keys() == state.keys()
        for key, value in state.items():
            assert value.dtype == ours_state["state"][index][key].dtype, key
            assert torch.equal(ours_state["state"][index][key], value), key


@pytest.mark.parametrize("kwargs", CASES)
def test_adam_matches_torch_bit_for_bit(kwargs):
    ours_params, their_params = parameters(0), parameters(0)
    ours = Adam(ours_params, lr=1e-2, **kwargs)
    theirs = torch.optim.Adam(their_params, lr=1e-2, **kwargs)
    run_steps(ours, ours_params, range(12), seed=1)
    run_steps(theirs, their_params, range(12), seed=1)
    assert not torch.equal(ours_params[0], parameters(0)[0])  # the steps moved the parameters
    assert_same(ours, theirs, ours_params, their_params)


@pytest.mark.parametrize("kwargs", [CASES[0], CASES[1], CASES[3]])
def test_state_dicts_load_either_way(kwargs):
    """torch.optim.Adam's state resumed in vae_cli.optim.Adam continues exactly as torch.optim.Adam does,
    and the other way round."""
    def clone(params):
        return [p.detach().clone().requires_grad_() for p in params]

    torch_params = parameters(0)
    torch_adam = torch.optim.Adam(torch_params, lr=1e-2, **kwargs)
    run_steps(torch_adam, torch_params, range(7), seed=1)
    ours_params = clone(torch_params)
    ours = Adam(ours_params, lr=1e-2, **kwargs)
    ours.load_state_dict(torch_adam.state_dict())
    assert ours.param_groups[0]["lr"] == 5e-3  # the saved rate (halved at step 5) came back with the state
    for optimizer, params in ((torch_adam, torch_params), (ours, ours_params)):
        run_steps(optimizer, params, range(7, 10), seed=2)
    assert_same(ours, torch_adam, ours_params, torch_params)

    back_params = clone(ours_params)
    back = torch.optim.Adam(back_params, lr=1e-2, **kwargs)
    back.load_state_dict(copy.deepcopy(ours.state_dict()))  # as from a file: torch keeps the step tensors
    for optimizer, params in ((back, back_params), (ours, ours_params)):
        run_steps(optimizer, params, range(10, 14), seed=3)
    assert_same(ours, back, ours_params, back_params)


def test_adam_refuses_what_torch_refuses():
    params = parameters(0)
    for kwargs in ({"lr": -1.0}, {"eps": -1.0}, {"betas": (1.0, 0.999)}, {"betas": (0.9, -0.1)},
                   {"weight_decay": -0.1}, {"fused": True, "foreach": True}):
        with pytest.raises((ValueError, RuntimeError)):  # torch: RuntimeError for fused with foreach
            torch.optim.Adam(params, **kwargs)
        with pytest.raises(ValueError):  # a ConfigError line in vae-train (build_optimizer)
            Adam(params, **kwargs)
    with pytest.raises(ValueError, match="empty parameter list"):
        Adam([])


def test_load_refuses_another_model():
    first = Adam(parameters(0))
    run_steps(first, first.param_groups[0]["params"], range(2), seed=1)
    other = Adam([torch.zeros(3, requires_grad=True)])
    with pytest.raises(ValueError, match="size"):
        other.load_state_dict(first.state_dict())
    reshaped = Adam([torch.zeros(5, 7, requires_grad=True), torch.zeros(5, requires_grad=True),
                     torch.zeros(3, 4, 2, requires_grad=True)])
    with pytest.raises(ValueError, match="shape"):
        reshaped.load_state_dict(first.state_dict())


def test_zero_grad():
    params = parameters(0)
    optimizer = Adam(params)
    run_steps(optimizer, params, range(1), seed=1)
    optimizer.zero_grad(set_to_none=False)
    assert all(torch.equal(p.grad, torch.zeros_like(p)) for p in params if p.grad is not None)
    optimizer.zero_grad()
    assert all(p.grad is None for p in params)


def rates(make, epochs: int, optimizer_class) -> list[float]:
    optimizer = optimizer_class([torch.zeros(1, requires_grad=True)], lr=1e-3)
    schedule = make(optimizer)
    seen = []
    for _ in range(epochs):
        seen.append(schedule.get_last_lr()[0])
        schedule.step()
    return seen


STEP_ORDER = "ignore:Detected call of `lr_scheduler.step"  # torch asks for an optimizer step first


@pytest.mark.filterwarnings(STEP_ORDER)
@pytest.mark.parametrize("optimizer_class", [Adam, torch.optim.Adam])
def test_schedules_give_torchs_rates(optimizer_class):
    """constant = torch's ConstantLR; burda = MultiStepLR at the stage ends 1, 4, 13, 40 (to float rounding:
    MultiStepLR multiplies the rate at each milestone, the schedule takes lr * gamma^i)."""
    def torch_rates(make):
        return rates(make, 50, torch.optim.Adam)
    assert rates(lambda o: constant(o, 0.5, 3), 50, optimizer_class) == torch_rates(
        lambda o: torch.optim.lr_scheduler.ConstantLR(o, 0.5, 3))
    assert rates(constant, 50, optimizer_class) == [1e-3] * 50
    gamma = 10 ** (-1 / 7)
    ours = rates(burda, 50, optimizer_class)
    assert ours == pytest.approx(torch_rates(lambda o: torch.optim.lr_scheduler.MultiStepLR(o, [1, 4, 13, 40], gamma)),
                                 rel=1e-12)
    assert ours[:5] == [1e-3, 1e-3 * gamma, 1e-3 * gamma, 1e-3 * gamma, 1e-3 * gamma**2]
    assert ours[40] == 1e-3 * gamma**4


@pytest.mark.filterwarnings(STEP_ORDER)
def test_schedule_resumes_from_its_state_or_torchs():
    optimizer = Adam([torch.zeros(1, requires_grad=True)], lr=1e-3)
    reference = torch.optim.lr_scheduler.MultiStepLR(torch.optim.Adam([torch.zeros(1, requires_grad=True)],
                                                                      lr=1e-3), [1, 4, 13], 0.5)
    for _ in range(5):
        reference.step()
    schedule = burda(optimizer, num_stages=4, gamma=0.5)
    schedule.load_state_dict(reference.state_dict())  # what a checkpoint of an earlier vae-cli holds
    assert (schedule.last_epoch, optimizer.param_groups[0]["lr"]) == (5, 1e-3 * 0.25)
    again = burda(Adam([torch.zeros(1, requires_grad=True)], lr=1e-3), num_stages=4, gamma=0.5)
    again.load_state_dict(schedule.state_dict())
    assert again.get_last_lr() == [1e-3 * 0.25]


def test_a_run_and_its_evaluation_never_import_torchs_compiler():
    """Building a torch.optim optimizer imports torch._dynamo (1-1.5 s here): neither vae-train (training,
    the light evaluation's probe) nor vae-eval may, or their start-up loses what vae_cli.optim.Adam and
    the probe's own L-BFGS are for."""
    code = ("import sys, tempfile\n"
            "from vae_cli.cli import main\n"
            "from vae_cli.eval_cli import main as evaluate\n"
            "folder = tempfile.mkdtemp()\n"
            "for command, run in ((['vae-train', 'debug=smoke', 'scheduler=burda', 'hydra.run.dir=' + folder], main),\n"
            "                     (['vae-eval', folder], evaluate)):\n"
            "    sys.argv = command\n"
            "    try:\n        run()\n    except SystemExit as end:\n        assert not end.code, end.code\n"
            "    print(command[0], 'imported the compiler:', 'torch._dynamo' in sys.modules)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "vae-train imported the compiler: False" in result.stdout, result.stdout[-500:]
    assert "vae-eval imported the compiler: False" in result.stdout, result.stdout[-500:]
