"""A small pre-norm transformer encoder over sequences, written out with plain tensor operations."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


class SelfAttention(nn.Module):
    """Multi-head self-attention: softmax(q k^T / sqrt(d_head)) v for each head, then a linear mix of the heads."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.out = nn.Linear(width, width)

    def forward(self, h: Tensor) -> Tensor:  # (B, L, W) -> (B, L, W)
        b, length, width = h.shape
        q, k, v = self.qkv(h).view(b, length, 3, self.heads, width // self.heads).permute(2, 0, 3, 1, 4)  # (B, H, L, D)
        weights = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1]), dim=-1)  # (B, H, L, L)
        mixed = (weights @ v).transpose(1, 2).reshape(b, length, width)  # (B, L, H * D)
        return self.out(mixed)


class Block(nn.Module):
    def __init__(self, width: int, heads: int, mlp_ratio: int, dropout: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(width)
        self.attention = SelfAttention(width, heads)
        self.norm2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, mlp_ratio * width), nn.GELU(), nn.Linear(mlp_ratio * width, width))
        self.dropout = nn.Dropout(dropout)

    def forward(self, h: Tensor) -> Tensor:
        h = h + self.dropout(self.attention(self.norm1(h)))
        return h + self.dropout(self.mlp(self.norm2(h)))


class TinyTransformer(nn.Module):
    def __init__(
        self,
        input_shape: tuple[int, ...],
        n_classes: int,
        width: int,
        heads: int,
        depth: int,
        mlp_ratio: int,
        dropout: float,
        channels_first: bool,
    ) -> None:
        super().__init__()
        self.channels_first = channels_first
        if len(input_shape) == 1:
            length, features = input_shape[0], 1
        else:
            length, features = input_shape[::-1] if channels_first else input_shape
        self.embed = nn.Linear(features, width)
        self.position = nn.Parameter(torch.randn(length, width) * 0.02)  # learned, one per position
        self.blocks = nn.Sequential(*[Block(width, heads, mlp_ratio, dropout) for _ in range(depth)])
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, n_classes)

    def forward(self, x: Tensor) -> Tensor:  # (B, L, d), (B, d, L) or (B, L) -> (B, n_classes)
        if x.dim() == 2:
            x = x.unsqueeze(-1)  # (B, L, 1)
        elif self.channels_first:
            x = x.transpose(1, 2)  # (B, L, C)
        h = self.embed(x) + self.position  # (B, L, W)
        h = self.norm(self.blocks(h))
        return self.head(h.mean(dim=1))  # mean over positions: (B, W) -> (B, n_classes)


def tiny_transformer(
    input_shape: tuple[int, ...],
    n_classes: int,
    width: int = 32,
    heads: int = 4,
    depth: int = 2,
    mlp_ratio: int = 2,
    dropout: float = 0.0,
    channels_first: bool = False,
) -> nn.Module:
    """A pre-norm transformer encoder over L positions of d features, input (L, d) or (L,), mean-pooled into a
    linear classifier; channels_first reads (C, L) inputs (e.g. mnist1d) as L positions of C features. With
    dropout > 0 it trains, but not fused: each run draws its own masks."""
    if width % heads:
        raise ValueError(f"width ({width}) must be a multiple of heads ({heads})")
    if len(input_shape) not in (1, 2):
        raise ValueError(f"tiny-transformer reads sequences, input (L, d) or (L,); got {input_shape}")
    if not 0 <= dropout < 1:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}")
    return TinyTransformer(tuple(input_shape), n_classes, width, heads, depth, mlp_ratio, dropout, channels_first)
