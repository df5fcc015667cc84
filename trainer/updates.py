"""The optimizers' update rules as pure in-place functions, shared by trainer.optim and the fused engine."""

from __future__ import annotations

import torch
from torch import Tensor

# A hyperparameter is a number, or (for the fused population engine) a tensor shaped (K, 1, ..., 1)
# that broadcasts over parameters stacked along a leading member dimension K. The update functions
# therefore use plain tensor arithmetic and branch only on structural flags (which state exists).
Hyper = float | Tensor


def sgd_update(
    p: Tensor,
    g: Tensor,
    momentum_buffer: Tensor | None,
    step: int,
    lr: Hyper,
    momentum: Hyper,
    dampening: Hyper,
    weight_decay: Hyper,
    nesterov: bool,
) -> None:
    g = g + weight_decay * p
    if momentum_buffer is not None:
        if step == 1:
            momentum_buffer.copy_(g)  # torch seeds the buffer with the first gradient, undamped
        else:
            momentum_buffer.mul_(momentum).add_((1 - dampening) * g)
        g = g + momentum * momentum_buffer if nesterov else momentum_buffer
    p.sub_(lr * g)


def rmsprop_update(
    p: Tensor,
    g: Tensor,
    square_avg: Tensor,
    grad_avg: Tensor | None,
    momentum_buffer: Tensor | None,
    lr: Hyper,
    alpha: Hyper,
    eps: Hyper,
    momentum: Hyper,
    weight_decay: Hyper,
) -> None:
    g = g + weight_decay * p
    square_avg.mul_(alpha).add_((1 - alpha) * g * g)
    if grad_avg is not None:
        # centered: divide by an estimate of the gradient's variance, E[g^2] - E[g]^2
        grad_avg.mul_(alpha).add_((1 - alpha) * g)
        avg = (square_avg - grad_avg * grad_avg).sqrt() + eps
    else:
        avg = square_avg.sqrt() + eps
    if momentum_buffer is not None:
        momentum_buffer.mul_(momentum).add_(g / avg)
        p.sub_(lr * momentum_buffer)
    else:
        p.sub_(lr * g / avg)


def adam_update(
    p: Tensor,
    g: Tensor,
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
    step: int,
    lr: Hyper,
    beta1: Hyper,
    beta2: Hyper,
    eps: Hyper,
    weight_decay: Hyper,
    amsgrad: bool,
    max_exp_avg_sq: Tensor | None,
) -> None:
    g = g + weight_decay * p  # L2 penalty folded into the gradient (Adam, not AdamW)
    exp_avg.mul_(beta1).add_((1 - beta1) * g)
    exp_avg_sq.mul_(beta2).add_((1 - beta2) * g * g)
    # both moments start at zero, so early averages are biased towards zero by (1 - beta^step)
    bias_correction1 = 1 - beta1**step
    bias_correction2 = 1 - beta2**step
    second = exp_avg_sq
    if amsgrad:
        assert max_exp_avg_sq is not None
        torch.maximum(max_exp_avg_sq, exp_avg_sq, out=max_exp_avg_sq)
        second = max_exp_avg_sq
    denom = second.sqrt() / bias_correction2**0.5 + eps
    p.sub_(lr / bias_correction1 * exp_avg / denom)


def adamw_update(
    p: Tensor,
    g: Tensor,
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
    step: int,
    lr: Hyper,
    beta1: Hyper,
    beta2: Hyper,
    eps: Hyper,
    weight_decay: Hyper,
    amsgrad: bool,
    max_exp_avg_sq: Tensor | None,
) -> None:
    # decoupled weight decay: shrink the weights directly, outside the adaptive scaling
    p.mul_(1 - lr * weight_decay)
    adam_update(p, g, exp_avg, exp_avg_sq, step, lr, beta1, beta2, eps, 0.0, amsgrad, max_exp_avg_sq)


def adagrad_update(
    p: Tensor,
    g: Tensor,
    state_sum: Tensor,
    step: int,
    lr: Hyper,
    lr_decay: Hyper,
    eps: Hyper,
    weight_decay: Hyper,
) -> None:
    g = g + weight_decay * p
    clr = lr / (1 + (step - 1) * lr_decay)
    state_sum.add_(g * g)
    p.sub_(clr * g / (state_sum.sqrt() + eps))


def adadelta_update(
    p: Tensor,
    g: Tensor,
    square_avg: Tensor,
    acc_delta: Tensor,
    lr: Hyper,
    rho: Hyper,
    eps: Hyper,
    weight_decay: Hyper,
) -> None:
    g = g + weight_decay * p
    square_avg.mul_(rho).add_((1 - rho) * g * g)
    # RMS of past updates over RMS of gradients: the step comes out in the parameter's own units
    delta = (acc_delta + eps).sqrt() / (square_avg + eps).sqrt() * g
    acc_delta.mul_(rho).add_((1 - rho) * delta * delta)
    p.sub_(lr * delta)
