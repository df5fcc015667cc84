"""One optimizer kind for K members: stacked state and per-member hyperparameter tensors over trainer.updates."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from trainer.config import OptimizerConfig
from trainer.optim import build_optimizer
from trainer.population.plan import optimizer_structure
from trainer.updates import (
    adadelta_update,
    adagrad_update,
    adam_update,
    adamw_update,
    rmsprop_update,
    sgd_update,
)

# The numeric hyperparameters each optimizer's update reads; each is a (K, 1) tensor that can change
# between steps (a schedule, a population-based search) without rebuilding anything. Adam's betas
# are split into beta1 and beta2. adagrad's initial_accumulator_value only fills the initial state.
HYPERPARAMETERS: dict[str, tuple[str, ...]] = {
    "sgd": ("lr", "momentum", "dampening", "weight_decay"),
    "rmsprop": ("lr", "alpha", "eps", "momentum", "weight_decay"),
    "adam": ("lr", "beta1", "beta2", "eps", "weight_decay"),
    "adamw": ("lr", "beta1", "beta2", "eps", "weight_decay"),
    "adagrad": ("lr", "lr_decay", "eps", "weight_decay"),
    "adadelta": ("lr", "rho", "eps", "weight_decay"),
}

# (p, g, state, hyperparameters broadcast to p, step count, structural flags) -> None, updating p and state in place
Update = Callable[[Tensor, Tensor, dict[str, Tensor], dict[str, Tensor], int, dict[str, bool]], None]


# On a CPU the update runs over blocks of about this many elements (K x columns). The update functions
# make several temporaries per op; over all of (K, P) at once those outgrow the caches and glibc's
# malloc hands each back to the kernel (page faults on every step). Measured on the 2-core VM, torch
# 2.13.0+cpu, one thread, Adam over P = 26122 (the default MLP on digits), medians of 8 x 30 steps:
# K = 16: 14.6 ms in one block, 5.7 ms in blocks of 32k elements; K = 64: 76 ms vs 16 ms.
CPU_BLOCK = 32768


def _sgd(p: Tensor, g: Tensor, s: dict[str, Tensor], h: dict[str, Tensor], step: int, f: dict[str, bool]) -> None:
    momentum_buffer = s.get("momentum_buffer")
    sgd_update(p, g, momentum_buffer, step, h["lr"], h["momentum"], h["dampening"], h["weight_decay"], f["nesterov"])


def _rmsprop(p: Tensor, g: Tensor, s: dict[str, Tensor], h: dict[str, Tensor], step: int, f: dict[str, bool]) -> None:
    rmsprop_update(
        p,
        g,
        s["square_avg"],
        s.get("grad_avg"),
        s.get("momentum_buffer"),
        h["lr"],
        h["alpha"],
        h["eps"],
        h["momentum"],
        h["weight_decay"],
    )


def _adam(p: Tensor, g: Tensor, s: dict[str, Tensor], h: dict[str, Tensor], step: int, f: dict[str, bool]) -> None:
    update = adamw_update if f["decoupled"] else adam_update
    update(
        p,
        g,
        s["exp_avg"],
        s["exp_avg_sq"],
        step,
        h["lr"],
        h["beta1"],
        h["beta2"],
        h["eps"],
        h["weight_decay"],
        f["amsgrad"],
        s.get("max_exp_avg_sq"),
    )


def _adagrad(p: Tensor, g: Tensor, s: dict[str, Tensor], h: dict[str, Tensor], step: int, f: dict[str, bool]) -> None:
    adagrad_update(p, g, s["sum"], step, h["lr"], h["lr_decay"], h["eps"], h["weight_decay"])


def _adadelta(p: Tensor, g: Tensor, s: dict[str, Tensor], h: dict[str, Tensor], step: int, f: dict[str, bool]) -> None:
    adadelta_update(p, g, s["square_avg"], s["acc_delta"], h["lr"], h["rho"], h["eps"], h["weight_decay"])


UPDATES: dict[str, Update] = {
    "sgd": _sgd,
    "rmsprop": _rmsprop,
    "adam": _adam,
    "adamw": _adam,
    "adagrad": _adagrad,
    "adadelta": _adadelta,
}


class StackedOptimizer:
    """K members' optimizer state as (K, P) tensors, stepped by the same update functions as trainer.optim.

    The parameters are one flat (K, P) tensor (see StackedParameters): the per-element math is the
    reference's, and every hyperparameter is a (K,) tensor viewed as (K, 1) to broadcast over a row.
    Every member must have the same optimizer name and structural flags (see plan_groups); the numbers
    may differ. The step count is shared: members only ever leave a group, they never join it late.
    """

    def __init__(self, flat: Tensor, configs: Sequence[OptimizerConfig]) -> None:
        if len(configs) != flat.shape[0]:
            raise ValueError(f"{len(configs)} optimizer configs for {flat.shape[0]} members")
        self.name = configs[0].name
        structure = optimizer_structure(configs[0])
        for i, cfg in enumerate(configs):
            if cfg.name != self.name or optimizer_structure(cfg) != structure:
                raise ValueError(
                    f"Member {i} has optimizer {cfg.name!r} {optimizer_structure(cfg)}, member 0 {self.name!r}"
                    f" {structure}: split the population with plan_groups first"
                )
        # the reference classes validate every value (with torch's messages) and fill in the defaults
        resolved = [self._resolve(cfg) for cfg in configs]
        self.hyper: dict[str, Tensor] = {  # (K, 1), in the parameters' dtype
            name: torch.tensor([[r[name]] for r in resolved], dtype=flat.dtype, device=flat.device)
            for name in HYPERPARAMETERS[self.name]
        }
        flags = dict(structure)
        self.flags = {
            "nesterov": flags.get("nesterov", False),
            "amsgrad": flags.get("amsgrad", False),
            "decoupled": self.name == "adamw",  # AdamW shares Adam's state; only its weight decay differs
        }
        self.step_count = 0
        self.state = self._init_state(flat, flags, resolved)

    @staticmethod
    def _resolve(cfg: OptimizerConfig) -> dict[str, Any]:
        reference = build_optimizer([torch.zeros(1)], cfg)
        values = {"lr": reference.lr, **reference.hyperparameters()}
        if "betas" in values:
            values["beta1"], values["beta2"] = values.pop("betas")
        return values

    def _init_state(self, p: Tensor, flags: dict[str, bool], resolved: list[dict[str, Any]]) -> dict[str, Tensor]:
        """The state trainer.optim's init_state makes for one parameter, for every member at once (K, P)."""
        zeros = torch.zeros_like
        if self.name == "sgd":
            return {"momentum_buffer": zeros(p)} if flags["momentum_buffer"] else {}
        if self.name == "rmsprop":
            state = {"square_avg": zeros(p)}
            if flags["centered"]:
                state["grad_avg"] = zeros(p)
            if flags["momentum_buffer"]:
                state["momentum_buffer"] = zeros(p)
            return state
        if self.name in ("adam", "adamw"):
            state = {"exp_avg": zeros(p), "exp_avg_sq": zeros(p)}
            if flags["amsgrad"]:
                state["max_exp_avg_sq"] = zeros(p)
            return state
        if self.name == "adagrad":
            initial = [[r["initial_accumulator_value"]] for r in resolved]
            return {"sum": torch.tensor(initial, dtype=p.dtype, device=p.device).expand_as(p).clone()}
        return {"square_avg": zeros(p), "acc_delta": zeros(p)}  # adadelta

    def set_hyperparameter(self, name: str, values: Sequence[float] | Tensor) -> None:
        """Give each member its own value of a numeric hyperparameter (e.g. the epoch's lr), in place.

        A momentum may not cross zero: whether a momentum buffer exists is fixed when the group is built.
        """
        if name not in self.hyper:
            raise ValueError(f"Unknown hyperparameter for stacked {self.name}: {name!r} (have {sorted(self.hyper)})")
        current = self.hyper[name]
        new = torch.as_tensor(values, dtype=current.dtype).to(current.device).reshape(-1, 1)
        if new.shape != current.shape:
            raise ValueError(f"Invalid {name}: need {current.shape[0]} values, got {new.shape[0]}")
        if not bool((torch.isfinite(new) & (new >= 0)).all()):  # every one of them is finite and >= 0 in torch
            raise ValueError(f"Invalid {name} value: {new.flatten().tolist()}")
        if name == "momentum" and bool(((new != 0) != ("momentum_buffer" in self.state)).any()):
            raise ValueError(f"Invalid momentum value: {new.flatten().tolist()} (cannot cross zero in this group)")
        current.copy_(new)

    def _column_chunks(self, flat: Tensor) -> list[slice]:
        """Column ranges to update one after another: all of P on a GPU, cache-sized blocks on a CPU."""
        k, p = flat.shape
        if flat.device.type != "cpu":
            return [slice(0, p)]  # one launch per elementwise op is what the fused path is for
        width = max(CPU_BLOCK // max(k, 1), 64)
        return [slice(i, i + width) for i in range(0, p, width)]

    @torch.no_grad()
    def step(self, flat: Tensor, grad: Tensor, rows: Tensor | None = None) -> None:
        """One update of every member's row of flat (K, P), or only of `rows` (the others keep params and state)."""
        self.step_count += 1
        update = UPDATES[self.name]
        if rows is None:
            for cols in self._column_chunks(flat):
                state = {name: s[:, cols] for name, s in self.state.items()}  # views: updated in place
                update(flat[:, cols], grad[:, cols], state, self.hyper, self.step_count, self.flags)
            return
        # some member froze mid-epoch (diverged): update gathered copies of the others, then scatter back
        sub_flat = flat[rows]
        sub_state = {name: s[rows] for name, s in self.state.items()}
        update(
            sub_flat, grad[rows], sub_state, {k: h[rows] for k, h in self.hyper.items()}, self.step_count, self.flags
        )
        flat[rows] = sub_flat
        for name, s in self.state.items():
            s[rows] = sub_state[name]

    def member_hyperparameters(self, row: int) -> tuple[float, dict[str, Any]]:
        """(lr, the other numeric hyperparameters) of one member, as trainer.optim's state_dict names them."""
        values: dict[str, Any] = {name: float(h[row, 0]) for name, h in self.hyper.items()}
        lr = values.pop("lr")
        if "beta1" in values:
            values["betas"] = (values.pop("beta1"), values.pop("beta2"))
        return lr, values

    def member_state_dict(
        self, row: int, split: Callable[[Tensor], list[Tensor]], n: int, hyperparameters: dict[str, Any]
    ) -> dict[str, Any]:
        """Member `row`'s state in trainer.optim's state_dict format, so trainer.train can resume from it.

        `split` turns a (P,) row into the model's n parameter tensors; `hyperparameters` are
        the member's trainer.optim optimizer's (flags such as nesterov); the per-member numbers replace theirs.
        """
        lr, numbers = self.member_hyperparameters(row)
        pieces = {name: split(s[row]) for name, s in self.state.items()}
        state = [{"step": self.step_count, **{name: pieces[name][i] for name in self.state}} for i in range(n)]
        return {"name": self.name, "lr": lr, "hyperparameters": {**hyperparameters, **numbers}, "state": state}

    def load_member_state_dict(
        self, row: int, state_dict: dict[str, Any], join: Callable[[list[Tensor]], Tensor]
    ) -> None:
        """Member `row` takes a trainer.optim state_dict: its state, step count and numeric hyperparameters.

        Every member of a group shares one step count, so the state's must equal the group's (the engine
        sets the group's from its first member before loading the others).
        """
        if state_dict.get("name") != self.name:
            raise ValueError(f"State of optimizer {state_dict.get('name')!r} given to stacked {self.name!r}")
        saved = state_dict["state"]
        keys = {k for s in saved for k in s} - {"step"}
        if keys != set(self.state):
            raise ValueError(f"State keys {sorted(keys)} do not match this group's {sorted(self.state)}")
        steps = {int(s["step"]) for s in saved}
        if steps != {self.step_count}:
            raise ValueError(f"Member state at step {sorted(steps)}, its group at step {self.step_count}")
        with torch.no_grad():
            for name, stacked in self.state.items():
                stacked[row] = join([s[name] for s in saved])
        values = {"lr": state_dict["lr"], **state_dict["hyperparameters"]}
        if "betas" in values:
            values["beta1"], values["beta2"] = values.pop("betas")
        for name, h in self.hyper.items():
            h[row, 0] = float(values[name])

    def copy_member(self, target: int, source: int) -> None:
        """Member `target` takes member `source`'s optimizer state (not its hyperparameters)."""
        with torch.no_grad():
            for s in self.state.values():
                s[target] = s[source]

    def keep(self, rows: Tensor) -> None:
        """Drop every member not in `rows` (row positions), e.g. after it finished."""
        self.hyper = {name: h[rows] for name, h in self.hyper.items()}
        self.state = {name: s[rows] for name, s in self.state.items()}
