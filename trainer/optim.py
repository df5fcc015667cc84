"""Optimizer classes mirroring torch.optim (validation, state, step) and the name registry."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor

from trainer.config import OptimizerConfig
from trainer.updates import (
    adadelta_update,
    adagrad_update,
    adam_update,
    adamw_update,
    rmsprop_update,
    sgd_update,
)


def _number(name: str, value: Any, low: float = 0.0, high: float = math.inf) -> float:
    """Check low <= value <= high, with torch's error message."""
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if not (ok and low <= value <= high):
        raise ValueError(f"Invalid {name} value: {value!r}")
    return float(value)


def _flag(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"Invalid {name} value: {value!r} (need true or false)")
    return value


class Optimizer:
    """Params, per-param state and a settable `lr`; subclasses add hyperparameters and `update`."""

    name: ClassVar[str]
    defaults: ClassVar[dict[str, Any]]  # torch's defaults, lr included

    def __init__(self, params: Iterable[Tensor], lr: float) -> None:
        ok = isinstance(lr, int | float) and not isinstance(lr, bool) and math.isfinite(lr) and lr >= 0
        if not ok:
            raise ValueError(f"Invalid learning rate: {lr!r}")
        self.lr = float(lr)
        self.params = list(params)
        if not self.params:
            raise ValueError("Optimizer got an empty parameter list")
        self.state: list[dict[str, Any]] = [{"step": 0, **self.init_state(p)} for p in self.params]

    def init_state(self, p: Tensor) -> dict[str, Tensor]:
        return {}

    def update(self, p: Tensor, g: Tensor, state: dict[str, Any]) -> None:
        raise NotImplementedError

    def hyperparameters(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.defaults if k != "lr"}

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        for p, state in zip(self.params, self.state, strict=True):
            if p.grad is None:  # unused parameter: no gradient, no state change (as torch)
                continue
            state["step"] += 1
            self.update(p, p.grad, state)

    def state_dict(self) -> dict[str, Any]:
        """A copy made of numbers, strings, tuples and tensors only (torch.load(weights_only=True) safe)."""
        return {
            "name": self.name,
            "lr": self.lr,
            "hyperparameters": self.hyperparameters(),
            "state": [{k: v.clone() if isinstance(v, Tensor) else v for k, v in s.items()} for s in self.state],
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if state_dict.get("name") != self.name:
            raise ValueError(f"State of optimizer {state_dict.get('name')!r} given to {self.name!r}")
        saved = state_dict["state"]
        if len(saved) != len(self.params):
            raise ValueError(f"State for {len(saved)} parameters given to {len(self.params)}")
        for p, own, theirs in zip(self.params, self.state, saved, strict=True):
            if set(own) != set(theirs):
                raise ValueError(f"State keys {sorted(theirs)} do not match {sorted(own)}")
            for k, v in theirs.items():
                own[k] = v.to(p.device).clone() if isinstance(v, Tensor) else v
        for k, v in state_dict["hyperparameters"].items():
            setattr(self, k, tuple(v) if isinstance(v, list) else v)
        self.lr = float(state_dict["lr"])


class SGD(Optimizer):
    name = "sgd"
    defaults = {"lr": 1e-3, "momentum": 0.0, "dampening": 0.0, "weight_decay": 0.0, "nesterov": False}

    def __init__(
        self,
        params: Iterable[Tensor],
        lr: float = 1e-3,
        momentum: float = 0.0,
        dampening: float = 0.0,
        weight_decay: float = 0.0,
        nesterov: bool = False,
    ) -> None:
        self.momentum = _number("momentum", momentum)
        self.dampening = _number("dampening", dampening)
        self.weight_decay = _number("weight_decay", weight_decay)
        self.nesterov = _flag("nesterov", nesterov)
        if nesterov and (self.momentum <= 0 or self.dampening != 0):
            raise ValueError("Nesterov momentum requires a momentum and zero dampening")
        super().__init__(params, lr)

    def init_state(self, p: Tensor) -> dict[str, Tensor]:
        # torch keeps no buffer without momentum (its dampening is then ignored)
        return {"momentum_buffer": torch.zeros_like(p)} if self.momentum != 0 else {}

    def update(self, p: Tensor, g: Tensor, state: dict[str, Any]) -> None:
        sgd_update(
            p,
            g,
            state.get("momentum_buffer"),
            state["step"],
            self.lr,
            self.momentum,
            self.dampening,
            self.weight_decay,
            self.nesterov,
        )


class RMSprop(Optimizer):
    name = "rmsprop"
    defaults = {
        "lr": 1e-2,
        "alpha": 0.99,
        "eps": 1e-8,
        "weight_decay": 0.0,
        "momentum": 0.0,
        "centered": False,
    }

    def __init__(
        self,
        params: Iterable[Tensor],
        lr: float = 1e-2,
        alpha: float = 0.99,
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        momentum: float = 0.0,
        centered: bool = False,
    ) -> None:
        self.alpha = _number("alpha", alpha)
        self.eps = _number("epsilon", eps)
        self.weight_decay = _number("weight_decay", weight_decay)
        self.momentum = _number("momentum", momentum)
        self.centered = _flag("centered", centered)
        super().__init__(params, lr)

    def init_state(self, p: Tensor) -> dict[str, Tensor]:
        state = {"square_avg": torch.zeros_like(p)}
        if self.centered:
            state["grad_avg"] = torch.zeros_like(p)
        if self.momentum > 0:
            state["momentum_buffer"] = torch.zeros_like(p)
        return state

    def update(self, p: Tensor, g: Tensor, state: dict[str, Any]) -> None:
        rmsprop_update(
            p,
            g,
            state["square_avg"],
            state.get("grad_avg"),
            state.get("momentum_buffer"),
            self.lr,
            self.alpha,
            self.eps,
            self.momentum,
            self.weight_decay,
        )


class Adam(Optimizer):
    name = "adam"
    functional = staticmethod(adam_update)
    defaults = {"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.0, "amsgrad": False}

    def __init__(
        self,
        params: Iterable[Tensor],
        lr: float = 1e-3,
        betas: Sequence[float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        amsgrad: bool = False,
    ) -> None:
        if not isinstance(betas, Sequence) or isinstance(betas, str) or len(betas) != 2:
            raise ValueError(f"Invalid betas value: {betas!r} (need two numbers)")
        for i, beta in enumerate(betas):
            if isinstance(beta, bool) or not isinstance(beta, int | float) or not 0.0 <= beta < 1.0:
                raise ValueError(f"Invalid beta parameter at index {i}: {beta!r}")
        self.betas = (float(betas[0]), float(betas[1]))
        self.eps = _number("epsilon", eps)
        self.weight_decay = _number("weight_decay", weight_decay)
        self.amsgrad = _flag("amsgrad", amsgrad)
        super().__init__(params, lr)

    def init_state(self, p: Tensor) -> dict[str, Tensor]:
        state = {"exp_avg": torch.zeros_like(p), "exp_avg_sq": torch.zeros_like(p)}
        if self.amsgrad:
            state["max_exp_avg_sq"] = torch.zeros_like(p)
        return state

    def update(self, p: Tensor, g: Tensor, state: dict[str, Any]) -> None:
        self.functional(
            p,
            g,
            state["exp_avg"],
            state["exp_avg_sq"],
            state["step"],
            self.lr,
            *self.betas,
            self.eps,
            self.weight_decay,
            self.amsgrad,
            state.get("max_exp_avg_sq"),
        )


class AdamW(Adam):
    name = "adamw"
    functional = staticmethod(adamw_update)  # the same moments; only the weight decay differs
    defaults = {"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 1e-2, "amsgrad": False}

    def __init__(
        self,
        params: Iterable[Tensor],
        lr: float = 1e-3,
        betas: Sequence[float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        amsgrad: bool = False,
    ) -> None:
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad)


class Adagrad(Optimizer):
    name = "adagrad"
    defaults = {
        "lr": 1e-2,
        "lr_decay": 0.0,
        "weight_decay": 0.0,
        "initial_accumulator_value": 0.0,
        "eps": 1e-10,
    }

    def __init__(
        self,
        params: Iterable[Tensor],
        lr: float = 1e-2,
        lr_decay: float = 0.0,
        weight_decay: float = 0.0,
        initial_accumulator_value: float = 0.0,
        eps: float = 1e-10,
    ) -> None:
        self.lr_decay = _number("lr_decay", lr_decay)
        self.weight_decay = _number("weight_decay", weight_decay)
        self.initial_accumulator_value = _number("initial_accumulator_value", initial_accumulator_value)
        self.eps = _number("epsilon", eps)
        super().__init__(params, lr)

    def init_state(self, p: Tensor) -> dict[str, Tensor]:
        return {"sum": torch.full_like(p, self.initial_accumulator_value)}

    def update(self, p: Tensor, g: Tensor, state: dict[str, Any]) -> None:
        adagrad_update(p, g, state["sum"], state["step"], self.lr, self.lr_decay, self.eps, self.weight_decay)


class Adadelta(Optimizer):
    name = "adadelta"
    defaults = {"lr": 1.0, "rho": 0.9, "eps": 1e-6, "weight_decay": 0.0}

    def __init__(
        self,
        params: Iterable[Tensor],
        lr: float = 1.0,
        rho: float = 0.9,
        eps: float = 1e-6,
        weight_decay: float = 0.0,
    ) -> None:
        self.rho = _number("rho", rho, high=1.0)
        self.eps = _number("epsilon", eps)
        self.weight_decay = _number("weight_decay", weight_decay)
        super().__init__(params, lr)

    def init_state(self, p: Tensor) -> dict[str, Tensor]:
        return {"square_avg": torch.zeros_like(p), "acc_delta": torch.zeros_like(p)}

    def update(self, p: Tensor, g: Tensor, state: dict[str, Any]) -> None:
        adadelta_update(p, g, state["square_avg"], state["acc_delta"], self.lr, self.rho, self.eps, self.weight_decay)


OPTIMIZERS: dict[str, type[Optimizer]] = {cls.name: cls for cls in (SGD, RMSprop, Adam, AdamW, Adagrad, Adadelta)}
OPTIMIZER_DEFAULTS: dict[str, dict[str, Any]] = {name: dict(cls.defaults) for name, cls in OPTIMIZERS.items()}


def build_optimizer(params: Iterable[Tensor], cfg: OptimizerConfig) -> Optimizer:
    if cfg.name not in OPTIMIZERS:
        raise ValueError(f"Unknown optimizer: {cfg.name!r} (choose from {sorted(OPTIMIZERS)})")
    cls = OPTIMIZERS[cfg.name]
    unknown = set(cfg.params) - (set(cls.defaults) - {"lr"})
    if unknown:
        raise ValueError(f"Unknown hyperparameter for {cfg.name}: {sorted(unknown)}")
    return cls(params, lr=cfg.lr, **cfg.params)
