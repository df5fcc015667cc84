"""Whether any model, ours or a plugin's, can train fused: tried on a few members, not guessed from its layers.

The fused path stacks K members' parameters and buffers (torch.func.stack_module_state) and runs them at once,
by grouped layers where functional.widen knows every layer and otherwise by torch.func.vmap over
functional_call. That is exact for most models, BatchNorm's running statistics included (each member's
buffers are stacked and updated in place under vmap). It is not for a model whose forward
- branches on its data or reads a value out of a tensor (`if x.mean() > 0`, `.item()`: vmap refuses; BatchNorm
  with momentum=None does this with its batch counter),
- draws random numbers (dropout: each run draws from its own global random stream after its own seed, which
  one stacked forward cannot replay),
- or keeps state outside its parameters and buffers, or replaces a buffer instead of updating it in place
  (functional_call puts the stacked tensors back after the call: the change is lost).
why_not_stackable runs the fused path on two members built as the runs would build them, in float64, and
compares each with its own model run alone: a training forward, again (the buffers have moved), an eval
forward, the gradient and the state afterwards. Any difference or error is the reason it gives.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from trainer.population.functional import FunctionalStack, stack_models
from trainer.population.stack import StackedParameters

MEMBERS = 2
BATCH = 4  # BatchNorm needs more than one sample per channel
RTOL, ATOL = 1e-6, 1e-9  # float64: the fused path matches the separate one to rounding


@contextmanager
def _float64_and_own_rng() -> Iterator[None]:
    """Members built in float64, and the caller's random state left as it was."""
    previous = torch.get_default_dtype()
    with torch.random.fork_rng(devices=[]):
        torch.set_default_dtype(torch.float64)
        try:
            yield
        finally:
            torch.set_default_dtype(previous)


def why_not_stackable(build: Callable[[], nn.Module], input_shape: tuple[int, ...]) -> str | None:
    """None when members of the model `build()` makes train fused exactly as each would alone, else why not.

    build() is called once per member after torch.manual_seed(member), under float64 as default dtype; an error
    it raises propagates (the model cannot be built at all: not a question of fusing it).
    """
    with _float64_and_own_rng():
        models = []
        for member in range(MEMBERS):
            torch.manual_seed(member)
            models.append(build())
        x = torch.randn(MEMBERS, BATCH, *input_shape, generator=torch.Generator().manual_seed(0))  # (K, B, ...)
        reason = _draws_random_numbers(models[0], x[0])
        if reason is not None:
            return reason
        try:
            stacked = stack_models([copy.deepcopy(m) for m in models], torch.device("cpu"))
        except (ValueError, RuntimeError) as e:
            return f"its parameters cannot be stacked: {_first_line(e)}"
        try:
            return _compare(stacked, models, x)
        except Exception as e:  # vmap's refusals are RuntimeErrors; a plugin's forward may raise anything
            return f"its forward cannot run stacked: {_first_line(e)}"


def _draws_random_numbers(model: nn.Module, x: Tensor) -> str | None:
    probe = copy.deepcopy(model).train()
    before = torch.get_rng_state()
    probe(x)
    if not torch.equal(before, torch.get_rng_state()):
        return (
            "its forward draws random numbers (dropout or the like): each run draws them from its own random"
            " stream, which one stacked forward cannot replay"
        )
    return None


def _compare(stacked: StackedParameters | FunctionalStack, models: list[nn.Module], x: Tensor) -> str | None:
    for step, train in enumerate((True, True, False)):
        logits = stacked.forward(x, train=train)  # (K, B, C)
        for row, model in enumerate(models):
            model.train(train)
            with torch.no_grad():
                alone = model(x[row])
            if not torch.allclose(logits[row].detach(), alone, rtol=RTOL, atol=ATOL):
                mode = "training" if train else "eval"
                gap = (logits[row].detach() - alone).abs().max().item()
                return (
                    f"stacked, member {row}'s {mode} forward (call {step + 1}) differs from its own by up to {gap:.3g}:"
                    " the model keeps state outside its parameters and buffers, or replaces a buffer in its forward"
                )
    grad = stacked.grad(stacked.forward(x).square().sum())  # (K, P)
    for row, model in enumerate(models):
        model.train()
        model.zero_grad()
        model(x[row]).square().sum().backward()
        parameters = list(model.parameters())
        grads = stacked.split_row(grad[row])  # in model.parameters() order and shapes
        for name, p, g in zip((n for n, _ in model.named_parameters()), parameters, grads, strict=True):
            alone = p.grad if p.grad is not None else torch.zeros_like(p)
            if g.shape != alone.shape or not torch.allclose(g, alone, rtol=RTOL, atol=ATOL):
                return f"stacked, member {row}'s gradient of {name!r} differs from its own"
        state = stacked.member_state(row)
        for name, value in model.state_dict().items():
            if name not in state or not _close(state[name], value):
                return (
                    f"stacked, member {row}'s {name!r} differs from its own after training steps: the model"
                    " replaces that buffer in its forward instead of updating it in place"
                )
    return None


def _close(a: Tensor, b: Tensor) -> bool:
    if a.shape != b.shape:
        return False
    if not b.is_floating_point():
        return torch.equal(a, b)  # e.g. BatchNorm's num_batches_tracked
    return torch.allclose(a.to(b.dtype), b, rtol=RTOL, atol=ATOL)


def _first_line(error: BaseException) -> str:
    text = str(error).strip().split("\n")[0]
    return f"{type(error).__name__}: {text[:300]}"
