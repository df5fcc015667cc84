"""The lr x optimizer search on digits under the anchors: Ray Tune's ASHAScheduler, Optuna's Hyperband pruner.

One search, four ways (issue 16 #3), each at the same budget: at most 9 epochs a configuration, 27
configurations. The space is sgd, adam and rmsprop (torch's defaults) x lr in [1e-5, 1e-1], on digits with
the MLP 128-128, batch 64, seed 0 (the same train/validation split and initial weights as lrlab's runs with
base.seed 0). The figure is the wall time until some configuration reaches, at some epoch, val_accuracy
within 0.5 % of the full grid's best (at least 0.995 x it), and the best reached.

- `--tool grid`: the full grid (3 optimizers x 9 lrs from 1e-5 to 1e-1, every cell 9 epochs), one after
  another in this process: the reference best, and what exhaustive search costs.
- `--tool ray`: the same 27 grid cells under Ray Tune's ASHAScheduler (grace 1 epoch, reduction factor 3,
  max 9), a function trainable per configuration with one CPU each, as a Ray Tune user writes it.
- `--tool optuna`: 27 trials of Optuna's TPESampler over lr log-uniform [1e-5, 1e-1] x optimizer, pruned by
  its HyperbandPruner (min 1, max 9 epochs, reduction factor 3), `study.optimize` in this process.

- `--tool lrlab-asha`: the 27 grid cells as one fused experiment with early_stopping (ASHA, grace 1, reduction
  factor 3), through a real `lrlab api` and one `lrlab worker` (one torch thread; Postgres + Redis), timed from
  the POST (the service is up and warm, as a running lrlab is).
- `--tool lrlab-tpe`: POST /v1/searches: 27 trials of Optuna's TPE over the same space, 9 at a time (each batch
  one fused pack), with the same ASHA early stopping; timed from the POST.

The lrlab tools poll the runs' curves every 0.1 s: a point counts from the poll that first saw it. The
trainables here are plain torch (data and model from `trainer`, `torch.optim` optimizers). Ray and Optuna
run from virtualenvs of their own, outside the repository (Ray is not an lrlab dependency; the Optuna one
runs Optuna as its users do, without lrlab):

  python3 -m venv /tmp/rayenv && /tmp/rayenv/bin/pip install torch==2.13.0 "ray[tune]" scikit-learn numpy mnist1d
  python3 -m venv /tmp/optunaenv && /tmp/optunaenv/bin/pip install torch==2.13.0 optuna scikit-learn numpy mnist1d
  .venv/bin/python bench/search_anchors.py --tool grid --out /tmp/anchors/grid.json
  /tmp/rayenv/bin/python bench/search_anchors.py --tool ray --out /tmp/anchors/ray.json
  /tmp/optunaenv/bin/python bench/search_anchors.py --tool optuna --out /tmp/anchors/optuna.json
  .venv/bin/python bench/search_anchors.py --tool lrlab-asha --out /tmp/anchors/lrlab-asha.json
  .venv/bin/python bench/search_anchors.py --tool lrlab-tpe --out /tmp/anchors/lrlab-tpe.json
  .venv/bin/python bench/search_anchors.py --report /tmp/anchors/*.json

Each tool writes every (seconds since its start, configuration, epoch, val_accuracy) it saw; `--report` reads
the grid's best from the grid's file and prints one table.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

EPOCHS = 9
OPTIMIZERS = ("sgd", "adam", "rmsprop")
GRID_LRS = [10 ** (-5 + 0.5 * i) for i in range(9)]  # 1e-5, 3.2e-5, ..., 1e-1
LR_RANGE = (1e-5, 1e-1)
GRACE, REDUCTION = 1, 3
WITHIN = 0.995  # "within 0.5 % of the grid's best"
SEED = 0
BATCH = 64


class Trainee:
    """One configuration, trained an epoch at a time: the loop a Ray Tune or Optuna user writes."""

    def __init__(self, optimizer: str, lr: float, threads: int) -> None:
        import torch

        import trainer

        torch.set_num_threads(threads)
        self.torch = torch
        self.data = trainer.load_dataset(trainer.DatasetConfig("digits"), SEED)
        torch.manual_seed(SEED)
        self.model = trainer.build_model(
            trainer.ModelConfig("mlp", {"hidden": [128, 128]}), self.data.input_shape, self.data.n_classes
        )
        factory = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam, "rmsprop": torch.optim.RMSprop}[optimizer]
        self.optimizer = factory(self.model.parameters(), lr=lr)
        self.order = torch.Generator()
        self.epoch = 0

    def train_epoch(self) -> float:
        """One epoch; the validation accuracy after it (0 when the loss went non-finite: a diverged run)."""
        torch, data = self.torch, self.data
        self.epoch += 1
        self.order.manual_seed(SEED * 1000 + self.epoch)
        self.model.train()
        perm = torch.randperm(len(data.y_train), generator=self.order)  # (N,)
        for i in range(0, len(perm), BATCH):
            idx = perm[i : i + BATCH]
            loss = torch.nn.functional.cross_entropy(self.model(data.x_train[idx]), data.y_train[idx])
            if not torch.isfinite(loss):
                return 0.0
            self.optimizer.zero_grad()
            loss.backward()
            self.optimizer.step()
        self.model.eval()
        with torch.no_grad():
            return (self.model(data.x_val).argmax(dim=1) == data.y_val).float().mean().item()


def run_grid(threads: int) -> dict[str, Any]:
    t0 = time.perf_counter()
    events = []
    for optimizer in OPTIMIZERS:
        for lr in GRID_LRS:
            member = Trainee(optimizer, lr, threads)
            for epoch in range(1, EPOCHS + 1):
                events.append([time.perf_counter() - t0, f"{optimizer} {lr:.2g}", epoch, member.train_epoch()])
    return {"tool": "grid", "startup": 0.0, "total": time.perf_counter() - t0, "events": events}


def _ray_trainable(config: dict[str, Any]) -> None:
    from ray import tune

    started = time.time()
    member = Trainee(config["optimizer"], config["lr"], 1)
    for _ in range(EPOCHS):
        accuracy = member.train_epoch()
        tune.report({"val_accuracy": accuracy, "at": time.time(), "started": started})


def run_ray(reuse_actors: bool) -> dict[str, Any]:
    import ray
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    t0 = time.time()
    ray.init(num_cpus=os.cpu_count(), num_gpus=0, include_dashboard=False, log_to_driver=False)
    scheduler = ASHAScheduler(
        time_attr="training_iteration", max_t=EPOCHS, grace_period=GRACE, reduction_factor=REDUCTION
    )
    with tempfile.TemporaryDirectory() as storage:
        tuner = tune.Tuner(
            tune.with_resources(_ray_trainable, {"cpu": 1}),
            param_space={"optimizer": tune.grid_search(list(OPTIMIZERS)), "lr": tune.grid_search(GRID_LRS)},
            tune_config=tune.TuneConfig(
                metric="val_accuracy", mode="max", scheduler=scheduler, reuse_actors=reuse_actors
            ),
            run_config=tune.RunConfig(storage_path=storage, name="asha_ray", verbose=0),
        )
        results = tuner.fit()
        total = time.time() - t0
    ray.shutdown()
    events, starts = [], []
    for r in results:
        if r.error is not None:
            raise SystemExit(f"trial {r.config} failed: {r.error}")
        frame = r.metrics_dataframe
        label = f"{r.config['optimizer']} {r.config['lr']:.2g}"
        starts.append(float(frame["started"].min()) - t0)
        for at, epoch, accuracy in zip(frame["at"], frame["training_iteration"], frame["val_accuracy"], strict=True):
            events.append([float(at) - t0, label, int(epoch), float(accuracy)])
    events.sort()
    startup = min(starts)  # ray.init to the first trial's first line (its process started, torch imported)
    name = "ray" + (" reuse_actors" if reuse_actors else "")
    return {"tool": name, "version": ray.__version__, "startup": startup, "total": total, "events": events}


def run_optuna(threads: int) -> dict[str, Any]:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    t0 = time.perf_counter()
    events: list[list[Any]] = []

    def objective(trial: optuna.Trial) -> float:
        lr = trial.suggest_float("lr", *LR_RANGE, log=True)
        optimizer = trial.suggest_categorical("optimizer", list(OPTIMIZERS))
        member = Trainee(optimizer, lr, threads)
        best = 0.0
        for epoch in range(1, EPOCHS + 1):
            accuracy = member.train_epoch()
            events.append([time.perf_counter() - t0, f"{trial.number} {optimizer} {lr:.3g}", epoch, accuracy])
            best = max(best, accuracy)
            trial.report(accuracy, epoch)
            if trial.should_prune():
                raise optuna.TrialPruned()
        return best

    study = optuna.create_study(
        direction="maximize",
        sampler=optuna.samplers.TPESampler(seed=SEED),
        pruner=optuna.pruners.HyperbandPruner(min_resource=GRACE, max_resource=EPOCHS, reduction_factor=REDUCTION),
    )
    study.optimize(objective, n_trials=27)
    total = time.perf_counter() - t0
    return {"tool": "optuna hyperband", "version": optuna.__version__, "startup": 0.0, "total": total, "events": events}


ASHA = {"kind": "asha", "metric": "val_accuracy", "grace_epochs": GRACE, "reduction_factor": REDUCTION}
BASE = {"dataset": "digits", "epochs": EPOCHS, "device": "cpu", "seed": SEED, "batch_size": BATCH}


def run_lrlab(kind: str) -> dict[str, Any]:
    """The search through a private lrlab (api + one worker), POST to the end, its curves polled as they grow."""
    from bench.overhead import _free_port, _http, private_services, start_service, stop

    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    with private_services(False) as env:
        procs = start_service(env, port)
        try:
            t0 = time.perf_counter()
            if kind == "lrlab-asha":
                grid = {"optimizer": [{"name": o} for o in OPTIMIZERS], "lr": GRID_LRS}
                body = {"name": "anchors", "execution": "fused", "base": BASE, "grid": grid, "early_stopping": ASHA}
                created = _http("POST", f"{base}/v1/experiments", body)
            else:
                space = {"lr": {"log_uniform": list(LR_RANGE)}, "optimizer": {"choice": list(OPTIMIZERS)}}
                body = {"base": BASE, "space": space, "trials": 27, "parallel": 9, "seed": SEED, "early_stopping": ASHA}
                created = _http("POST", f"{base}/v1/searches", body)
            events = _poll(base, kind, created["id"], t0)
            total = time.perf_counter() - t0
        finally:
            for p in procs:
                stop(p)
    return {"tool": kind, "startup": 0.0, "total": total, "events": events}


def _poll(base: str, kind: str, object_id: str, t0: float) -> list[list[Any]]:
    from bench.overhead import _http

    seen: set[tuple[str, int]] = set()
    events: list[list[Any]] = []
    while True:
        if kind == "lrlab-asha":
            done = _http("GET", f"{base}/v1/experiments/{object_id}")["status"] == "finished"
            runs = _http("GET", f"{base}/v1/experiments/{object_id}/compare")["runs"]
        else:
            search = _http("GET", f"{base}/v1/searches/{object_id}")
            done = search["status"] not in ("queued", "running")
            ids = [t["run_id"] for t in search["trials"] if t["run_id"]]
            runs = _http("GET", f"{base}/v1/compare?runs={','.join(ids)}")["runs"] if ids else []
        now = time.perf_counter() - t0
        for run in runs:
            label = f"{run['spec']['optimizer']['name']} {run['spec']['optimizer']['lr']:.3g} {run['run_id'][:8]}"
            for point in run["points"]:
                if (run["run_id"], point["epoch"]) not in seen and point["val_accuracy"] is not None:
                    seen.add((run["run_id"], point["epoch"]))
                    events.append([now, label, point["epoch"], point["val_accuracy"]])
        if done:
            return events
        time.sleep(0.1)


def summarise(run: dict[str, Any], grid_best: float) -> dict[str, Any]:
    target = WITHIN * grid_best
    reached = next((e[0] for e in sorted(run["events"]) if e[3] >= target), None)
    return {
        "tool": run["tool"],
        "configurations": len({e[1] for e in run["events"]}),
        "epochs": len(run["events"]),
        "total": run["total"],
        "startup": run["startup"],
        "reached": reached,
        "best": max(e[3] for e in run["events"]),
        "load": run.get("loadavg", ["?"])[0],
    }


def report(paths: list[Path]) -> None:
    runs = [json.loads(p.read_text()) for p in paths]
    grids = [r for r in runs if r["tool"] == "grid"]
    if not grids:
        raise SystemExit("--report needs the grid's file (its best is the target)")
    grid_best = max(e[3] for e in grids[0]["events"])
    print(f"grid best val_accuracy {grid_best:.4f}; target (within 0.5 %) {WITHIN * grid_best:.4f}\n")
    print("| tool | configurations | epochs trained | to target | total (start-up) | best val_acc | load (1 min) |")
    print("|---|---|---|---|---|---|---|")
    for run in runs:
        s = summarise(run, grid_best)
        reached = "not reached" if s["reached"] is None else f"{s['reached']:.1f} s"
        print(
            f"| {s['tool']} | {s['configurations']} | {s['epochs']} | {reached} | {s['total']:.1f} s"
            f" ({s['startup']:.1f} s) | {s['best']:.4f} | {s['load']} |"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tool", choices=("grid", "ray", "optuna", "lrlab-asha", "lrlab-tpe"))
    ap.add_argument("--out", type=Path, help="where to write the run's events (JSON)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads in grid and optuna (Ray: 1 per trial)")
    ap.add_argument("--reuse-actors", action="store_true", help="Ray: keep trial processes (Ray's advice)")
    ap.add_argument("--report", nargs="+", type=Path, help="the runs' JSON files: print the table")
    args = ap.parse_args()
    if args.report:
        report(args.report)
        return
    if args.tool is None:
        ap.error("give --tool or --report")
    if args.tool == "grid":
        run = run_grid(args.threads)
    elif args.tool == "ray":
        run = run_ray(args.reuse_actors)
    elif args.tool == "optuna":
        run = run_optuna(args.threads)
    else:
        run = run_lrlab(args.tool)
    with open("/proc/loadavg") as f:
        run["loadavg"] = f.read().split()[:3]
    run["cpus"] = os.cpu_count()
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(run))
    best = max(e[3] for e in run["events"])
    print(f"{run['tool']}: {len(run['events'])} epochs, {run['total']:.1f} s, best val_accuracy {best:.4f}")


if __name__ == "__main__":
    main()
