"""The motifs dataset, generated in code: which of n_classes short motifs is hidden in a noisy sequence."""

from __future__ import annotations

import numpy as np

SYMBOLS = 6  # one-hot width of each position
MOTIF_LENGTH = 4


def motifs(
    n_samples: int = 2000, length: int = 24, n_classes: int = 4, noise: float = 0.3, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Sequences of `length` random symbols (one-hot over 6, plus Gaussian noise), each with one of n_classes
    motifs (4 fixed symbols) planted at a random position; the label is the motif. Returns x (N, length, 6) and
    y (N,)."""
    if not 2 <= n_classes <= 64:
        raise ValueError(f"n_classes must be in [2, 64], got {n_classes}")
    if not MOTIF_LENGTH <= length <= 4096:
        raise ValueError(f"length must be in [{MOTIF_LENGTH}, 4096], got {length}")
    if not 2 <= n_samples <= 1_000_000:
        raise ValueError(f"n_samples must be in [2, 1000000], got {n_samples}")
    rng = np.random.default_rng(seed)
    patterns = rng.integers(0, SYMBOLS, size=(n_classes, MOTIF_LENGTH))  # (K, 4): the motifs
    symbols = rng.integers(0, SYMBOLS, size=(n_samples, length))  # (N, L)
    y = rng.integers(0, n_classes, size=n_samples)  # (N,)
    starts = rng.integers(0, length - MOTIF_LENGTH + 1, size=n_samples)  # (N,)
    for offset in range(MOTIF_LENGTH):
        symbols[np.arange(n_samples), starts + offset] = patterns[y, offset]
    x = np.eye(SYMBOLS, dtype=np.float32)[symbols]  # (N, L, 6)
    x += noise * rng.standard_normal(x.shape).astype(np.float32)
    return x, y
