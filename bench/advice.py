"""The advice (POST /v1/advice) against brute force: how close its recommendation comes to a full grid's best,
for what fraction of the grid's epochs.

For each dataset (the default MLP 128-128, batch 64; 10 epochs on digits and 20 on MNIST-1D, as
bench/lr_finder_rules.py) and, with --plugin, the example plugin's model on its dataset:
  grid    the article's six optimizers (SGD with momentum 0.9, RMSProp, Adam, Adagrad, Adadelta, AdamW) x 8
          log-spaced lrs from 1e-5 to 1 x seeds 0, 1, 2, every run at full budget (trainer.train, in --jobs
          processes of one torch thread); a configuration scores the mean over seeds of each run's best
          validation accuracy, and the grid's best is the configuration with the best mean.
  advice  one POST /v1/advice with the same base (default optimizers, seeds 3, schedules constant and cosine)
          to an `lrlab api` with --workers `lrlab worker`s over a Postgres database and Redis of its own (the
          embedded SQLite service with --embedded); its recommendation scores the same way over its replicates.
Recorded: the gap (the grid's best minus the recommendation's mean: positive is the advice short of the grid),
and the advice's epochs (every epoch its runs stored, its compute.epochs_trained, and its range tests' steps as
epochs of the training split) as a fraction of the grid's (48 configurations x 3 seeds x the budget). Expected:
within 0.02 for at most a third of the epochs.

  python bench/advice.py                                  # digits and MNIST-1D, ~3 min on the 2-core VM
  python bench/advice.py --plugin                         # and the example plugin's model, ~6 min more
  python bench/advice.py --datasets digits --grid-cache /tmp/grid.json   # reuse a grid across method changes

Prints a Markdown table, one row per dataset.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from bench.overhead import _free_port, _http, private_services, start_service, start_worker, stop  # noqa: E402
from lrlab.advice.plan import range_test_epochs  # noqa: E402
from lrlab.runs.quotas import NOMINAL_FILE_SAMPLES, samples  # noqa: E402
from lrlab.schemas.advice import ARTICLE_OPTIMIZERS, BY_NAME  # noqa: E402
from lrlab.schemas.spec import RunSpec  # noqa: E402

LRS = [float(f"{v:.3g}") for v in np.logspace(-5, 0, 8)]
SEEDS = (0, 1, 2)
PROBLEMS: dict[str, dict[str, Any]] = {
    "digits": {"dataset": "digits", "model": {"name": "mlp", "hidden": [128, 128]}, "epochs": 10},
    "mnist1d": {"dataset": "mnist1d", "model": {"name": "mlp", "hidden": [128, 128]}, "epochs": 20},
    # the example plugin package (examples/lrlab-example-plugin), installed where the workers run: its
    # transformer (width 32, 2 layers) on its motifs dataset, both with their defaults
    "plugin": {"dataset": {"name": "motifs"}, "model": {"name": "tiny-transformer"}, "epochs": 10},
}
# Each problem's samples; the api counts a plugin's dataset as the quota's nominal size instead.
SAMPLES = {"digits": 1797, "mnist1d": 5000, "plugin": 2000}
POLL = 1.0


def base_spec(problem: str) -> dict[str, Any]:
    return {**PROBLEMS[problem], "batch_size": 64, "device": "cpu", "seed": 0}


def optimizers() -> list[dict[str, Any]]:
    return [dict(BY_NAME.get(name, {"name": name})) for name in ARTICLE_OPTIMIZERS]


def label(optimizer: dict[str, Any]) -> str:
    extra = {k: v for k, v in optimizer.items() if k != "name"}
    return optimizer["name"] + (f"({', '.join(f'{k}={v}' for k, v in extra.items())})" if extra else "")


# --- the grid ---------------------------------------------------------------------------------------


def train_cell(spec: dict[str, Any]) -> float | None:
    """One grid run: its best validation accuracy (None when it never had a finite one)."""
    import trainer

    torch.set_num_threads(1)
    result = trainer.train(trainer.RunConfig.from_spec(RunSpec.model_validate(spec).to_json()), device="cpu")
    values = [p.val_accuracy for p in result.points if p.val_accuracy is not None and math.isfinite(p.val_accuracy)]
    return max(values) if values else None


def grid(problem: str, jobs: int, cache: Path | None) -> dict[str, Any]:
    """Every optimizer x lr x seed at full budget: {"cells": [{optimizer, lr, values}], "epochs": nominal}."""
    key = json.dumps({"base": base_spec(problem), "lrs": LRS, "seeds": SEEDS, "optimizers": optimizers()})
    found = json.loads(cache.read_text()) if cache is not None and cache.exists() else {}
    if key in found:
        return found[key]  # type: ignore[no-any-return]
    specs, cells = [], []
    for optimizer in optimizers():
        for lr in LRS:
            cells.append({"optimizer": label(optimizer), "lr": lr})
            specs += [{**base_spec(problem), "optimizer": {**optimizer, "lr": lr}, "seed": s} for s in SEEDS]
    t0 = time.perf_counter()
    with ProcessPoolExecutor(jobs) as pool:
        scores = list(pool.map(train_cell, specs))
    for k, cell in enumerate(cells):
        cell["values"] = scores[k * len(SEEDS) : (k + 1) * len(SEEDS)]
    out = {"cells": cells, "epochs": len(specs) * base_spec(problem)["epochs"], "seconds": time.perf_counter() - t0}
    if cache is not None:
        cache.write_text(json.dumps({**found, key: out}))
    return out


def grid_best(cells: list[dict[str, Any]]) -> dict[str, Any]:
    """The configuration with the best mean over seeds (a run with no accuracy counts 0: it never learned)."""
    return max(cells, key=lambda c: statistics.fmean(v if v is not None else 0.0 for v in c["values"]))


# --- the advice ---------------------------------------------------------------------------------------


def advise(base_url: str, problem: str) -> dict[str, Any]:
    t0 = time.perf_counter()
    created = _http("POST", f"{base_url}/v1/advice", {"name": f"bench {problem}", "base": base_spec(problem)})
    while (advice := _http("GET", f"{base_url}/v1/advice/{created['id']}"))["status"] in ("queued", "running"):
        time.sleep(POLL)
    advice["seconds"] = time.perf_counter() - t0
    if advice["status"] != "succeeded":
        raise RuntimeError(f"advice on {problem} ended {advice['status']}: {advice['error']}")
    # its range tests' steps as epochs of the problem's true training split (the api's count uses its own
    # idea of the dataset's size, which for a plugin's is a nominal one)
    steps = sum(len(_http("GET", f"{base_url}/v1/lr-finder/{t['job_id']}")["points"]) for t in advice["range_tests"])
    batch = base_spec(problem)["batch_size"]
    counted = samples(RunSpec.model_validate(base_spec(problem)).dataset)
    assert counted in (SAMPLES[problem], NOMINAL_FILE_SAMPLES)
    advice["epochs"] = (
        advice["compute"]["epochs_trained"]
        - range_test_epochs(steps, batch, counted)
        + range_test_epochs(steps, batch, SAMPLES[problem])
    )
    return advice


def row(problem: str, found: dict[str, Any], advice: dict[str, Any]) -> str:
    best = grid_best(found["cells"])
    best_mean = statistics.fmean(v or 0.0 for v in best["values"])
    rec = advice["recommendation"]
    mean, std = rec["val_accuracy"]["mean"], rec["val_accuracy"]["std"]
    fraction = advice["epochs"] / found["epochs"]
    verdict = advice["verdict"]["statement"] if advice["verdict"] else "-"
    return (
        f"| {problem} | {best['optimizer']} {best['lr']:g}: {best_mean:.4f} | {rec['label']}: {mean:.4f} ± {std:.4f}"
        f" | {best_mean - mean:+.4f} | {advice['epochs']:.0f} / {found['epochs']} = {fraction:.3f}"
        f" | {advice['runner_up']['label']}: {advice['runner_up']['val_accuracy']['mean']:.4f} | {verdict} |"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", nargs="+", default=["digits", "mnist1d"], choices=list(PROBLEMS))
    ap.add_argument("--plugin", action="store_true", help="also the example plugin's model (installed here)")
    ap.add_argument("--jobs", type=int, default=2, help="processes training the grid")
    ap.add_argument("--workers", type=int, default=2, help="lrlab workers serving the advice")
    ap.add_argument("--embedded", action="store_true", help="SQLite database and transport, no servers")
    ap.add_argument("--grid-cache", type=Path, help="JSON file keeping grids between invocations")
    ap.add_argument("--json", type=Path, help="write every advice and grid here too")
    args = ap.parse_args()
    problems = [*args.datasets, *(["plugin"] if args.plugin and "plugin" not in args.datasets else [])]
    grids = {p: grid(p, args.jobs, args.grid_cache) for p in problems}
    advice = {}
    with private_services(args.embedded) as env:
        port = _free_port()
        procs = start_service(env, port)
        base_url = f"http://127.0.0.1:{port}"
        try:
            procs += [start_worker(env, base_url) for _ in range(args.workers - 1)]
            advice = {p: advise(base_url, p) for p in problems}
        finally:
            for proc in procs:
                stop(proc)
    print(f"\n{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}")
    print(
        "| problem | grid's best (mean over 3 seeds) | advice's recommendation (mean ± std over 3 seeds) | gap"
        " | epochs: advice / grid | runner-up | verdict |"
    )
    print("|---|---|---|---|---|---|---|")
    for p in problems:
        print(row(p, grids[p], advice[p]))
    for p in problems:
        print(f"{p}: advice {advice[p]['seconds']:.0f} s with {args.workers} workers; grid {grids[p]['seconds']:.0f} s")
    if args.json is not None:
        args.json.write_text(json.dumps({"grids": grids, "advice": advice}, indent=1))


if __name__ == "__main__":
    main()
