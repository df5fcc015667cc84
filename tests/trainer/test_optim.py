"""Our optimizers against torch.optim step for step, their validation, state and batched hyperparameters."""

from __future__ import annotations

import io
from typing import Any

import pytest
import torch
from torch import nn

from trainer.config import OptimizerConfig
from trainer.optim import Optimizer, build_optimizer
from trainer.optimizers import OPTIMIZERS

TORCH_CLASSES = {
    "sgd": torch.optim.SGD,
    "rmsprop": torch.optim.RMSprop,
    "adam": torch.optim.Adam,
    "adamw": torch.optim.AdamW,
    "adagrad": torch.optim.Adagrad,
    "adadelta": torch.optim.Adadelta,
}

CASES: list[tuple[str, float, dict[str, Any]]] = [
    ("sgd", 0.1, {}),
    ("sgd", 0.05, {"momentum": 0.9, "dampening": 0.1, "weight_decay": 1e-2}),
    ("sgd", 0.05, {"momentum": 0.9, "nesterov": True, "weight_decay": 1e-3}),
    ("rmsprop", 1e-2, {}),
    ("rmsprop", 1e-3, {"alpha": 0.9, "centered": True, "momentum": 0.8, "weight_decay": 1e-2, "eps": 1e-6}),
    ("adam", 1e-2, {}),
    ("adam", 1e-2, {"betas": (0.8, 0.99), "amsgrad": True, "weight_decay": 1e-2, "eps": 1e-6}),
    ("adamw", 1e-2, {}),
    ("adamw", 1e-2, {"amsgrad": True, "weight_decay": 0.1}),
    ("adagrad", 0.1, {"lr_decay": 0.01, "weight_decay": 1e-2, "initial_accumulator_value": 0.1}),
    ("adadelta", 1.0, {}),
    ("adadelta", 0.5, {"rho": 0.8, "eps": 1e-5, "weight_decay": 1e-2}),
]


def make_problem(seed: int = 0) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 3)).double()
    return model, torch.randn(32, 5, dtype=torch.float64), torch.randint(0, 3, (32,))


def take_step(model: nn.Module, opt: Any, x: torch.Tensor, y: torch.Tensor, batch: int) -> None:
    rows = slice(8 * (batch % 4), 8 * (batch % 4) + 8)  # cycle through 4 minibatches
    opt.zero_grad()
    nn.functional.cross_entropy(model(x[rows]), y[rows]).backward()
    opt.step()


@pytest.mark.parametrize(("name", "lr", "hyper"), CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_step_matches_torch(name: str, lr: float, hyper: dict[str, Any]) -> None:
    ours_model, x, y = make_problem()
    torch_model, _, _ = make_problem()
    ours = build_optimizer(ours_model.parameters(), OptimizerConfig(name, lr, hyper))
    reference = TORCH_CLASSES[name](torch_model.parameters(), lr=lr, **hyper)
    for step in range(20):
        if step == 10:  # the loop sets lr every epoch; torch reads it from the param group
            ours.lr = lr / 3
            reference.param_groups[0]["lr"] = lr / 3
        take_step(ours_model, ours, x, y, step)
        take_step(torch_model, reference, x, y, step)
        for p, q in zip(ours_model.parameters(), torch_model.parameters(), strict=True):
            torch.testing.assert_close(p, q, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_defaults_match_torch(name: str) -> None:
    model, _, _ = make_problem()
    torch_defaults = TORCH_CLASSES[name](model.parameters()).defaults
    ours = build_optimizer(make_problem()[0].parameters(), OptimizerConfig(name, OPTIMIZERS[name].defaults["lr"]))
    assert {"lr": ours.lr, **ours.hyperparameters()} == {k: torch_defaults[k] for k in OPTIMIZERS[name].defaults}


@pytest.mark.parametrize(
    ("name", "hyper", "message"),
    [
        ("sgd", {"lr": -0.1}, "Invalid learning rate: -0.1"),
        ("adam", {"lr": float("nan")}, "Invalid learning rate"),
        ("sgd", {"momentum": -0.5}, "Invalid momentum value: -0.5"),
        ("sgd", {"nesterov": True}, "Nesterov momentum requires"),
        ("sgd", {"nesterov": True, "momentum": 0.9, "dampening": 0.1}, "Nesterov momentum requires"),
        ("sgd", {"weight_decay": -1e-4}, "Invalid weight_decay value: -0.0001"),
        ("adam", {"betas": (1.0, 0.999)}, "Invalid beta parameter at index 0: 1.0"),
        ("adamw", {"betas": (0.9, -0.1)}, "Invalid beta parameter at index 1: -0.1"),
        ("adam", {"betas": (0.9,)}, "Invalid betas value"),
        ("adam", {"eps": -1e-8}, "Invalid epsilon value: -1e-08"),
        ("adam", {"amsgrad": "yes"}, "Invalid amsgrad value"),
        ("rmsprop", {"alpha": -0.1}, "Invalid alpha value: -0.1"),
        ("rmsprop", {"momentum": -1.0}, "Invalid momentum value: -1.0"),
        ("adagrad", {"lr_decay": -1.0}, "Invalid lr_decay value: -1.0"),
        ("adagrad", {"initial_accumulator_value": -1.0}, "Invalid initial_accumulator_value value: -1.0"),
        ("adadelta", {"rho": 1.5}, "Invalid rho value: 1.5"),
    ],
)
def test_construct_rejects_invalid_hyperparameter(name: str, hyper: dict[str, Any], message: str) -> None:
    model, _, _ = make_problem()
    lr = hyper.pop("lr", OPTIMIZERS[name].defaults["lr"])
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        Optimizer(model.parameters(), OPTIMIZERS[name], lr, hyper)


def test_build_rejects_unknown_name_and_hyperparameter() -> None:
    model, _, _ = make_problem()
    with pytest.raises(ValueError, match="Unknown optimizer: 'lion'"):
        build_optimizer(model.parameters(), OptimizerConfig("lion", 1e-3))
    with pytest.raises(ValueError, match=r"Unknown hyperparameter for adam: \['momentum'\]"):
        build_optimizer(model.parameters(), OptimizerConfig("adam", 1e-3, {"momentum": 0.9}))


@pytest.mark.parametrize(("name", "lr", "hyper"), [CASES[2], CASES[4], CASES[6], CASES[9], CASES[11]])
def test_resume_from_state_dict_matches_uninterrupted(name: str, lr: float, hyper: dict[str, Any]) -> None:
    straight_model, x, y = make_problem()
    straight = build_optimizer(straight_model.parameters(), OptimizerConfig(name, lr, hyper))
    for step in range(10):
        take_step(straight_model, straight, x, y, step)

    first_model, _, _ = make_problem()
    first = build_optimizer(first_model.parameters(), OptimizerConfig(name, lr, hyper))
    for step in range(5):
        take_step(first_model, first, x, y, step)
    buffer = io.BytesIO()
    torch.save({"model": first_model.state_dict(), "optimizer": first.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)  # plain tensors and numbers only

    resumed_model, _, _ = make_problem(seed=1)  # different init: everything must come from the save
    resumed_model.load_state_dict(saved["model"])
    resumed: Optimizer = build_optimizer(resumed_model.parameters(), OptimizerConfig(name, lr, hyper))
    resumed.load_state_dict(saved["optimizer"])
    for step in range(5, 10):
        take_step(resumed_model, resumed, x, y, step)
    for p, q in zip(resumed_model.parameters(), straight_model.parameters(), strict=True):
        assert torch.equal(p, q)


def test_load_state_dict_rejects_other_optimizer() -> None:
    model, _, _ = make_problem()
    adam = build_optimizer(model.parameters(), OptimizerConfig("adam", 1e-3))
    sgd = build_optimizer(model.parameters(), OptimizerConfig("sgd", 1e-3))
    with pytest.raises(ValueError, match="'adam' given to 'sgd'"):
        sgd.load_state_dict(adam.state_dict())


def test_state_dict_is_a_copy() -> None:
    model, x, y = make_problem()
    opt = build_optimizer(model.parameters(), OptimizerConfig("adam", 1e-2))
    take_step(model, opt, x, y, 0)
    saved = opt.state_dict()
    take_step(model, opt, x, y, 1)
    assert saved["state"][0]["step"] == 1
    assert not torch.equal(saved["state"][0]["exp_avg"], opt.state[0]["exp_avg"])


# The fused population engine calls the same update functions on parameters stacked along a leading
# member dimension K, with per-member hyperparameters shaped (K, 1, 1): each member must come out as
# if updated alone with its own numbers. Every state tensor the optimizer can keep is there.
K = 3
BATCHED: list[tuple[str, dict[str, list[float]], dict[str, Any]]] = [
    ("sgd", {"lr": [0.1, 0.2, 0.3], "momentum": [0.5, 0.9, 0.0]},
     {"dampening": 0.0, "weight_decay": 1e-2, "nesterov": True}),
    ("rmsprop", {"lr": [1e-2, 1e-3, 3e-3], "alpha": [0.9, 0.99, 0.5], "momentum": [0.0, 0.5, 0.9]},
     {"eps": 1e-8, "weight_decay": 0.0, "centered": True}),
    ("adam", {"lr": [1e-3, 1e-2, 1e-1], "beta1": [0.9, 0.8, 0.0], "beta2": [0.999, 0.99, 0.9]},
     {"eps": 1e-8, "weight_decay": 1e-2, "amsgrad": True}),
    ("adamw", {"lr": [1e-3, 1e-2, 1e-1], "weight_decay": [0.0, 0.01, 0.1]},
     {"beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "amsgrad": False}),
    ("adagrad", {"lr": [0.1, 0.01, 1.0], "lr_decay": [0.0, 0.1, 1.0]}, {"eps": 1e-10, "weight_decay": 0.0}),
    ("adadelta", {"lr": [1.0, 0.5, 0.1], "rho": [0.9, 0.5, 0.99]}, {"eps": 1e-6, "weight_decay": 1e-2}),
]  # fmt: skip


@pytest.mark.parametrize(("name", "per_member", "shared"), BATCHED, ids=[b[0] for b in BATCHED])
def test_update_broadcasts_over_members(name: str, per_member: dict[str, list[float]], shared: dict[str, Any]) -> None:
    declaration = OPTIMIZERS[name]
    assert set(per_member) | set(shared) == set(declaration.stepped) | set(declaration.flags)
    torch.manual_seed(0)
    p = torch.randn(K, 4, 5, dtype=torch.float64)  # (K, 4, 5): one (4, 5) parameter per member
    grads = [torch.randn(K, 4, 5, dtype=torch.float64) for _ in range(4)]
    names = [s.name for s in declaration.state]
    stacked_p, stacked = p.clone(), {n: torch.zeros_like(p) for n in names}
    alone = [(p[k].clone(), {n: torch.zeros_like(p[k]) for n in names}) for k in range(K)]
    hyper = {n: torch.tensor(v, dtype=torch.float64).view(K, 1, 1) for n, v in per_member.items()}
    for step, g in enumerate(grads, start=1):
        declaration.update(stacked_p, g, stacked, {**hyper, **shared}, step)
        for k in range(K):
            declaration.update(
                alone[k][0], g[k], alone[k][1], {**{n: v[k] for n, v in per_member.items()}, **shared}, step
            )
    for k in range(K):
        torch.testing.assert_close(stacked_p[k], alone[k][0], rtol=1e-12, atol=1e-14)
