"""One run's optimizer: a declaration (trainer.optimizers) over a model's parameters, with torch.optim's step.

Validation, state, a settable `lr` and a state_dict that torch.load(weights_only=True) reads back; the
update is the declaration's, the same math the fused engine runs on stacked members.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import Tensor

from trainer.config import OptimizerConfig
from trainer.optimizers import Declaration, declaration_of


class Optimizer:
    """Params, per-param state (a "step" count and the declaration's tensors) and a settable `lr`."""

    def __init__(self, params: Iterable[Tensor], declaration: Declaration, lr: Any, given: Mapping[str, Any]) -> None:
        values = declaration.resolve(lr, given)  # torch's defaults filled in, every value checked
        self.declaration = declaration
        self.name = declaration.name
        self.lr: float = values.pop("lr")
        self.values = values  # the other hyperparameters, torch's names (flags included)
        self.params = list(params)
        if not self.params:
            raise ValueError("Optimizer got an empty parameter list")
        self.state: list[dict[str, Any]] = [{"step": 0, **self._init_state(p)} for p in self.params]

    def _init_state(self, p: Tensor) -> dict[str, Tensor]:
        kept = self.declaration.state_names(self.values)
        return {
            s.name: torch.zeros_like(p) if s.fill is None else torch.full_like(p, self.values[s.fill])
            for s in self.declaration.state
            if s.name in kept
        }

    def hyperparameters(self) -> dict[str, Any]:
        """Every hyperparameter but lr, torch's names (a pair as a tuple, flags included)."""
        return dict(self.values)

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        arguments = self.declaration.arguments({"lr": self.lr, **self.values})
        for p, state in zip(self.params, self.state, strict=True):
            if p.grad is None:  # unused parameter: no gradient, no state change (as torch)
                continue
            state["step"] += 1
            self.declaration.update(p, p.grad, state, arguments, state["step"])

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
            self.values[k] = tuple(v) if isinstance(v, list) else v
        self.lr = float(state_dict["lr"])


def build_optimizer(params: Iterable[Tensor], cfg: OptimizerConfig) -> Optimizer:
    return Optimizer(params, declaration_of(cfg.name), cfg.lr, cfg.params)
