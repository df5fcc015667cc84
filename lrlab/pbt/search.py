"""Population based training's search policy: sample, rank, exploit and explore, in plain Python.

The semantics follow Ray Tune's PopulationBasedTraining (quantile_fraction, perturbation_factors,
resample_probability), with one difference on purpose: an explored value never leaves its mutation's
bounds. Every draw comes from a `random.Random` seeded by the request's seed and the round, so the same
request gives the same population wherever its rounds are computed.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

Hyperparameters = dict[str, Any]


@dataclass(frozen=True)
class Mutation:
    """One hyperparameter's search space: `log_uniform` or `uniform` on [low, high], or a list of `choices`."""

    kind: str  # "log_uniform" | "uniform" | "choices"
    low: float = 0.0
    high: float = 0.0
    choices: tuple[Any, ...] = ()

    def sample(self, rng: random.Random) -> Any:
        if self.kind == "choices":
            return rng.choice(self.choices)
        if self.kind == "log_uniform":  # clipped: exp(log(x)) may land an ulp outside
            return self.clip(math.exp(rng.uniform(math.log(self.low), math.log(self.high))))
        return self.clip(rng.uniform(self.low, self.high))

    def clip(self, value: float) -> float:
        return min(max(value, self.low), self.high)

    def perturb(self, value: Any, rng: random.Random, factors: Sequence[float]) -> Any:
        """A neighbour: the value times a factor (a step in log space for log_uniform), or the next choice."""
        if self.kind == "choices":
            index = self.choices.index(value) if value in self.choices else rng.randrange(len(self.choices))
            step = rng.choice((-1, 1))
            return self.choices[min(max(index + step, 0), len(self.choices) - 1)]
        factor = rng.choice(tuple(factors))
        if self.kind == "log_uniform":
            return self.clip(math.exp(math.log(value) + math.log(factor)))
        return self.clip(value * factor)


def mutation(spec: Mapping[str, Any]) -> Mutation:
    """From the request's form: {"log_uniform": [lo, hi]}, {"uniform": [lo, hi]} or {"choices": [...]}."""
    ((kind, value),) = spec.items()
    if kind == "choices":
        return Mutation("choices", choices=tuple(value))
    low, high = value
    return Mutation(kind, float(low), float(high))


def initial(mutations: Mapping[str, Mutation], population: int, seed: int) -> list[Hyperparameters]:
    """Each member's starting hyperparameters, drawn from the mutations with the request's seed."""
    rng = random.Random(f"pbt:{seed}:init")
    return [{name: m.sample(rng) for name, m in mutations.items()} for _ in range(population)]


@dataclass(frozen=True)
class Replacement:
    """After a round, member `target` continues from member `source`'s weights with `new` hyperparameters."""

    target: int
    source: int
    old: Hyperparameters
    new: Hyperparameters
    resampled: tuple[str, ...]  # the names drawn afresh; the others were perturbed


def quantile_size(population: int, quantile: float) -> int:
    """Members in the bottom (and in the top) quantile: ceil(population * quantile), at most half of them."""
    return min(math.ceil(population * quantile), population // 2)


def _finite(score: float | None) -> bool:
    return score is not None and math.isfinite(score)


def rank(scores: Sequence[float | None], mode: str) -> list[int]:
    """Member indices best first; a missing or non-finite score ranks last, ties by index."""

    def key(i: int) -> tuple[int, float, int]:
        s = scores[i]
        if s is None or not _finite(s):
            return (1, 0.0, i)
        return (0, -s if mode == "max" else s, i)

    return sorted(range(len(scores)), key=key)


def exploit_and_explore(
    scores: Sequence[float | None],
    hyperparameters: Sequence[Hyperparameters],
    mutations: Mapping[str, Mutation],
    *,
    quantile: float,
    mode: str,
    factors: Sequence[float],
    resample_probability: float,
    seed: int,
    epoch: int,
) -> list[Replacement]:
    """One round: every member of the bottom quantile copies a random member of the top and explores.

    The new hyperparameters start from the source's (Ray Tune's exploit copies the config with the
    weights); each mutated name is resampled with `resample_probability`, else perturbed.
    """
    rng = random.Random(f"pbt:{seed}:round:{epoch}")
    order = rank(scores, mode)
    n = quantile_size(len(order), quantile)
    if n == 0:
        return []
    # a missing or non-finite score ranks last, but with more than half the population diverged it still
    # reaches the top quantile: never copy such a member's (NaN) weights
    top = [i for i in order[:n] if _finite(scores[i])]
    bottom = order[-n:]
    if not top:
        return []
    out = []
    for target in sorted(bottom):
        source = rng.choice(top)
        new = dict(hyperparameters[source])
        resampled = []
        for name, space in mutations.items():
            if rng.random() < resample_probability:
                new[name] = space.sample(rng)
                resampled.append(name)
            else:
                new[name] = space.perturb(new[name], rng, factors)
        out.append(Replacement(target, source, dict(hyperparameters[target]), new, tuple(resampled)))
    return out


# --- the schedule a member followed -------------------------------------------------------------------


@dataclass(frozen=True)
class Segment:
    """From epoch `start` on, the member trained with `hyperparameters`; `source` gave it weights then (or None)."""

    start: int
    hyperparameters: Hyperparameters
    source: int | None = None


def in_force(history: Sequence[Segment], epochs: int) -> list[Hyperparameters]:
    """The member's own hyperparameters for epochs 1..epochs."""
    out: list[Hyperparameters] = []
    for epoch in range(1, epochs + 1):
        current = [s for s in history if s.start <= epoch]
        out.append(current[-1].hyperparameters if current else {})
    return out


def followed(histories: Sequence[Sequence[Segment]], member: int, epochs: int) -> list[tuple[int, Hyperparameters]]:
    """What the weights that member ended with were trained with, epoch by epoch, inherited history included.

    Walking back: after its last exploit at epoch e the member's own hyperparameters; up to e, whatever its
    source's weights had followed up to e, and so on. Returns (member whose hyperparameters, values) per epoch.
    """
    out: list[tuple[int, Hyperparameters]] = []
    end = epochs
    while end > 0:
        history = histories[member]
        inherits = [s for s in history if s.source is not None and s.start <= end]
        start = inherits[-1].start if inherits else 1
        own = in_force(history, end)
        out[:0] = [(member, own[e - 1]) for e in range(start, end + 1)]
        if not inherits:
            break
        member, end = inherits[-1].source, start - 1  # type: ignore[assignment]
    return out
