"""A 16-member grid through the service, fused and separate, against a bare in-process loop (issue #5's goal).

One grid (optimizers adam, sgd(momentum=0.9), rmsprop, adagrad x lrs 3e-4, 1e-3, 3e-3, 1e-2; digits, MLP
128-128, batch 64, 5 epochs, cpu) timed three ways, alternating, after a warm-up of each (medians of repeats):
  bare      a hand-written PyTorch loop (torch.optim, nn.Sequential; bench/overhead.py's bare_loop) in this
            process, over the 16 configurations one after another
  separate  POST /v1/experiments {"execution": "separate"} -> GET until every member is finished (16 tasks)
  fused     the same with {"execution": "fused"}: one pack message, trained as 4 groups of 4 (one per optimizer)
  inproc    the same population fused in this process (trainer.population.train_population, no service):
            what the fused path costs without the service around it (issue 15's goal: fused <= 1.3 x inproc)
One `lrlab worker` (concurrency 1, one torch thread), a real `lrlab api`, as bench/overhead.py starts them.
With --tree (repeat it), each checkout gets its own api and worker and database, timed in turn in each repeat;
bare and inproc run in this process, from this checkout.

After those, `cold` times the first grid a freshly started worker receives (the api stays up and warm; a
new worker for each cold grid, fused and separate in turn, --cold rounds): whatever a worker still loads
inside its first task (imports, datasets) shows up as cold minus warm.

  python bench/grid.py --repeats 5              # Postgres + Redis on localhost
  python bench/grid.py --embedded --repeats 3   # SQLite database and transport
  python bench/grid.py --tree /tmp/lrlab-before --tree . --cold 0   # before and after, side by side
"""

from __future__ import annotations

import argparse
import contextlib
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

from bench.overhead import (  # noqa: E402
    POLL,
    _free_port,
    _http,
    _wait_finished,
    bare_loop,
    for_tree,
    private_services,
    start_service,
    start_worker,
    stop,
)
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
    # The last member's event stream ends with it (a fused pack's members are recorded together); then the
    # experiment is read, polled only if some member is still going. Polling all along loaded the api, on
    # the cores the worker trains on.
    _wait_finished(base, created["runs"][-1])
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


def inproc_grid(specs: list[dict[str, Any]]) -> float:
    """The population fused in this process, as a worker's pack trains it (without the service)."""
    import trainer
    from trainer.population import train_population

    configs = [trainer.RunConfig.from_spec(spec) for spec in specs]
    t0 = time.perf_counter()
    train_population(configs, device="cpu")
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--dataset", default="digits")
    ap.add_argument("--lr", type=float, nargs="+", default=[3e-4, 1e-3, 3e-3, 1e-2])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--cold", type=int, default=3, help="rounds of first grids on fresh workers (one tree only)")
    ap.add_argument("--embedded", action="store_true", help="SQLite database and transport, no servers")
    ap.add_argument("--tree", type=Path, action="append", help="checkouts to measure side by side (repeat)")
    args = ap.parse_args()
    torch.set_num_threads(1)  # the worker gets the same (LRLAB_TORCH_THREADS=1)
    requests = {ex: grid_request(ex, args.lr, args.epochs, args.dataset) for ex in ("separate", "fused")}
    specs = [cell.spec.to_json() for cell in expand(ExperimentCreate.model_validate(requests["fused"]))]
    load = [os.getloadavg()[0]]
    trees = [t.resolve() for t in args.tree] if args.tree else [None]
    names = [str(t) if t else "" for t in trees]
    label = {n: (f" {n}" if n else "") for n in names}

    times: dict[str, list[float]] = {"bare": [], "inproc": []}
    parts: dict[str, list[dict[str, float]]] = {}
    cold: dict[str, list[float]] = {}
    for n in names:
        for ex in ("separate", "fused"):
            times[ex + label[n]], parts[ex + label[n]], cold[ex + label[n]] = [], [], []
    with contextlib.ExitStack() as stack:
        bases, envs, procs = {}, {}, {}
        for tree, n in zip(trees, names, strict=True):
            env = stack.enter_context(private_services(args.embedded))
            envs[n] = for_tree(env, tree) if tree else env
            port = _free_port()
            procs[n] = start_service(envs[n], port)
            stack.callback(lambda n=n: [stop(p) for p in procs[n]])
            bases[n] = f"http://127.0.0.1:{port}"
        bare_grid(specs), inproc_grid(specs)
        for n in names:
            service_grid(bases[n], requests["separate"]), service_grid(bases[n], requests["fused"])
        for r in range(args.repeats):
            times["bare"].append(bare_grid(specs))
            times["inproc"].append(inproc_grid(specs))
            for n in names if r % 2 == 0 else names[::-1]:
                for ex in ("separate", "fused"):
                    seconds, split = service_grid(bases[n], requests[ex])
                    times[ex + label[n]].append(seconds)
                    parts[ex + label[n]].append(split)
            load.append(os.getloadavg()[0])
        if len(names) == 1:
            n = names[0]
            for _ in range(args.cold):
                for ex in ("fused", "separate"):
                    stop(procs[n].pop())
                    procs[n].append(start_worker(envs[n], bases[n]))
                    cold[ex + label[n]].append(service_grid(bases[n], requests[ex])[0])  # this worker's first task
                load.append(os.getloadavg()[0])

    med = {name: statistics.median(ts) for name, ts in times.items()}
    cold_med = {ex: statistics.median(ts) for ex, ts in cold.items() if ts}
    shape = "embedded (SQLite + SQLite transport)" if args.embedded else "Postgres + Redis"
    lrs = ", ".join(f"{lr:g}" for lr in args.lr)
    print(
        f"\n{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, {shape};"
        f" {len(specs)} members: {len(OPTIMIZERS)} optimizers x lr [{lrs}], {args.dataset} MLP, {args.epochs} epochs,"
        f" 1 worker, 1 torch thread; {args.repeats} repeats, {args.cold if len(names) == 1 else 0} cold rounds;"
        f" 1-min load average {min(load):.2f}-{max(load):.2f}\n"
    )
    print("| path | median s | min s | max s | first grid of a fresh worker (cold): median s |\n|---|---|---|---|---|")
    for name, ts in times.items():
        first = f"{cold_med[name]:.2f}" if name in cold_med else "-"
        print(f"| {name} | {med[name]:.2f} | {min(ts):.2f} | {max(ts):.2f} | {first} |")
    print()
    for n in names:
        sep, fus = med["separate" + label[n]], med["fused" + label[n]]
        print(
            f"{n or 'this checkout'}: fused / inproc {fus / med['inproc']:.2f} (goal <= 1.3);"
            f" separate / fused {sep / fus:.2f} (goal >= 1.2); fused / bare {fus / med['bare']:.2f} (goal <= 1.5)"
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
