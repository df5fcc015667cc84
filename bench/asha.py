"""Successive halving (ASHA) against the full grid through the service, fused (issue 16 #1).

The grid: sgd, adam, rmsprop (torch's defaults) x 9 lrs log-spaced from 1e-5 to 1e-1 = 27 runs, MLP 128-128,
batch 64, 9 epochs, cpu, seed 0; once as a plain fused experiment, once with early_stopping {kind: asha,
metric: val_accuracy, grace_epochs: 1, reduction_factor: 3} (rungs at epochs 1 and 3), alternating, after a
warm-up of each. One `lrlab api` and one `lrlab worker` (concurrency 1, one torch thread), as bench/grid.py
starts them. For each: POST -> every run finished (wall), epochs trained (the runs' epochs_completed summed),
runs stopped, and the best val_accuracy among the runs that trained all 9 epochs (the grid's best is over all
27); `gap` = grid best - ASHA best.

  python bench/asha.py --dataset digits --repeats 3
  python bench/asha.py --dataset mnist1d --repeats 3
  python bench/asha.py --embedded ...             # SQLite database and transport
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.overhead import POLL, _free_port, _http, private_services, start_service, stop  # noqa: E402

LRS = [10 ** (-5 + 0.5 * i) for i in range(9)]
OPTIMIZERS = [{"name": "sgd"}, {"name": "adam"}, {"name": "rmsprop"}]
ASHA = {"kind": "asha", "metric": "val_accuracy", "grace_epochs": 1, "reduction_factor": 3}


def request(dataset: str, epochs: int, asha: bool) -> dict[str, Any]:
    body: dict[str, Any] = {
        "name": f"bench-{'asha' if asha else 'grid'}",
        "execution": "fused",
        "base": {"dataset": dataset, "epochs": epochs, "device": "cpu"},
        "grid": {"optimizer": OPTIMIZERS, "lr": LRS},
    }
    if asha:
        body["early_stopping"] = ASHA
    return body


def run_one(base: str, body: dict[str, Any], epochs: int) -> dict[str, Any]:
    t0 = time.perf_counter()
    created = _http("POST", f"{base}/v1/experiments", body)
    while _http("GET", f"{base}/v1/experiments/{created['id']}")["status"] != "finished":
        time.sleep(POLL)
    wall = time.perf_counter() - t0
    runs = [_http("GET", f"{base}/v1/runs/{run_id}") for run_id in created["runs"]]
    bad = [f"{r['label']}: {r['status']} {r['error'] or ''}" for r in runs if r["status"] in ("failed", "cancelled")]
    if bad:
        raise RuntimeError(f"runs did not end well: {bad}")
    full = [r for r in runs if r["summary"]["epochs_completed"] == epochs]
    return {
        "wall": wall,
        "epochs": sum(r["summary"]["epochs_completed"] for r in runs),
        "stopped": sum(r["status"] == "stopped" for r in runs),
        "best_all": max(r["summary"]["best_val_accuracy"] or 0.0 for r in runs),
        "best_full": max((r["summary"]["best_val_accuracy"] or 0.0 for r in full), default=0.0),
        "winner": max(full, key=lambda r: r["summary"]["best_val_accuracy"] or 0.0)["label"] if full else "-",
        "packs": len({r["pack_id"] for r in runs}),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="digits")
    ap.add_argument("--epochs", type=int, default=9)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--embedded", action="store_true", help="SQLite database and transport, no servers")
    args = ap.parse_args()
    bodies = {"grid": request(args.dataset, args.epochs, False), "asha": request(args.dataset, args.epochs, True)}
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    results: dict[str, list[dict[str, Any]]] = {"grid": [], "asha": []}
    load = [os.getloadavg()[0]]
    with private_services(args.embedded) as env:
        procs = start_service(env, port)
        try:
            for name in ("grid", "asha"):  # warm-up
                run_one(base, bodies[name], args.epochs)
            for _ in range(args.repeats):
                for name in ("grid", "asha"):
                    results[name].append(run_one(base, bodies[name], args.epochs))
                load.append(os.getloadavg()[0])
        finally:
            for p in procs:
                stop(p)

    shape = "embedded (SQLite + SQLite transport)" if args.embedded else "Postgres + Redis"
    print(
        f"\n{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {shape}; {args.dataset}, 27 runs"
        f" (3 optimizers x 9 lrs 1e-5..1e-1), MLP, {args.epochs} epochs, fused, 1 worker, 1 torch thread;"
        f" {args.repeats} repeats; 1-min load average {min(load):.2f}-{max(load):.2f}\n"
    )
    print("| | wall median (min-max) | epochs trained | runs stopped | packs | best val_acc (full runs) | best run |")
    print("|---|---|---|---|---|---|---|")
    for name, rs in results.items():
        walls = [r["wall"] for r in rs]
        last = rs[-1]
        print(
            f"| {name} | {statistics.median(walls):.2f} s ({min(walls):.2f}-{max(walls):.2f}) | {last['epochs']}"
            f" | {last['stopped']} | {last['packs']} | {last['best_full']:.4f} | {last['winner']} |"
        )
    grid, asha = results["grid"][-1], results["asha"][-1]
    wall_ratio = statistics.median(r["wall"] for r in results["grid"]) / statistics.median(
        r["wall"] for r in results["asha"]
    )
    print(
        f"\nASHA / grid epochs {asha['epochs'] / grid['epochs']:.2f}; grid / ASHA wall {wall_ratio:.2f};"
        f" gap (grid best - ASHA best) {grid['best_all'] - asha['best_full']:.4f}; runs stopped {asha['stopped']} of 27"
    )


if __name__ == "__main__":
    main()
