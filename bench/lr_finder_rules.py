"""Which lr range test suggestion trains best: each rule's lr, trained over seeds, against a log grid of lrs.

For every dataset, optimizer and seed: one range test with the service's defaults (min_lr 1e-7, max_lr 10,
100 steps, smoothing 0.98, stop_factor 4; seed s), then a run of --epochs at each rule's suggestion (seed s,
the finder's model, batch size and data), and, as the yardstick, the same runs at every lr of a fixed log grid
(3 per decade). A run's score is its final validation accuracy (a diverged run's last epoch: it stopped).

  python bench/lr_finder_rules.py                                  # digits and mnist1d, 3 seeds
  python bench/lr_finder_rules.py --datasets digits --seeds 0,1    # quicker

Prints a Markdown table per dataset: for each optimizer and rule, the suggested lrs (one per seed), the mean
(and worst) final accuracy over seeds, how many runs diverged, and the gap to the grid's best lr (the lr with
the best mean final accuracy). docs/lr-finder.md holds the figures; trainer.lr_finder.DEFAULT_SUGGESTION
is the rule they favour.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import statistics
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from trainer.config import DatasetConfig, OptimizerConfig, RunConfig  # noqa: E402
from trainer.loop import train  # noqa: E402
from trainer.lr_finder import DEFAULT_SUGGESTION, RULES, lr_range_test  # noqa: E402

OPTIMIZERS: dict[str, tuple[str, dict[str, object]]] = {
    "sgd momentum 0.9": ("sgd", {"momentum": 0.9}),
    "adam": ("adam", {}),
    "rmsprop": ("rmsprop", {}),
    "sgd": ("sgd", {}),
}
ORDER = [DEFAULT_SUGGESTION] + [rule for rule in RULES if rule != DEFAULT_SUGGESTION]  # as the API lists them
GRID = [round(m * 10.0**e, 10) for e in range(-4, 1) for m in (1, 3)] + [1.0, 3.0]  # 1e-4 .. 3


@dataclass
class Score:
    final: float  # final validation accuracy (the last epoch trained)
    diverged: bool


def score(config: RunConfig, lr: float) -> Score:
    result = train(replace(config, optimizer=replace(config.optimizer, lr=lr)))
    return Score(result.points[-1].val_accuracy, result.status == "diverged")


def measure(dataset: str, epochs: int, seeds: list[int], min_lr: float) -> dict[str, object]:
    rows: dict[str, object] = {}
    for label, (name, params) in OPTIMIZERS.items():
        base = [
            RunConfig(
                dataset=DatasetConfig(dataset), optimizer=OptimizerConfig(name, 1e-3, params), epochs=epochs, seed=s
            )
            for s in seeds
        ]
        picks: dict[str, list[float | None]] = {rule: [] for rule in RULES}
        scores: dict[str, list[Score]] = {rule: [] for rule in RULES}
        for config in base:
            sweep = lr_range_test(config, min_lr=min_lr)  # the service's defaults but min_lr
            for suggestion in sweep.suggestions:
                picks[suggestion.name].append(suggestion.lr)
                if suggestion.lr is not None:
                    scores[suggestion.name].append(score(config, suggestion.lr))
        grid = {lr: [score(config, lr) for config in base] for lr in GRID}
        best_lr = max(grid, key=lambda lr: statistics.mean(s.final for s in grid[lr]))
        rows[label] = {
            "picks": picks,
            "scores": {rule: [s.__dict__ for s in v] for rule, v in scores.items()},
            "grid": {str(lr): [s.__dict__ for s in v] for lr, v in grid.items()},
            "best_lr": best_lr,
        }
        print(f"  {dataset} {label}: done", file=sys.stderr, flush=True)
    return rows


def table(dataset: str, rows: dict[str, object]) -> str:
    out = [
        f"**{dataset}**",
        "",
        "| optimizer | rule | suggested lr (per seed) | final val acc, mean (worst) | diverged | vs grid's best |",
        "|---|---|---|---|---|---|",
    ]
    for label, row in rows.items():
        assert isinstance(row, dict)
        best = row["grid"][str(row["best_lr"])]
        best_mean = statistics.mean(s["final"] for s in best)
        for rule in ORDER:
            lrs = ", ".join("none" if lr is None else f"{lr:.3g}" for lr in row["picks"][rule])
            scores = row["scores"][rule]
            if not scores:
                out.append(f"| {label} | {rule} | {lrs} | - | - | - |")
                continue
            finals = [s["final"] for s in scores]
            mean = statistics.mean(finals)
            diverged = sum(s["diverged"] for s in scores)
            out.append(
                f"| {label} | {rule} | {lrs} | {mean:.3f} ({min(finals):.3f}) | {diverged}/{len(scores)} |"
                f" {mean - best_mean:+.3f} |"
            )
        out.append(
            f"| {label} | grid's best | {row['best_lr']:g} | {best_mean:.3f} ({min(s['final'] for s in best):.3f}) |"
            f" {sum(s['diverged'] for s in best)}/{len(best)} | |"
        )
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default="digits,mnist1d")
    parser.add_argument("--epochs", default="digits=10,mnist1d=20", help="per dataset")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--min-lr", type=float, default=1e-7, help="the sweep's first lr (the service's default)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path, help="also write every score here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    logging.getLogger("trainer").setLevel(logging.ERROR)  # a diverged run is a score here, not news
    epochs = {k: int(v) for k, v in (item.split("=") for item in args.epochs.split(","))}
    seeds = [int(s) for s in args.seeds.split(",")]
    t0 = time.perf_counter()
    results = {}
    for dataset in args.datasets.split(","):
        results[dataset] = measure(dataset, epochs[dataset], seeds, args.min_lr)
    print(
        f"{platform.processor() or platform.machine()}, torch {torch.__version__}, {args.threads} thread(s),"
        f" seeds {seeds}, epochs {epochs}, sweep min_lr {args.min_lr:g}, {time.perf_counter() - t0:.0f} s\n"
    )
    for dataset, rows in results.items():
        print(table(dataset, rows) + "\n")
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
