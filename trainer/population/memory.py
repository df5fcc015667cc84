"""How many members fit on a device at once: an estimate of a member's memory, and groups cut to a budget.

A fused group holds, per member: its parameters, their gradient and the optimizer's state (K x P each,
plus the update's temporaries), and the activations of one batch kept for the backward pass. The estimate
counts those from the model actually built, so it holds for any architecture; it is deliberately generous
(a factor for the allocator and the temporaries the elementwise updates make), since running out of memory
mid-sweep costs far more than one more group.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
from torch import nn

from trainer.config import RunConfig
from trainer.optimizers import OPTIMIZERS

TEMPORARIES = 3  # the update functions' intermediate (K, P) blocks
SLACK = 1.5  # allocator rounding and fragmentation, cuBLAS workspaces
BUDGET_FRACTION = 0.8  # of the free device memory a population may plan to use


def member_bytes(config: RunConfig, model: nn.Module, input_shape: Sequence[int], dtype: torch.dtype) -> int:
    """Bytes one member of `model` (built from config.model) needs in a fused group, with one batch in flight."""
    size = torch.empty((), dtype=dtype).element_size()
    n_params = sum(p.numel() for p in model.parameters())
    n_buffers = sum(b.numel() for b in model.buffers())
    # the optimizer's state tensors per parameter, at most (amsgrad's max_exp_avg_sq, centered rmsprop with momentum)
    state_tensors = len(OPTIMIZERS[config.optimizer.name if config.optimizer.name in OPTIMIZERS else "adam"].state)
    weights = n_params * (2 + state_tensors + TEMPORARIES) + n_buffers
    activations = _activations(model, input_shape, config.batch_size)
    return int(SLACK * size * (weights + 2 * activations))  # outputs and their gradients


def _activations(model: nn.Module, input_shape: Sequence[int], batch_size: int) -> int:
    """Elements of every leaf module's output for one batch: counted on one sample in eval mode, times the batch.

    (Eval mode leaves BatchNorm's statistics and the random streams alone; the meta device would do without
    computing anything, but its first use imports torch's tracing stack, seconds on a busy machine.)
    """
    total = 0

    def count(_: nn.Module, __: object, output: object) -> None:
        nonlocal total
        if isinstance(output, torch.Tensor):
            total += output.numel()

    hooks = [m.register_forward_hook(count) for m in model.modules() if not list(m.children())]
    training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, *input_shape, dtype=next(model.parameters()).dtype))
    finally:
        model.train(training)
        for h in hooks:
            h.remove()
    return (total + int(torch.Size(input_shape).numel())) * batch_size


def budget_bytes(device: torch.device) -> int | None:
    """What a population may plan to use on `device`: a share of the free memory; None when unknown."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free * BUDGET_FRACTION)
    try:
        pages = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None
    return int(pages * BUDGET_FRACTION)


def split(indices: Sequence[int], per_member: int, budget: int | None) -> list[list[int]]:
    """`indices` in order, in chunks whose members fit the budget together (at least one member per chunk)."""
    if budget is None or per_member <= 0:
        return [list(indices)]
    size = max(budget // per_member, 1)
    return [list(indices[i : i + size]) for i in range(0, len(indices), size)]
