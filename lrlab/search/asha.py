"""The successive-halving rule (ASHA, Li et al. 2020), pure: which epochs are rungs, and who continues past one.

Rungs sit at grace_epochs x reduction_factor^k epochs, below the maximum (a run that reaches the maximum is
finished, not judged). At a rung, the runs judged together (one arriving run, or a fused pack's members that
reached it at once) are ranked with every run that reported at that rung before them; n runs in all keep
the top n // reduction_factor, at least one. So the first run to reach a rung always continues (ASHA's
asynchronous promotion, as Optuna's SuccessiveHalvingPruner does), and a pack of 27 with reduction factor 3
keeps 9. A missing or non-finite score ranks last; ties go to the run that reported first (then to the
pack's order), so the count kept is exact and the same inputs always give the same decisions.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

Mode = Literal["max", "min"]


def rungs(grace_epochs: int, reduction_factor: int, max_epochs: int) -> list[int]:
    """The epoch counts at which runs are judged: g, g·η, g·η², … while below `max_epochs`."""
    if grace_epochs < 1 or reduction_factor < 2:
        raise ValueError(
            f"Invalid rungs: grace_epochs {grace_epochs} (>= 1), reduction_factor {reduction_factor} (>= 2)"
        )
    out: list[int] = []
    epoch = grace_epochs
    while epoch < max_epochs:
        out.append(epoch)
        epoch *= reduction_factor
    return out


def keep_count(n: int, reduction_factor: int) -> int:
    """How many of `n` runs at a rung continue: the top n // η, at least one."""
    return max(1, n // reduction_factor)


def _badness(score: float | None, mode: Mode) -> float:
    if score is None or not math.isfinite(score):
        return math.inf
    return -score if mode == "max" else score


def judge(
    reported: Sequence[float | None], arriving: Sequence[float | None], reduction_factor: int, mode: Mode
) -> list[bool]:
    """Whether each of `arriving` continues past a rung.

    `reported`: the scores of runs that reached this rung earlier, in the order they reported (whatever was
    decided for them); `arriving`: the scores judged now, together, in the pack's order.
    """
    if not arriving:
        return []
    scores = [*reported, *arriving]
    order = sorted(range(len(scores)), key=lambda i: (_badness(scores[i], mode), i))
    kept = set(order[: keep_count(len(scores), reduction_factor)])
    return [len(reported) + j in kept for j in range(len(arriving))]
