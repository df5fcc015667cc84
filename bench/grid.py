"""A 16-member grid through the service, fused and separate, against a bare in-process loop (issue #5's goal).

One grid (optimizers adam, sgd(momentum=0.9), rmsprop, adagrad x lrs 3e-4, 1e-3, 3e-3, 1e-2; digits, MLP
128-128, batch 64, 5 epochs, cpu) timed three ways, alternating, after a warm-up of each (medians of repeats):
  bare      a hand-written PyTorch loop (torch.optim, nn.Sequential; bench/overhead.py's bare_loop) in this
            process, over the 16 configurations one after another
  separate  POST /v1/experiments {"execution": "separate"} -> GET until every member is finished (16 tasks)
  fused     the same with {"execution": "fused"}: one pack message, trained as 4 groups of 4 (one per optimizer)
One `lrlab worker` (concurrency 1, one torch thread), a real `lrlab api`, as bench/overhead.py starts them.

After those, `cold` times the first grid a freshly started worker receives (the api stays up and warm; a
new worker for each cold grid, fused and separate in turn, --cold rounds): whatever a worker still loads
inside its first task (imports, datasets) shows up as cold minus warm.

  python bench/grid.py --repeats 5              # Postgres + Redis on localhost
  python bench/grid.py --embedded --repeats 3   # SQLite database and transport
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from bench.overhead import POLL, _free_port, _http, bare_loop, private_services, start_service, start_worker, stop  # noqa: E402
from lrlab.runs.experiments import expand  # noqa: E402
from lrlab.schemas.experiments import ExperimentCreate  # noqa: E402

OPTIMIZERS: list[dict[str, Any]] = [
    {"name": "adam"},
    {"name": "sgd", "momentum": 0.9},
    {"name": "rmsprop"},
    {"name": "adagrad"},
]


def grid_request(execution: str, lrs: list[float], epochs: int, dataset: str) -> dict[str, Any]:
    return {
        "name": f"bench-grid-{execution}",
        "execution": execution,
        "base": {"dataset": dataset, "epochs": epochs, "device": "cpu"},
        "grid": {"optimizer": OPTIMIZERS, "lr": lrs},
    }


def bare_grid(specs: list[dict[str, Any]]) -> float:
    t0 = time.perf_counter()
    for spec in specs:
        bare_loop(spec)
    return time.perf_counter() - t0


def _at(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


def service_grid(base: str, request: dict[str, Any]) -> tuple[float, dict[str, float]]:
    """POST -> every member finished: (seconds, a breakdown from the runs' own timestamps)."""
    t0 = time.perf_counter()
    created = _http("POST", f"{base}/v1/experiments", request)
    while _http("GET", f"{base}/v1/experiments/{created['id']}")["status"] != "finished":
        time.sleep(POLL)
    elapsed = time.perf_counter() - t0
    runs = [_http("GET", f"{base}/v1/runs/{run_id}") for run_id in created["runs"]]
    bad = [f"{r['label']}: {r['status']} {r['error'] or ''}" for r in runs if r["status"] != "succeeded"]
    if bad:
        raise RuntimeError(f"{request['execution']} grid: members did not succeed: {bad}")
    packs = {r["pack_id"] for r in runs}
    if (request["execution"] == "fused") != (None not in packs):
        raise RuntimeError(f"{request['execution']} grid trained in packs {packs}")
    created_at = min(_at(r["created_at"]) for r in runs)
    started = min(_at(r["started_at"]) for r in runs)
    finished = max(_at(r["finished_at"]) for r in runs)
    return elapsed, {"to_first_claim": started - created_at, "claim_to_last_done": finished - started}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--dataset", default="digits")
    ap.add_argument("--lr", type=float, nargs="+", default=[3e-4, 1e-3, 3e-3, 1e-2])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--cold", type=int, default=3, help="rounds of first grids on fresh workers")
    ap.add_argument("--embedded", action="store_true", help="SQLite database and transport, no servers")
    args = ap.parse_args()
    torch.set_num_threads(1)  # the worker gets the same (LRLAB_TORCH_THREADS=1)
    requests = {ex: grid_request(ex, args.lr, args.epochs, args.dataset) for ex in ("separate", "fused")}
    specs = [cell.spec.to_json() for cell in expand(ExperimentCreate.model_validate(requests["fused"]))]
    load = [os.getloadavg()[0]]

    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    times: dict[str, list[float]] = {"bare": [], "separate": [], "fused": []}
    parts: dict[str, list[dict[str, float]]] = {"separate": [], "fused": []}
    cold: dict[str, list[float]] = {"separate": [], "fused": []}
    with private_services(args.embedded) as env:
        procs = start_service(env, port)
        try:
            bare_grid(specs), service_grid(base, requests["separate"]), service_grid(base, requests["fused"])
            for _ in range(args.repeats):
                times["bare"].append(bare_grid(specs))
                for ex in ("separate", "fused"):
                    seconds, split = service_grid(base, requests[ex])
                    times[ex].append(seconds)
                    parts[ex].append(split)
                load.append(os.getloadavg()[0])
            for _ in range(args.cold):
                for ex in ("fused", "separate"):
                    stop(procs.pop())
                    procs.append(start_worker(env, base))
                    cold[ex].append(service_grid(base, requests[ex])[0])  # this worker's first task
                load.append(os.getloadavg()[0])
        finally:
            for p in procs:
                stop(p)

    med = {name: statistics.median(ts) for name, ts in times.items()}
    cold_med = {ex: statistics.median(ts) for ex, ts in cold.items() if ts}
    shape = "embedded (SQLite + SQLite transport)" if args.embedded else "Postgres + Redis"
    lrs = ", ".join(f"{lr:g}" for lr in args.lr)
    print(
        f"\n{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, {shape};"
        f" {len(specs)} members: {len(OPTIMIZERS)} optimizers x lr [{lrs}], {args.dataset} MLP, {args.epochs} epochs,"
        f" 1 worker, 1 torch thread; {args.repeats} repeats, {args.cold} cold rounds;"
        f" 1-min load average {min(load):.2f}-{max(load):.2f}\n"
    )
    print("| path | median s | min s | max s | first grid of a fresh worker (cold): median s |\n|---|---|---|---|---|")
    for name, ts in times.items():
        first = f"{cold_med[name]:.2f}" if name in cold_med else "-"
        print(f"| {name} | {med[name]:.2f} | {min(ts):.2f} | {max(ts):.2f} | {first} |")
    print(
        f"\nseparate / fused {med['separate'] / med['fused']:.2f} (goal >= 1.2);"
        f" fused / bare {med['fused'] / med['bare']:.2f} (goal <= 1.5);"
        f" separate / bare {med['separate'] / med['bare']:.2f}"
    )
    for ex, splits in parts.items():
        claim = statistics.median(s["to_first_claim"] for s in splits)
        span = statistics.median(s["claim_to_last_done"] for s in splits)
        line = f"{ex}: POST -> first claim {claim:.2f} s, first claim -> last member done {span:.2f} s"
        if cold[ex]:
            line += f"; cold - warm {cold_med[ex] - med[ex]:+.2f} s (cold: {', '.join(f'{t:.2f}' for t in cold[ex])})"
        print(line)


if __name__ == "__main__":
    main()
