"""Every optimizer declared once: torch's hyperparameters (names, defaults, bounds), its flags, its state, its update.

Plain data and functions of tensors, with no torch import, so anything may read it: trainer.optim (one
run's optimizer), the fused engine's StackedOptimizer, planner and memory estimate
(trainer.population) derive from these declarations, and tests/trainer/test_optimizers.py holds the
service's torch-free copy (lrlab/schemas/spec.py) to them and them to torch.optim.

An update is torch.optim's single-tensor step written as plain tensor arithmetic, in place on the
parameter and its state. A number it reads is a float, or (for the fused population engine) a tensor
shaped (K, 1, ..., 1) that broadcasts over parameters stacked along a leading member dimension K, so an
update branches only on flags and on which state exists, and on whether its numbers are plain floats: then
(one run's optimizer) it takes torch's own sequence of fused in-place ops (lerp_, addcmul_, addcdiv_; no
weight-decay term at 0). A small model's step is mostly per-op dispatch, and the general form ran about twice
torch's ops: trainer.train lost ~10% against a bare torch loop to it (docs/benchmarks.md).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeAlias

if TYPE_CHECKING:
    from torch import Tensor

# (parameter, gradient, its state by name, the update's arguments (see Declaration.arguments), step count)
Update: TypeAlias = "Callable[[Tensor, Tensor, Mapping[str, Tensor], Mapping[str, Any], int], None]"


@dataclass(frozen=True)
class Bounds:
    """low <= x <= high, either end open (strict) where marked."""

    low: float = 0.0
    high: float = math.inf
    low_open: bool = False
    high_open: bool = False

    def holds(self, x: float) -> bool:  # False for NaN
        above = x > self.low if self.low_open else x >= self.low
        below = x < self.high if self.high_open else x <= self.high
        return above and below


@dataclass(frozen=True)
class Hyperparameter:
    """One of torch's constructor arguments: a number, a flag (a bool default) or a pair (`parts` named)."""

    name: str  # torch's
    default: float | bool | tuple[float, float]  # torch's
    valid: Bounds = Bounds()  # what torch accepts: the trainer refuses anything else with torch's message
    allowed: Bounds = Bounds()  # what a run spec may ask for: the API's bounds (lrlab/schemas/spec.py)
    label: str | None = None  # its name in torch's error message where that is not `name`
    parts: tuple[str, ...] = ()  # a pair's halves as the update reads them (betas: beta1, beta2)
    stepped: bool = True  # read by every update; False: it only fills the initial state

    @property
    def is_flag(self) -> bool:
        return isinstance(self.default, bool)

    @property
    def is_pair(self) -> bool:
        return bool(self.parts)


@dataclass(frozen=True)
class State:
    """A per-parameter state tensor: zeros (or `fill`'s value), kept only while `when` is nonzero or true."""

    name: str
    when: str | None = None  # a hyperparameter; None: always kept
    fill: str | None = None  # a hyperparameter whose value it starts at


@dataclass(frozen=True)
class Declaration:
    name: str
    hyperparameters: tuple[Hyperparameter, ...]  # lr first, then in torch's signature order
    state: tuple[State, ...]
    update: Update
    # a rule across hyperparameters, as torch checks it: the message for resolved values that break it, or None
    rule: Callable[[Mapping[str, Any]], str | None] | None = None

    @property
    def defaults(self) -> dict[str, Any]:
        """torch's defaults, lr included."""
        return {h.name: h.default for h in self.hyperparameters}

    @property
    def flags(self) -> tuple[str, ...]:
        return tuple(h.name for h in self.hyperparameters if h.is_flag)

    @property
    def stepped(self) -> tuple[str, ...]:
        """The numbers every update reads, pairs by their parts: per-member tensors in the fused engine."""
        names: list[str] = []
        for h in self.hyperparameters:
            if not h.is_flag and h.stepped:
                names.extend(h.parts or (h.name,))
        return tuple(names)

    def resolve(self, lr: Any, given: Mapping[str, Any]) -> dict[str, Any]:
        """lr and `given` with torch's defaults filled in, each checked as torch's constructor checks it.

        Numbers come back as floats and a pair as a tuple; a ValueError carries torch's message.
        """
        known = {h.name for h in self.hyperparameters} - {"lr"}
        unknown = set(given) - known
        if unknown:
            raise ValueError(f"Unknown hyperparameter for {self.name}: {sorted(unknown)}")
        values: dict[str, Any] = {}
        for h in self.hyperparameters[1:]:  # lr is checked last, as torch's base class does
            values[h.name] = _check(h, given.get(h.name, h.default))
        if self.rule is not None and (problem := self.rule(values)) is not None:
            raise ValueError(problem)
        ok = isinstance(lr, int | float) and not isinstance(lr, bool) and math.isfinite(lr) and lr >= 0
        if not ok:
            raise ValueError(f"Invalid learning rate: {lr!r}")
        return {"lr": float(lr), **values}

    def state_names(self, values: Mapping[str, Any]) -> tuple[str, ...]:
        """The state tensors an optimizer with these (resolved) hyperparameters keeps per parameter."""
        return tuple(s.name for s in self.state if s.when is None or bool(values[s.when]))

    def structure(self, values: Mapping[str, Any]) -> tuple[Any, ...]:
        """What members must share to step as one: the flags and the state kept (numbers may differ).

        A zero momentum is structural: no momentum buffer is kept then (torch's sgd then ignores its
        dampening), so a member with a buffer and momentum 0 would not be the same run.
        """
        return tuple((f, bool(values[f])) for f in self.flags), self.state_names(values)

    def arguments(self, values: Mapping[str, Any]) -> dict[str, Any]:
        """What the update reads: the stepped numbers (a pair split into its parts) and the flags."""
        out: dict[str, Any] = {}
        for h in self.hyperparameters:
            if h.is_pair:
                out.update(zip(h.parts, values[h.name], strict=True))
            elif h.is_flag or h.stepped:
                out[h.name] = values[h.name]
        return out

    def join(self, arguments: Mapping[str, Any]) -> dict[str, Any]:
        """The inverse of arguments for the numbers: the update's names back to torch's (parts into a pair)."""
        out = dict(arguments)
        for h in self.hyperparameters:
            if h.is_pair and all(part in out for part in h.parts):
                out[h.name] = tuple(out.pop(part) for part in h.parts)
        return out


def _check(h: Hyperparameter, value: Any) -> Any:
    label = h.label or h.name
    if h.is_flag:
        if not isinstance(value, bool):
            raise ValueError(f"Invalid {label} value: {value!r} (need true or false)")
        return value
    if h.is_pair:
        if not isinstance(value, Sequence) or isinstance(value, str) or len(value) != 2:
            raise ValueError(f"Invalid {label} value: {value!r} (need two numbers)")
        for i, x in enumerate(value):
            if isinstance(x, bool) or not isinstance(x, int | float) or not h.valid.holds(x):
                raise ValueError(f"Invalid beta parameter at index {i}: {x!r}")
        return tuple(float(x) for x in value)
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if not (ok and h.valid.holds(value)):
        raise ValueError(f"Invalid {label} value: {value!r}")
    return float(value)


def declaration_of(name: str) -> Declaration:
    if name not in OPTIMIZERS:
        raise ValueError(f"Unknown optimizer: {name!r} (choose from {sorted(OPTIMIZERS)})")
    return OPTIMIZERS[name]


# --- the shared pieces: lr, weight decay, eps --------------------------------------------------------

MAX_LR = 1000.0  # a huge lr is an experiment, not an error
UNIT = Bounds(0.0, 1.0)


def _lr(default: float) -> Hyperparameter:
    return Hyperparameter("lr", default, allowed=Bounds(0.0, MAX_LR, low_open=True))


def _weight_decay(default: float = 0.0) -> Hyperparameter:
    return Hyperparameter("weight_decay", default, allowed=Bounds(0.0, 10.0))


def _eps(default: float) -> Hyperparameter:
    return Hyperparameter("eps", default, allowed=UNIT, label="epsilon")


def _momentum() -> Hyperparameter:
    return Hyperparameter("momentum", 0.0, allowed=Bounds(0.0, 1.0, high_open=True))


def _floats(h: Mapping[str, Any], *names: str) -> bool:
    """Whether these numbers are plain floats (one run), not per-member tensors (a fused population)."""
    return all(isinstance(h[n], float | int) for n in names)


# --- sgd ------------------------------------------------------------------------------------------


def sgd_update(p: Tensor, g: Tensor, state: Mapping[str, Tensor], h: Mapping[str, Any], step: int) -> None:
    momentum = h["momentum"]
    momentum_buffer = state.get("momentum_buffer")
    if _floats(h, "lr", "momentum", "dampening", "weight_decay"):  # torch's own ops
        if h["weight_decay"] != 0:
            g = g.add(p, alpha=h["weight_decay"])
        if momentum_buffer is not None:
            if step == 1:
                momentum_buffer.copy_(g)
            else:
                momentum_buffer.mul_(momentum).add_(g, alpha=1 - h["dampening"])
            g = g.add(momentum_buffer, alpha=momentum) if h["nesterov"] else momentum_buffer
        p.add_(g, alpha=-h["lr"])
        return
    g = g + h["weight_decay"] * p
    if momentum_buffer is not None:
        if step == 1:
            momentum_buffer.copy_(g)  # torch seeds the buffer with the first gradient, undamped
        else:
            momentum_buffer.mul_(momentum).add_((1 - h["dampening"]) * g)
        g = g + momentum * momentum_buffer if h["nesterov"] else momentum_buffer
    p.sub_(h["lr"] * g)


def _nesterov_rule(values: Mapping[str, Any]) -> str | None:
    if values["nesterov"] and (values["momentum"] <= 0 or values["dampening"] != 0):
        return "Nesterov momentum requires a momentum and zero dampening"
    return None


SGD = Declaration(
    "sgd",
    (
        _lr(1e-3),
        _momentum(),
        Hyperparameter("dampening", 0.0, allowed=UNIT),
        _weight_decay(),
        Hyperparameter("nesterov", False),
    ),
    (State("momentum_buffer", when="momentum"),),  # torch keeps no buffer without momentum
    sgd_update,
    _nesterov_rule,
)


# --- rmsprop --------------------------------------------------------------------------------------


def rmsprop_update(p: Tensor, g: Tensor, state: Mapping[str, Tensor], h: Mapping[str, Any], step: int) -> None:
    alpha, eps = h["alpha"], h["eps"]
    square_avg, grad_avg, momentum_buffer = state["square_avg"], state.get("grad_avg"), state.get("momentum_buffer")
    if _floats(h, "lr", "alpha", "eps", "weight_decay", "momentum"):  # torch's own ops
        if h["weight_decay"] != 0:
            g = g.add(p, alpha=h["weight_decay"])
        square_avg.mul_(alpha).addcmul_(g, g, value=1 - alpha)
        if grad_avg is not None:
            grad_avg.lerp_(g, 1 - alpha)
            avg = square_avg.addcmul(grad_avg, grad_avg, value=-1).sqrt_().add_(eps)
        else:
            avg = square_avg.sqrt().add_(eps)
        if momentum_buffer is not None:
            momentum_buffer.mul_(h["momentum"]).addcdiv_(g, avg)
            p.add_(momentum_buffer, alpha=-h["lr"])
        else:
            p.addcdiv_(g, avg, value=-h["lr"])
        return
    g = g + h["weight_decay"] * p
    square_avg.mul_(alpha).add_((1 - alpha) * g * g)
    if grad_avg is not None:
        # centered: divide by an estimate of the gradient's variance, E[g^2] - E[g]^2
        grad_avg.mul_(alpha).add_((1 - alpha) * g)
        avg = (square_avg - grad_avg * grad_avg).sqrt() + eps
    else:
        avg = square_avg.sqrt() + eps
    if momentum_buffer is not None:
        momentum_buffer.mul_(h["momentum"]).add_(g / avg)
        p.sub_(h["lr"] * momentum_buffer)
    else:
        p.sub_(h["lr"] * g / avg)


RMSPROP = Declaration(
    "rmsprop",
    (
        _lr(1e-2),
        Hyperparameter("alpha", 0.99, allowed=UNIT),
        _eps(1e-8),
        _weight_decay(),
        _momentum(),
        Hyperparameter("centered", False),
    ),
    (State("square_avg"), State("grad_avg", when="centered"), State("momentum_buffer", when="momentum")),
    rmsprop_update,
)


# --- adam and adamw -------------------------------------------------------------------------------


def _adam(p: Tensor, g: Tensor, state: Mapping[str, Tensor], h: Mapping[str, Any], step: int, decay: Any) -> None:
    beta1, beta2 = h["beta1"], h["beta2"]
    exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
    if _floats(h, "lr", "beta1", "beta2", "eps") and isinstance(decay, float | int):  # torch's own ops
        if decay != 0:
            g = g.add(p, alpha=decay)
        exp_avg.lerp_(g, 1 - beta1)
        exp_avg_sq.mul_(beta2).addcmul_(g, g, value=1 - beta2)
        second = exp_avg_sq
        if h["amsgrad"]:
            second = state["max_exp_avg_sq"]
            second.copy_(second.maximum(exp_avg_sq))
        denom = (second.sqrt() / (1 - beta2**step) ** 0.5).add_(h["eps"])
        p.addcdiv_(exp_avg, denom, value=-h["lr"] / (1 - beta1**step))
        return
    g = g + decay * p  # L2 penalty folded into the gradient (Adam, not AdamW)
    exp_avg.mul_(beta1).add_((1 - beta1) * g)
    exp_avg_sq.mul_(beta2).add_((1 - beta2) * g * g)
    # both moments start at zero, so early averages are biased towards zero by (1 - beta^step)
    bias_correction1 = 1 - beta1**step
    bias_correction2 = 1 - beta2**step
    second = exp_avg_sq
    if h["amsgrad"]:
        max_exp_avg_sq = state["max_exp_avg_sq"]
        max_exp_avg_sq.copy_(max_exp_avg_sq.maximum(exp_avg_sq))
        second = max_exp_avg_sq
    denom = second.sqrt() / bias_correction2**0.5 + h["eps"]
    p.sub_(h["lr"] / bias_correction1 * exp_avg / denom)


def adam_update(p: Tensor, g: Tensor, state: Mapping[str, Tensor], h: Mapping[str, Any], step: int) -> None:
    _adam(p, g, state, h, step, h["weight_decay"])


def adamw_update(p: Tensor, g: Tensor, state: Mapping[str, Tensor], h: Mapping[str, Any], step: int) -> None:
    # decoupled weight decay: shrink the weights directly, outside the adaptive scaling
    p.mul_(1 - h["lr"] * h["weight_decay"])
    _adam(p, g, state, h, step, 0.0)


def _adam_like(name: str, weight_decay: float, update: Update) -> Declaration:
    """Adam and AdamW: the same moments and state; only the weight decay (and its default) differs."""
    return Declaration(
        name,
        (
            _lr(1e-3),
            Hyperparameter(
                "betas",
                (0.9, 0.999),
                valid=Bounds(0.0, 1.0, high_open=True),
                allowed=Bounds(0.0, 1.0, high_open=True),
                parts=("beta1", "beta2"),
            ),
            _eps(1e-8),
            _weight_decay(weight_decay),
            Hyperparameter("amsgrad", False),
        ),
        (State("exp_avg"), State("exp_avg_sq"), State("max_exp_avg_sq", when="amsgrad")),
        update,
    )


ADAM = _adam_like("adam", 0.0, adam_update)
ADAMW = _adam_like("adamw", 1e-2, adamw_update)


# --- adagrad --------------------------------------------------------------------------------------


def adagrad_update(p: Tensor, g: Tensor, state: Mapping[str, Tensor], h: Mapping[str, Any], step: int) -> None:
    state_sum = state["sum"]
    clr = h["lr"] / (1 + (step - 1) * h["lr_decay"])
    if _floats(h, "lr", "lr_decay", "weight_decay", "eps"):  # torch's own ops
        if h["weight_decay"] != 0:
            g = g.add(p, alpha=h["weight_decay"])
        state_sum.addcmul_(g, g, value=1)
        p.addcdiv_(g, state_sum.sqrt().add_(h["eps"]), value=-clr)
        return
    g = g + h["weight_decay"] * p
    state_sum.add_(g * g)
    p.sub_(clr * g / (state_sum.sqrt() + h["eps"]))


ADAGRAD = Declaration(
    "adagrad",
    (
        _lr(1e-2),
        Hyperparameter("lr_decay", 0.0, allowed=UNIT),
        _weight_decay(),
        Hyperparameter("initial_accumulator_value", 0.0, allowed=Bounds(0.0, 10.0), stepped=False),
        _eps(1e-10),
    ),
    (State("sum", fill="initial_accumulator_value"),),
    adagrad_update,
)


# --- adadelta -------------------------------------------------------------------------------------


def adadelta_update(p: Tensor, g: Tensor, state: Mapping[str, Tensor], h: Mapping[str, Any], step: int) -> None:
    rho, eps = h["rho"], h["eps"]
    square_avg, acc_delta = state["square_avg"], state["acc_delta"]
    if _floats(h, "lr", "rho", "eps", "weight_decay"):  # torch's own ops
        if h["weight_decay"] != 0:
            g = g.add(p, alpha=h["weight_decay"])
        square_avg.mul_(rho).addcmul_(g, g, value=1 - rho)
        delta = acc_delta.add(eps).sqrt_().div_(square_avg.add(eps).sqrt_()).mul_(g)
        acc_delta.mul_(rho).addcmul_(delta, delta, value=1 - rho)
        p.add_(delta, alpha=-h["lr"])
        return
    g = g + h["weight_decay"] * p
    square_avg.mul_(rho).add_((1 - rho) * g * g)
    # RMS of past updates over RMS of gradients: the step comes out in the parameter's own units
    delta = (acc_delta + eps).sqrt() / (square_avg + eps).sqrt() * g
    acc_delta.mul_(rho).add_((1 - rho) * delta * delta)
    p.sub_(h["lr"] * delta)


ADADELTA = Declaration(
    "adadelta",
    (
        Hyperparameter("lr", 1.0, allowed=Bounds(0.0, MAX_LR, low_open=True)),
        Hyperparameter("rho", 0.9, valid=UNIT, allowed=UNIT),
        _eps(1e-6),
        _weight_decay(),
    ),
    (State("square_avg"), State("acc_delta")),
    adadelta_update,
)


OPTIMIZERS: dict[str, Declaration] = {d.name: d for d in (SGD, RMSPROP, ADAM, ADAMW, ADAGRAD, ADADELTA)}
