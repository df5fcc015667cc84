"""K members of one MLP as one flat parameter tensor (K, P), run forward together by batched matmul."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.func import stack_module_state

# A layer of the stacked forward: ("flatten", "", ""), ("relu", "", "") or ("linear", weight name,
# bias name), the names being the model's own parameter names.
Layer = tuple[str, str, str]

# Why batched matmul rather than torch.func.vmap(functional_call): it was faster on the CPU, with or without
# threads, and a loop over separate models slower still; vmap lowers F.linear to the same matmuls but pays for
# the wrapping on every call. The measurement: docs/benchmarks.md, "Design measurements of the fused path".


class FlatStack:
    """K members' parameters as one flat (K, P) tensor with per-parameter views (K, *shape) of it.

    What every stacked model shares: subclasses set `flat`, `shapes` (name -> a member's shape, in
    named_parameters() order) and `transposed` (names stored transposed) and call _make_views, then add
    their own forward and member_state.
    """

    flat: Tensor
    shapes: dict[str, tuple[int, ...]]
    transposed: set[str]
    views: dict[str, Tensor]

    def _make_views(self) -> dict[str, Tensor]:
        views, offset = {}, 0
        with torch.no_grad():
            for name, shape in self.shapes.items():
                size = int(torch.Size(shape).numel())
                views[name] = self.flat[:, offset : offset + size].view(-1, *shape).requires_grad_()  # (K, *shape)
                offset += size
        return views

    def grad(self, loss: Tensor) -> Tensor:
        """d loss / d flat, (K, P): with loss a sum of per-member losses, row k is member k's own gradient."""
        grads = torch.autograd.grad(loss, list(self.views.values()))
        return torch.cat([g.reshape(g.shape[0], -1) for g in grads], dim=1)

    def split_row(self, row: Tensor) -> list[Tensor]:
        """A (P,) row of flat-shaped data (weights or optimizer state) as the model's parameter tensors, in
        model.parameters() order and shapes (copies): what trainer.optim's per-parameter state holds."""
        out, offset = [], 0
        for name, shape in self.shapes.items():
            size = int(torch.Size(shape).numel())
            piece = row[offset : offset + size].view(shape)
            out.append((piece.T if name in self.transposed else piece).detach().clone())
            offset += size
        return out

    def join_row(self, tensors: Sequence[Tensor]) -> Tensor:
        """The inverse of split_row: the model's parameter tensors (model.parameters() order) as one (P,) row."""
        if len(tensors) != len(self.shapes):
            raise ValueError(f"{len(tensors)} tensors for {len(self.shapes)} parameters")
        parts = [
            (t.T if name in self.transposed else t).reshape(-1) for name, t in zip(self.shapes, tensors, strict=True)
        ]
        return torch.cat(parts).to(self.flat.device, self.flat.dtype)

    def copy_row(self, target: int, source: int) -> None:
        """Member `target` takes member `source`'s parameters (exploit in population based training)."""
        with torch.no_grad():
            self.flat[target] = self.flat[source]

    def keep(self, rows: Tensor) -> None:
        """Drop every member not in `rows` (row positions)."""
        self.flat = self.flat[rows]
        self.views = self._make_views()


class StackedParameters(FlatStack):
    """Every member's parameters in one row of `flat` (K, P), and per-parameter views (K, *shape) of it.

    The optimizer updates `flat` with one call of each elementwise op instead of one per parameter
    tensor (on a GPU: a sixth of the kernel launches for a 3-layer MLP); the views are autograd leaves
    that share flat's storage, so they see every update without a copy. Linear weights are stored
    transposed, (K, in, out): the elementwise updates do not care about the order, and the batched
    matmul's weight gradient then comes out contiguous, so it joins the flat gradient without a copy.
    """

    def __init__(self, models: Sequence[nn.Module], device: torch.device) -> None:
        self.layers = mlp_layers(models[0])
        params, buffers = stack_module_state(list(models))
        if buffers:
            raise ValueError(f"Cannot stack a model with buffers: {sorted(buffers)}")
        self.transposed = {weight for kind, weight, _ in self.layers if kind == "linear"}
        stored = {
            name: p.detach().transpose(1, 2) if name in self.transposed else p.detach() for name, p in params.items()
        }
        self.shapes = {name: tuple(p.shape[1:]) for name, p in stored.items()}
        k = len(models)
        self.flat = torch.cat([p.reshape(k, -1) for p in stored.values()], dim=1).to(device)  # (K, P)
        self.views = self._make_views()

    def forward(self, x: Tensor, train: bool = True, rows: Tensor | None = None) -> Tensor:
        """Logits (K, B, C) of each member k on its own batch x[k]: x is (K, B, *input_shape).

        train and rows are FunctionalStack's (BatchNorm's mode, the members whose buffers may change):
        an MLP without dropout has no mode and no buffers, so it ignores them.
        """
        h = x
        for kind, weight, bias in self.layers:
            if kind == "flatten":
                h = h.reshape(h.shape[0], h.shape[1], -1)  # (K, B, D)
            elif kind == "relu":
                h = torch.relu(h)
            else:
                w_t, b = self.views[weight], self.views[bias]  # (K, in, out), (K, out)
                h = torch.baddbmm(b.unsqueeze(1), h, w_t)  # (K, B, out)
        return h

    def member_state(self, row: int) -> dict[str, Tensor]:
        """Member `row`'s parameters in its model's own names and shapes (a copy), as its state_dict holds them."""
        return {
            name: (view[row].T if name in self.transposed else view[row]).detach().clone()
            for name, view in self.views.items()
        }


def mlp_layers(model: nn.Module) -> list[Layer]:
    """The forward of an nn.Sequential of Flatten, Linear and ReLU as a plan over parameter names."""
    if not isinstance(model, nn.Sequential):
        raise ValueError(f"Cannot stack {type(model).__name__}: the fused path runs nn.Sequential MLPs")
    layers: list[Layer] = []
    for name, module in model.named_children():
        if isinstance(module, nn.Flatten) and (module.start_dim, module.end_dim) == (1, -1):
            layers.append(("flatten", "", ""))
        elif isinstance(module, nn.Linear) and module.bias is not None:
            layers.append(("linear", f"{name}.weight", f"{name}.bias"))
        elif isinstance(module, nn.ReLU):
            layers.append(("relu", "", ""))
        else:
            raise ValueError(f"Cannot stack layer {name} ({module}) in the fused path")
    return layers
