"""Population based training through the service: POST /v1/pbt -> population finished, fused and distributed.

bench/pbt.py's experiment (digits, MLP 128-128, SGD momentum 0.9, batch 64, lr log-uniform [1e-3, 1], seed 0;
population 8, 8 epochs, exploit/explore every 2) sent to a real `lrlab api` with one warm `lrlab worker`
(concurrency 1, one torch thread), as bench/overhead.py starts them. Timed alternating, after a warm-up of each:
  fused        {"execution": "fused"}: each round is one pack of the whole population on the worker
  distributed  {"execution": "distributed"}: one task per member per round through the broker
The figure to set against bench/pbt_ray.py's Ray total: both include dispatch, checkpoints and bookkeeping.

  python bench/pbt_service.py --repeats 3              # Postgres + Redis on localhost
  python bench/pbt_service.py --embedded --repeats 3   # SQLite database and transport

Prints a Markdown row: median seconds of each, distributed / fused, and the best final val_accuracy of each.
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

import torch  # noqa: E402

from bench.overhead import POLL, _free_port, _http, private_services, start_service, stop  # noqa: E402

EXECUTIONS = ("fused", "distributed")


def pbt_request(execution: str, population: int, epochs: int, interval: int) -> dict[str, Any]:
    return {
        "name": f"bench-pbt-{execution}",
        "execution": execution,
        "base": {
            "dataset": "digits",
            "model": {"name": "mlp", "hidden": [128, 128]},
            "optimizer": {"name": "sgd", "momentum": 0.9},
            "device": "cpu",
            "seed": 0,
        },
        "population": population,
        "epochs": epochs,
        "interval": interval,
        "mutations": {"lr": {"log_uniform": [1e-3, 1.0]}},
        "seed": 0,
    }


def service_pbt(base: str, request: dict[str, Any]) -> tuple[float, float]:
    """POST -> GET says finished: (seconds, the best member's final val_accuracy)."""
    t0 = time.perf_counter()
    pbt_id = _http("POST", f"{base}/v1/pbt", request)["id"]
    while (pbt := _http("GET", f"{base}/v1/pbt/{pbt_id}"))["status"] in ("queued", "running"):
        time.sleep(POLL)
    elapsed = time.perf_counter() - t0
    if pbt["status"] != "succeeded" or pbt["best"] is None:
        raise RuntimeError(f"{request['execution']} population ended {pbt['status']}: {pbt['error']}")
    if pbt["epochs_completed"] != request["epochs"]:
        raise RuntimeError(f"{request['execution']} population stopped at epoch {pbt['epochs_completed']}")
    return elapsed, float(pbt["best"]["val_accuracy"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--population", type=int, default=8)
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--interval", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--embedded", action="store_true", help="SQLite database and transport, no servers")
    args = ap.parse_args()
    requests = {ex: pbt_request(ex, args.population, args.epochs, args.interval) for ex in EXECUTIONS}
    load = [os.getloadavg()[0]]

    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    times: dict[str, list[float]] = {ex: [] for ex in EXECUTIONS}
    best: dict[str, list[float]] = {ex: [] for ex in EXECUTIONS}
    with private_services(args.embedded) as env:
        procs = start_service(env, port)
        try:
            for ex in EXECUTIONS:  # warm-up of each
                service_pbt(base, requests[ex])
            for _ in range(args.repeats):
                for ex in EXECUTIONS:
                    seconds, acc = service_pbt(base, requests[ex])
                    times[ex].append(seconds)
                    best[ex].append(acc)
                load.append(os.getloadavg()[0])
        finally:
            for p in procs:
                stop(p)

    med = {ex: statistics.median(ts) for ex, ts in times.items()}
    shape = "embedded (SQLite + SQLite transport)" if args.embedded else "Postgres + Redis"
    print(
        f"\n{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, {shape};"
        " digits, MLP 128-128, SGD momentum 0.9, lr log-uniform [1e-3, 1], batch 64; 1 worker, 1 torch thread;"
        f" {args.repeats} repeats; 1-min load average {min(load):.2f}-{max(load):.2f}\n"
    )
    print(
        "| population | epochs / interval | fused (median, min-max) | distributed (median, min-max)"
        " | distributed / fused | best val_acc fused, distributed |\n|---|---|---|---|---|---|"
    )
    span = {ex: f"{med[ex]:.2f} s ({min(times[ex]):.2f}-{max(times[ex]):.2f})" for ex in EXECUTIONS}
    accs = {ex: "/".join(sorted({f"{a:.4f}" for a in best[ex]})) for ex in EXECUTIONS}
    print(
        f"| {args.population} | {args.epochs} / {args.interval} | {span['fused']} | {span['distributed']}"
        f" | {med['distributed'] / med['fused']:.2f} | {accs['fused']}, {accs['distributed']} |"
    )


if __name__ == "__main__":
    main()
