"""One optimizer for K members: stacked state and per-member hyperparameter tensors over a declaration's update."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from trainer.config import OptimizerConfig
from trainer.optimizers import declaration_of

# On a CPU the update runs over blocks of about this many elements (K x columns): the update functions make
# several temporaries per op, and over all of (K, P) at once those outgrow the caches and glibc's malloc
# hands each back to the kernel (page faults on every step). docs/benchmarks.md (fused population engine)
# has the measurement.
CPU_BLOCK = 32768


class StackedOptimizer:
    """K members' optimizer state as (K, P) tensors, stepped by the declaration's update as trainer.optim is.

    The parameters are one flat (K, P) tensor (see StackedParameters): the per-element math is the
    reference's, and every number the update reads (trainer.optimizers.Declaration.stepped: lr, momentum,
    beta1, ...) is a (K,) tensor viewed as (K, 1) to broadcast over a row, which can change between steps
    (a schedule, a population-based search) without rebuilding anything. Every member must have the same
    optimizer and structure (flags, state kept: see plan_groups); the numbers may differ. The step count is
    shared: members only ever leave a group, they never join it late.
    """

    def __init__(self, flat: Tensor, configs: Sequence[OptimizerConfig]) -> None:
        if len(configs) != flat.shape[0]:
            raise ValueError(f"{len(configs)} optimizer configs for {flat.shape[0]} members")
        self.name = configs[0].name
        self.declaration = declaration_of(self.name)
        # every value checked with torch's messages, torch's defaults filled in
        resolved = [declaration_of(cfg.name).resolve(cfg.lr, cfg.params) for cfg in configs]
        structure = self.declaration.structure(resolved[0])
        for i, (cfg, values) in enumerate(zip(configs, resolved, strict=True)):
            theirs = self.declaration.structure(values) if cfg.name == self.name else None
            if theirs != structure:
                raise ValueError(
                    f"Member {i} has optimizer {cfg.name!r} {theirs}, member 0 {self.name!r} {structure}:"
                    " split the population with plan_groups first"
                )
        arguments = [self.declaration.arguments(values) for values in resolved]
        self.hyper: dict[str, Tensor] = {  # (K, 1), in the parameters' dtype
            name: torch.tensor([[a[name]] for a in arguments], dtype=flat.dtype, device=flat.device)
            for name in self.declaration.stepped
        }
        self.flags = {name: resolved[0][name] for name in self.declaration.flags}
        stepped = set(self.declaration.stepped) | {h.name for h in self.declaration.hyperparameters if h.is_pair}
        # per member, what is not a tensor here: the flags and numbers that only fill the initial state
        self.fixed = [{k: v for k, v in values.items() if k not in stepped} for values in resolved]
        self.step_count = 0
        self.state = self._init_state(flat, resolved)

    def _init_state(self, p: Tensor, resolved: list[dict[str, Any]]) -> dict[str, Tensor]:
        """The state trainer.optim keeps for one parameter, for every member at once (K, P)."""
        kept = self.declaration.state_names(resolved[0])
        state = {}
        for s in self.declaration.state:
            if s.name not in kept:
                continue
            if s.fill is None:
                state[s.name] = torch.zeros_like(p)
            else:
                initial = torch.tensor([[r[s.fill]] for r in resolved], dtype=p.dtype, device=p.device)  # (K, 1)
                state[s.name] = initial.expand_as(p).clone()
        return state

    def set_hyperparameter(self, name: str, values: Sequence[float] | Tensor) -> None:
        """Give each member its own value of a numeric hyperparameter (e.g. the epoch's lr), in place.

        A value that decides whether some state is kept (a momentum) may not cross zero: the group's state
        is fixed when it is built.
        """
        if name not in self.hyper:
            raise ValueError(f"Unknown hyperparameter for stacked {self.name}: {name!r} (have {sorted(self.hyper)})")
        current = self.hyper[name]
        new = torch.as_tensor(values, dtype=current.dtype).to(current.device).reshape(-1, 1)
        if new.shape != current.shape:
            raise ValueError(f"Invalid {name}: need {current.shape[0]} values, got {new.shape[0]}")
        declared = next(h for h in self.declaration.hyperparameters if name in (h.name, *h.parts))
        if not all(math.isfinite(v) and declared.valid.holds(v) for v in new.flatten().tolist()):  # torch's bounds
            raise ValueError(f"Invalid {name} value: {new.flatten().tolist()}")
        for s in self.declaration.state:
            if s.when == name and bool(((new != 0) != (s.name in self.state)).any()):
                raise ValueError(
                    f"Invalid {name} value: {new.flatten().tolist()} (cannot cross zero in this group: it decides"
                    f" whether {s.name} is kept)"
                )
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
        update = self.declaration.update
        if rows is None:
            arguments = {**self.hyper, **self.flags}
            for cols in self._column_chunks(flat):
                state = {name: s[:, cols] for name, s in self.state.items()}  # views: updated in place
                update(flat[:, cols], grad[:, cols], state, arguments, self.step_count)
            return
        # some member froze mid-epoch (diverged): update gathered copies of the others, then scatter back
        sub_flat = flat[rows]
        sub_state = {name: s[rows] for name, s in self.state.items()}
        arguments = {**{name: h[rows] for name, h in self.hyper.items()}, **self.flags}
        update(sub_flat, grad[rows], sub_state, arguments, self.step_count)
        flat[rows] = sub_flat
        for name, s in self.state.items():
            s[rows] = sub_state[name]

    def member_hyperparameters(self, row: int) -> tuple[float, dict[str, Any]]:
        """(lr, every other hyperparameter) of one member, as trainer.optim's state_dict names them."""
        numbers = self.declaration.join({name: float(h[row, 0]) for name, h in self.hyper.items()})
        values = {**self.fixed[row], **numbers}
        lr = values.pop("lr")
        return lr, {h.name: values[h.name] for h in self.declaration.hyperparameters[1:]}

    def member_state_dict(self, row: int, split: Callable[[Tensor], list[Tensor]], n: int) -> dict[str, Any]:
        """Member `row`'s state in trainer.optim's state_dict format, so trainer.train can resume from it.

        `split` turns a (P,) row into the model's n parameter tensors.
        """
        lr, hyperparameters = self.member_hyperparameters(row)
        pieces = {name: split(s[row]) for name, s in self.state.items()}
        state = [{"step": self.step_count, **{name: pieces[name][i] for name in self.state}} for i in range(n)]
        return {"name": self.name, "lr": lr, "hyperparameters": hyperparameters, "state": state}

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
        arguments = self.declaration.arguments({"lr": state_dict["lr"], **state_dict["hyperparameters"]})
        for name, h in self.hyper.items():
            h[row, 0] = float(arguments[name])

    def copy_member(self, target: int, source: int) -> None:
        """Member `target` takes member `source`'s optimizer state (not its hyperparameters)."""
        with torch.no_grad():
            for s in self.state.values():
                s[target] = s[source]

    def keep(self, rows: Tensor) -> None:
        """Drop every member not in `rows` (row positions), e.g. after it finished."""
        self.hyper = {name: h[rows] for name, h in self.hyper.items()}
        self.state = {name: s[rows] for name, s in self.state.items()}
        self.fixed = [self.fixed[int(r)] for r in rows.tolist()]
