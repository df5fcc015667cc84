"""Population based training against a grid search of the same compute, through lrlab's Python client.

  lrlab up &                                            # or any lrlab API (--url, --key)
  python examples/pbt_vs_grid.py --dataset mnist1d --population 8 --epochs 20 --seeds 0,1,2 --out docs/img

For each seed s, three things train on the same dataset, model, optimizer and batch size, all scored on one
train/validation split (split_seed s):
  1. a population of P members for E epochs, its lr drawn log-uniformly from [low, high] and explored every
     `interval` epochs (the bottom quarter copies the top quarter's weights, then perturbs or resamples);
     member k trains with seed s + k (its own initial weights and data order);
  2. a grid of P learning rates log-spaced over [low, high], E epochs each: the same P x E sample-epochs, cell k
     with seed s + k like member k, so both methods pick their best among P models with P different initial
     weights and data orders, and cell k starts exactly where member k does. An experiment's grid is a cartesian
     product and cannot pair lr k with seed k, so the cells are P plain runs (one task each), not a fused pack;
  3. the lr schedule the population discovered (GET /v1/pbt/{id}/schedule), replayed from scratch as one
     plain run of E epochs, from the seed of the lineage's first member, on the same split.
It prints a table per seed and the mean over seeds, and saves the population's chart in --out (by default a new
temporary directory, never the working directory). `--json` writes the raw numbers. Accuracies are validation
accuracies: "final" at the last epoch, "best" the highest at any epoch.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import statistics
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from lrlab.client import Client


def log_spaced(low: float, high: float, n: int) -> list[float]:
    if n == 1:
        return [math.sqrt(low * high)]
    step = (math.log(high) - math.log(low)) / (n - 1)
    return [float(f"{math.exp(math.log(low) + k * step):.3g}") for k in range(n)]


def base_spec(args: argparse.Namespace, seed: int) -> dict[str, Any]:
    optimizer: dict[str, Any] = {"name": args.optimizer}
    if args.optimizer == "sgd":
        optimizer["momentum"] = 0.9
    return {
        "dataset": args.dataset,
        "model": {"name": "mlp", "hidden": args.hidden},
        "optimizer": optimizer,
        "batch_size": args.batch_size,
        "seed": seed,
        "device": args.device,
    }


def seconds(start: datetime | None, end: datetime | None) -> float | None:
    return (end - start).total_seconds() if start and end else None


def run_pbt(lab: Client, args: argparse.Namespace, seed: int) -> dict[str, Any]:
    request = {
        "name": f"pbt {args.dataset} {args.optimizer} seed {seed}",
        "base": base_spec(args, seed),
        "population": args.population,
        "epochs": args.epochs,
        "interval": args.interval,
        "mutations": {"lr": {"log_uniform": [args.low, args.high]}},
        "metric": "val_accuracy",
        "seed": seed,
    }
    pbt = lab.wait_pbt(lab.submit_pbt(request).id, poll=args.poll, progress=not args.quiet)
    if pbt.status.value != "succeeded" or pbt.best is None:
        sys.exit(f"population {pbt.id} ended {pbt.status.value}: {pbt.error}")
    found = lab.pbt_schedule(pbt.id)
    if found.run.data_seed != seed:
        sys.exit(f"population {pbt.id}: its replay would split the data with seed {found.run.data_seed}, not {seed}")
    accuracies = [p.val_accuracy for m in pbt.members for p in m.points if p.val_accuracy is not None]
    return {
        "id": pbt.id,
        "execution": pbt.execution,
        "final": pbt.best.val_accuracy,
        "best": max(accuracies),
        "member": pbt.best.member,
        "through": [e.member for e in pbt.best.schedule],
        "initial_lrs": [m.hyperparameters_by_epoch[0].values["lr"] for m in pbt.members],
        "exploits": len(pbt.lineage),
        "schedule": found.schedule.model_dump(mode="json"),
        "replay_spec": found.run.model_dump(mode="json"),
        "seconds": seconds(pbt.started_at, pbt.finished_at),
    }


def grid_cell(args: argparse.Namespace, seed: int, k: int, lr: float) -> dict[str, Any]:
    """Cell k: as PBT's member k (seed + k, the population's split), at the k-th lr of the grid."""
    spec = {**base_spec(args, seed + k), "split_seed": seed, "epochs": args.epochs}
    spec["optimizer"] = {**spec["optimizer"], "lr": lr}
    return spec


def run_grid(lab: Client, args: argparse.Namespace, seed: int) -> dict[str, Any]:
    lrs = log_spaced(args.low, args.high, args.population)
    ids = [lab.submit_run(grid_cell(args, seed, k, lr)).id for k, lr in enumerate(lrs)]
    runs = lab.wait(ids, poll=args.poll, progress=False)
    done = [r for r in runs if r.summary is not None]
    if len(done) != len(runs):
        sys.exit(f"grid of seed {seed}: a run ended without a summary")
    best = max(done, key=lambda r: r.summary.final_val_accuracy or 0.0)  # type: ignore[union-attr]
    starts = [r.started_at for r in runs if r.started_at]
    ends = [r.finished_at for r in runs if r.finished_at]
    return {
        "runs": ids,
        "lrs": lrs,
        "final": best.summary.final_val_accuracy,  # type: ignore[union-attr]
        "final_lr": best.spec.optimizer.lr,
        "final_seed": best.spec.seed,
        "best": max(r.summary.best_val_accuracy or 0.0 for r in done),  # type: ignore[union-attr]
        "by_lr": {r.spec.optimizer.lr: r.summary.final_val_accuracy for r in done},  # type: ignore[union-attr]
        "seconds": seconds(min(starts), max(ends)) if starts and ends else None,
    }


def replay(lab: Client, spec: dict[str, Any], poll: float) -> dict[str, Any]:
    (run,) = lab.wait([lab.submit_run(spec).id], poll=poll, progress=False)
    if run.summary is None:
        sys.exit(f"replay run {run.id} ended {run.status.value}: {run.error}")
    return {
        "id": run.id,
        "status": run.status.value,
        "final": run.summary.final_val_accuracy,
        "best": run.summary.best_val_accuracy,
        "seconds": seconds(run.started_at, run.finished_at),
    }


def fmt(value: float | None, spec: str = ".3f") -> str:
    return "-" if value is None else format(value, spec)


def describe(schedule: dict[str, Any]) -> str:
    """lr 0.05 for epochs 1-4, 0.06 for 5-8, ... from the piecewise form."""
    edges = [0, *schedule["boundaries"]]
    parts = []
    for k, value in enumerate(schedule["values"]):
        first, last = edges[k] + 1, edges[k + 1] if k + 1 < len(edges) else None
        span = f"{first}-{last}" if last is not None else f"{first}-"
        parts.append(f"{value:.3g} ({span})")
    return ", ".join(parts)


def table(seed: int, pbt: dict[str, Any], grid: dict[str, Any], again: dict[str, Any]) -> str:
    return "\n".join(
        [
            f"### seed {seed}",
            "",
            "| method | final val acc | best val acc | wall seconds |",
            "|---|---|---|---|",
            f"| grid, best of {len(grid['lrs'])} lrs (lr={grid['final_lr']:g}, seed {grid['final_seed']}) |"
            f" {fmt(grid['final'])} |"
            f" {fmt(grid['best'])} | {fmt(grid['seconds'], '.1f')} |",
            f"| PBT, best member ({pbt['exploits']} exploits) | {fmt(pbt['final'])} | {fmt(pbt['best'])} |"
            f" {fmt(pbt['seconds'], '.1f')} |",
            f"| PBT's schedule replayed from scratch | {fmt(again['final'])} | {fmt(again['best'])} |"
            f" {fmt(again['seconds'], '.1f')} |",
            "",
            "grid final val acc by lr: " + ", ".join(f"{lr:g}: {fmt(acc)}" for lr, acc in grid["by_lr"].items()),
            f"discovered lr schedule (member {pbt['member']}, weights through members"
            f" {'→'.join(str(m) for m, _ in itertools.groupby(pbt['through']))}): {describe(pbt['schedule'])}",
        ]
    )


def summary(results: list[dict[str, Any]]) -> str:
    def mean(key: str, field: str) -> str:
        values = [r[key][field] for r in results if r[key][field] is not None]
        if not values:
            return "-"
        spread = f" ± {statistics.stdev(values):.3f}" if len(values) > 1 else ""
        return f"{statistics.mean(values):.3f}{spread}"

    rows = [
        f"### mean over {len(results)} seed{'s' if len(results) != 1 else ''}",
        "",
        "| method | final val acc | best val acc |",
        "|---|---|---|",
    ]
    for key, label in (("grid", "grid (best lr)"), ("pbt", "PBT (best member)"), ("replay", "replayed schedule")):
        rows.append(f"| {label} | {mean(key, 'final')} | {mean(key, 'best')} |")
    wins = sum((r["pbt"]["final"] or 0) > (r["grid"]["final"] or 0) for r in results)
    rows += ["", f"PBT's final accuracy beat the grid's best in {wins} of {len(results)} seeds."]
    return "\n".join(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", help="default $LRLAB_URL or http://127.0.0.1:8000")
    ap.add_argument("--key", help="API key, if the server requires one (default $LRLAB_API_KEY)")
    ap.add_argument("--dataset", default="mnist1d")
    ap.add_argument("--hidden", type=lambda s: [int(w) for w in s.split(",")], default=[128, 128])
    ap.add_argument("--optimizer", choices=["sgd", "adam"], default="sgd", help="sgd uses momentum 0.9")
    ap.add_argument("--low", type=float, default=1e-3, help="lowest lr of the search range")
    ap.add_argument("--high", type=float, default=1.0, help="highest lr of the search range")
    ap.add_argument("--population", type=int, default=8, help="members, and grid cells")
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--interval", type=int, default=4, help="epochs between exploit/explore rounds")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    ap.add_argument("--seeds", default="0", help="comma-separated")
    ap.add_argument("--out", type=Path, help="directory for the population's chart (default: a new temporary one)")
    ap.add_argument("--json", type=Path, help="write every number to this file")
    ap.add_argument("--poll", type=float, default=1.0)
    ap.add_argument("--quiet", action="store_true", help="no progress lines")
    args = ap.parse_args()

    lab = Client(args.url, args.key, timeout=60)
    args.out = args.out or Path(tempfile.mkdtemp(prefix="lrlab-charts-"))  # never the working directory
    args.out.mkdir(parents=True, exist_ok=True)
    results = []
    for seed in (int(s) for s in args.seeds.split(",")):
        started = time.monotonic()
        pbt = run_pbt(lab, args, seed)
        grid = run_grid(lab, args, seed)
        again = replay(lab, pbt["replay_spec"], args.poll)
        results.append({"seed": seed, "pbt": pbt, "grid": grid, "replay": again})
        print()
        print(table(seed, pbt, grid, again))
        chart = args.out / f"pbt-{args.dataset}-{args.optimizer}-seed{seed}-val_accuracy.png"
        chart.write_bytes(lab.pbt_chart(pbt["id"], "val_accuracy", fmt="png"))
        print(f"saved {chart} ({time.monotonic() - started:.0f} s for this seed)", flush=True)
    print()
    print(summary(results))
    if args.json:
        settings = {**vars(args), "out": str(args.out), "json": str(args.json)}
        args.json.write_text(json.dumps({"args": settings, "results": results}, indent=2))


if __name__ == "__main__":
    main()
