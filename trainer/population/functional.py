"""K members of a model with convolutions and BatchNorm as one flat parameter tensor (K, P), and stack_models."""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, stack_module_state, vmap

from trainer.models import BasicBlock, Reshape
from trainer.population.stack import FlatStack, StackedParameters, mlp_layers
from trainer.sequential import Residual

# Why grouped convolutions rather than torch.func.vmap(functional_call): faster in every CPU run measured
# (docs/benchmarks.md, "Design measurements of the fused path"; bench/stacked_forward.py measures it, with
# --device cuda on a GPU). vmap lowers each conv to the same grouped convolution, but its BatchNorm rule
# normalises without the affine weight and applies it after (a mul and an add, two reduction sums in the
# backward, per layer) and its max_pool rule calls max_pool2d_with_indices twice (profiled). The grouped path
# keeps every member's channels side by side, (B, K * C, *spatial), where each channel-wise op (BatchNorm,
# ReLU, pooling) already treats them apart, so only conv, linear and reshape layers need a stacked version.
# vmap stays the fallback for layers the grouped path does not know. On a CPU it is no faster than a loop
# over the models (K members' activations outgrow the caches one member's fit); a GPU has the parallelism
# to spare instead.


class FunctionalStack(FlatStack):
    """Every member's parameters in one row of `flat` (K, P) with per-parameter views (K, *shape) of it, and
    their buffers (BatchNorm's running statistics) stacked as (K, *shape) tensors beside it.

    The same interface as StackedParameters, for models it cannot take: StackedOptimizer updates `flat`
    in place and the views see it. The forward runs a copy of the model on the meta device whose conv,
    BatchNorm and linear layers read the stacked tensors (see widen); a model with any other layer runs
    through torch.func.vmap(functional_call) instead. In training mode BatchNorm updates each member's
    running statistics as that member's own model would; evaluation uses them.
    """

    def __init__(self, models: Sequence[nn.Module], device: torch.device, grouped: bool = True) -> None:
        """grouped=False runs vmap(functional_call) even where widen applies (bench/stacked_forward.py compares)."""
        params, buffers = stack_module_state(list(models))  # name -> (K, *shape), named_parameters() order
        k = len(models)
        self.transposed: set[str] = set()  # weights keep the model's own layout here
        self.shapes = {name: tuple(p.shape[1:]) for name, p in params.items()}
        self.flat = torch.cat([p.detach().reshape(k, -1) for p in params.values()], dim=1).to(device)  # (K, P)
        self.buffers = {name: b.detach().to(device) for name, b in buffers.items()}  # name -> (K, *shape)
        self.state_keys = list(models[0].state_dict())  # parameters and persistent buffers, in the model's order
        self.template, self.grouped = copy.deepcopy(models[0]).to("meta"), False
        if grouped:
            with contextlib.suppress(ValueError):  # a layer widen does not know: vmap over this template
                self.template, self.grouped = widen(models[0]), True
        self.views = self._make_views()

    def _make_views(self) -> dict[str, Tensor]:
        views = super()._make_views()
        self._bind({**views, **self.buffers})
        return views

    def _bind(self, tensors: dict[str, Tensor]) -> None:
        """The widened layers hold the stacked tensors themselves: no swapping per call (functional_call's)."""
        if self.grouped:
            for name, tensor in tensors.items():
                owner, _, attr = name.rpartition(".")
                setattr(self.template.get_submodule(owner), attr, tensor)

    def forward(self, x: Tensor, train: bool = True, rows: Tensor | None = None) -> Tensor:
        """Logits (K, B, C) of each member k on its own batch x[k]: x is (K, B, *input_shape).

        train: training mode (BatchNorm normalises by the batch and updates the running statistics) or
        eval mode (it normalises by them). rows: the members still training (row positions); the others'
        running statistics are left as they were, as a member frozen for the epoch makes no more steps.
        """
        if self.template.training != train:
            self.template.train(train)
        buffers = self.buffers
        if train and rows is not None and buffers:
            # the forward updates copies; only the live rows are written back. (Restoring the frozen rows
            # afterwards instead would modify tensors the backward still needs: batch_norm saves them.)
            buffers = {name: b.clone() for name, b in self.buffers.items()}
            self._bind(buffers)
        if self.grouped:
            k, b = x.shape[:2]
            h = x.transpose(0, 1).flatten(1, 2)  # (B, K * C, *spatial): member k's channels at [k * C, (k+1) * C)
            logits = self.template(h).view(b, k, -1).transpose(0, 1)  # (B, K * C) -> (K, B, C)
        else:
            logits = vmap(self._member_forward)(self.views, buffers, x)  # (K, B, C)
        if buffers is not self.buffers:
            assert rows is not None
            with torch.no_grad():
                for name, b in self.buffers.items():
                    b[rows] = buffers[name][rows]
            self._bind(self.buffers)
        return logits

    def _member_forward(self, params: dict[str, Tensor], buffers: dict[str, Tensor], x: Tensor) -> Tensor:
        return functional_call(self.template, (params, buffers), (x,))

    def member_state(self, row: int) -> dict[str, Tensor]:
        """Member `row`'s state_dict: parameters and buffers in its model's own names and shapes (copies)."""
        tensors = {**self.views, **self.buffers}
        return {name: tensors[name][row].detach().clone() for name in self.state_keys}

    def copy_row(self, target: int, source: int) -> None:
        """Member `target` takes member `source`'s parameters and buffers (exploit in population based training)."""
        super().copy_row(target, source)
        with torch.no_grad():
            for b in self.buffers.values():
                b[target] = b[source]

    def keep(self, rows: Tensor) -> None:
        """Drop every member not in `rows` (row positions), buffers included."""
        self.buffers = {name: b[rows] for name, b in self.buffers.items()}  # before the views bind them
        super().keep(rows)


def stack_models(models: Sequence[nn.Module], device: torch.device) -> StackedParameters | FunctionalStack:
    """K built models as one stack: batched matmul for MLPs (the faster path there), FunctionalStack otherwise."""
    try:
        mlp_layers(models[0])
    except ValueError:
        return FunctionalStack(models, device)
    if any(True for _ in models[0].buffers()):
        return FunctionalStack(models, device)
    return StackedParameters(models, device)


# Layers that act on each channel alone (or elementwise), so they run unchanged over (B, K * C, *spatial).
CHANNELWISE = (
    nn.ReLU,
    nn.Tanh,
    nn.GELU,
    nn.Identity,
    nn.MaxPool1d,
    nn.MaxPool2d,
    nn.AvgPool1d,
    nn.AvgPool2d,
    nn.AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveMaxPool1d,
    nn.AdaptiveMaxPool2d,
)
# Containers whose forward only combines its children's outputs elementwise (the residual sums).
CONTAINERS = (nn.Sequential, BasicBlock, Residual)
KNOWN = frozenset(
    {*CONTAINERS, *CHANNELWISE, nn.Flatten, Reshape, nn.Conv1d, nn.Conv2d, nn.BatchNorm1d, nn.BatchNorm2d, nn.Linear}
)


def widen(model: nn.Module) -> nn.Module:
    """A copy of `model` on the meta device that runs K members at once over (B, K * C, *spatial) activations:
    conv, BatchNorm, linear and Reshape layers become the stacked versions below (FunctionalStack binds the
    stacked tensors to them), channel-wise layers stay. ValueError for any other layer or container.
    """
    return _widen(copy.deepcopy(model).to("meta"), "model")


def _widen(module: nn.Module, name: str) -> nn.Module:
    # exact types: a subclass may override forward with something that is not channel-wise
    if type(module) not in KNOWN:
        raise ValueError(f"Cannot widen layer {name} ({module})")
    if isinstance(module, CONTAINERS):
        for child_name, child in module.named_children():
            setattr(module, child_name, _widen(child, f"{name}.{child_name}"))
        return module
    if isinstance(module, CHANNELWISE):
        return module
    if isinstance(module, nn.Flatten) and (module.start_dim, module.end_dim) == (1, -1):
        return module  # (B, K * C, *spatial) -> (B, K * C * prod(spatial)): member-major, as the linear needs
    if isinstance(module, Reshape):
        return _StackedReshape(module.shape)
    if isinstance(module, nn.Conv1d | nn.Conv2d) and module.padding_mode == "zeros":
        return _StackedConv(module)
    if (
        isinstance(module, nn.BatchNorm1d | nn.BatchNorm2d)
        and module.track_running_stats
        and module.momentum is not None
    ):
        return _StackedBatchNorm(module)
    if isinstance(module, nn.Linear):
        return _StackedLinear()
    raise ValueError(f"Cannot widen layer {name} ({module})")


class _StackedReshape(nn.Module):
    """Reshape for K members: (B, K * D) or (B, K * C, ...) -> (B, K * shape[0], *shape[1:])."""

    def __init__(self, shape: tuple[int, ...]) -> None:
        super().__init__()
        self.shape = shape

    def forward(self, h: Tensor) -> Tensor:
        return h.reshape(h.shape[0], -1, *self.shape[1:])


class _StackedConv(nn.Module):
    """K convolutions as one with K times the groups: member k's output channels read only its input channels."""

    def __init__(self, conv: nn.Conv1d | nn.Conv2d) -> None:
        super().__init__()
        self.weight = torch.empty(0)  # (K, C_out, C_in / groups, *kernel), bound by FunctionalStack
        self.bias: Tensor | None = None  # (K, C_out) when the conv has a bias
        self.op: Callable[..., Tensor] = F.conv2d if isinstance(conv, nn.Conv2d) else F.conv1d
        self.stride, self.padding, self.dilation, self.groups = conv.stride, conv.padding, conv.dilation, conv.groups

    def forward(self, h: Tensor) -> Tensor:  # (B, K * C_in, *spatial) -> (B, K * C_out, *spatial')
        k = self.weight.shape[0]
        bias = None if self.bias is None else self.bias.reshape(-1)
        return self.op(h, self.weight.flatten(0, 1), bias, self.stride, self.padding, self.dilation, self.groups * k)


class _StackedBatchNorm(nn.Module):
    """BatchNorm over K * C channels: each member's statistics, affine weights and running buffers apart.

    The running buffers are (K, C) contiguous tensors, so their (K * C,) views are updated in place; the
    counter is (K,) and only BatchNorm's momentum=None mode reads it, which widen refuses.
    """

    def __init__(self, bn: nn.BatchNorm1d | nn.BatchNorm2d) -> None:
        super().__init__()
        self.weight: Tensor | None = None  # (K, C) when affine, as is bias
        self.bias: Tensor | None = None
        self.running_mean = torch.empty(0)  # (K, C)
        self.running_var = torch.empty(0)  # (K, C)
        self.num_batches_tracked = torch.empty(0)  # (K,)
        self.momentum: float = bn.momentum or 0.0  # widen takes no momentum=None (a cumulative average)
        self.eps = bn.eps

    def forward(self, h: Tensor) -> Tensor:
        if self.training:
            self.num_batches_tracked.add_(1)
        weight = None if self.weight is None else self.weight.reshape(-1)
        bias = None if self.bias is None else self.bias.reshape(-1)
        return F.batch_norm(
            h,
            self.running_mean.view(-1),
            self.running_var.view(-1),
            weight,
            bias,
            self.training,
            self.momentum,
            self.eps,
        )


class _StackedLinear(nn.Module):
    """K linear layers as one batched matmul, (B, K * in) -> (B, K * out); over the last axis of a wider input,
    (B, K * C, ..., in) -> (B, K * C, ..., out), as nn.Linear acts on each member's (C, ..., in)."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.empty(0)  # (K, out, in), bound by FunctionalStack
        self.bias: Tensor | None = None  # (K, out)

    def forward(self, h: Tensor) -> Tensor:
        k = self.weight.shape[0]
        if h.dim() > 2:
            b = h.shape[0]
            rows = h.reshape(b, k, -1, h.shape[-1])  # (B, K, M, in): member k's channels and positions, in order
            out = torch.einsum("bkmi,koi->bkmo", rows, self.weight)  # (B, K, M, out)
            if self.bias is not None:
                out = out + self.bias[None, :, None, :]
            return out.reshape(*h.shape[:-1], -1)  # (B, K * C, ..., out)
        h = h.view(h.shape[0], k, -1).transpose(0, 1)  # (K, B, in)
        w_t = self.weight.transpose(1, 2)  # (K, in, out)
        out = torch.bmm(h, w_t) if self.bias is None else torch.baddbmm(self.bias.unsqueeze(1), h, w_t)  # (K, B, out)
        return out.transpose(0, 1).flatten(1)  # (B, K * out)
