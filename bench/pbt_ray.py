"""Population based training under Ray Tune's PopulationBasedTraining: the reference bench/pbt.py is measured against.

The experiment of bench/pbt.py (digits, MLP 128-128, SGD momentum 0.9, lr log-uniform [1e-3, 1], quantile 0.25,
perturbation factors 1.2 / 0.8, resample probability 0.25), run the way a Ray Tune user would: a function
trainable per member, one CPU each, checkpoints (weights + optimizer state) through `tune.Checkpoint` at every
perturbation, Ray's scheduler deciding who exploits whom. The data and the model come from `trainer` (the same
split and standardisation); the loop is plain torch with `torch.optim.SGD`.

Ray is not a dependency of lrlab: run it from a virtualenv of its own, outside the repository.

  python3 -m venv /tmp/rayenv && /tmp/rayenv/bin/pip install torch==2.13.0 "ray[tune]" scikit-learn numpy
  /tmp/rayenv/bin/python bench/pbt_ray.py --population 8 --epochs 8 --interval 2
  .venv/bin/python bench/pbt.py --population 8 --epochs 8 --interval 2      # lrlab, fused, to compare

Prints Ray's start-up (ray.init to the first trial's first line), the wall time of ray.init + Tuner.fit, the same
without the start-up, and the best final val_accuracy. `--asynch` uses Ray's default asynchronous PBT; the
default, synchronous, matches lrlab's rounds (every member reaches the boundary before anyone exploits).
`--reuse-actors` keeps each trial's worker process across PBT's pauses, as Ray's warning advises.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import ray  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from ray import tune  # noqa: E402
from ray.tune.schedulers import PopulationBasedTraining  # noqa: E402
from ray.tune.search.basic_variant import BasicVariantGenerator  # noqa: E402

import trainer  # noqa: E402


def member_seed() -> int:
    """The trial's index (Ray names trials `<experiment>_<index>`): bench/pbt.py seeds member k with k."""
    trial_id = tune.get_context().get_trial_id() or "0"
    tail = trial_id.rsplit("_", 1)[-1]
    return int(tail) if tail.isdigit() else 0


def train_member(config: dict[str, Any]) -> None:
    """One member: resume from Ray's checkpoint if any (its own or, after an exploit, the source's), train on."""
    started_at = time.time()
    torch.set_num_threads(1)
    seed = member_seed()
    data = trainer.load_dataset(trainer.DatasetConfig("digits"), 0)  # one split for all, as lrlab's members
    torch.manual_seed(seed)
    model = trainer.build_model(trainer.ModelConfig("mlp", {"hidden": [128, 128]}), data.input_shape, data.n_classes)
    optimizer = torch.optim.SGD(model.parameters(), lr=config["lr"], momentum=0.9)
    epoch = 0
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            state = torch.load(Path(directory) / "state.pt", weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        epoch = state["epoch"]
    for group in optimizer.param_groups:  # after an exploit: the source's momentum, this trial's (new) lr
        group["lr"] = config["lr"]
    order = torch.Generator()
    n_train = len(data.y_train)
    while epoch < config["epochs"]:
        epoch += 1
        order.manual_seed(seed * 1000 + epoch)
        model.train()
        perm = torch.randperm(n_train, generator=order)  # (N,)
        for i in range(0, n_train, config["batch_size"]):
            idx = perm[i : i + config["batch_size"]]
            loss = F.cross_entropy(model(data.x_train[idx]), data.y_train[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        model.eval()
        with torch.no_grad():
            val_accuracy = (model(data.x_val).argmax(dim=1) == data.y_val).float().mean().item()
        metrics = {"val_accuracy": val_accuracy, "epoch": epoch, "started_at": started_at}
        if epoch % config["interval"] == 0 or epoch == config["epochs"]:
            with tempfile.TemporaryDirectory() as directory:
                state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch}
                torch.save(state, Path(directory) / "state.pt")
                tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(directory))
        else:
            tune.report(metrics)


def run(
    population: int, epochs: int, interval: int, batch_size: int, synch: bool, reuse_actors: bool
) -> dict[str, float]:
    t0 = time.time()
    ray.init(num_cpus=os.cpu_count(), num_gpus=0, include_dashboard=False, log_to_driver=False)
    t_init = time.time()
    scheduler = PopulationBasedTraining(
        time_attr="training_iteration",  # one report per epoch
        perturbation_interval=interval,
        hyperparam_mutations={"lr": tune.loguniform(1e-3, 1)},
        quantile_fraction=0.25,
        resample_probability=0.25,
        perturbation_factors=(1.2, 0.8),
        synch=synch,
    )
    with tempfile.TemporaryDirectory() as storage:
        tuner = tune.Tuner(
            tune.with_resources(train_member, {"cpu": 1}),
            param_space={
                "lr": tune.loguniform(1e-3, 1),
                "epochs": epochs,
                "interval": interval,
                "batch_size": batch_size,
            },
            tune_config=tune.TuneConfig(
                metric="val_accuracy",
                mode="max",
                scheduler=scheduler,
                num_samples=population,
                search_alg=BasicVariantGenerator(random_state=0),
                reuse_actors=reuse_actors,  # off: each pause ends the worker process, each restart starts one
            ),
            run_config=tune.RunConfig(storage_path=storage, name="pbt_ray", verbose=0),
        )
        results = tuner.fit()
        t_fit = time.time()
        finals = [r.metrics for r in results if r.metrics]
        # synch PBT pauses every trial at every boundary and restarts it from a checkpoint: the first start
        # is in each trial's history, not its last result
        first_start = min(r.metrics_dataframe["started_at"].min() for r in results if r.metrics)
    ray.shutdown()
    errors = sum(1 for r in results if r.error is not None)
    if errors:
        raise SystemExit(f"{errors} trial(s) failed")
    return {
        "init": t_init - t0,
        "startup": first_start - t0,
        "total": t_fit - t0,
        "best": max(m["val_accuracy"] for m in finals),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--population", type=int, default=8)
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--interval", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--asynch", action="store_true", help="Ray's default asynchronous PBT instead of synch=True")
    ap.add_argument("--reuse-actors", action="store_true", help="keep trial processes across pauses (Ray's advice)")
    args = ap.parse_args()
    r = run(args.population, args.epochs, args.interval, args.batch_size, not args.asynch, args.reuse_actors)
    print(
        f"ray {ray.__version__}, torch {torch.__version__}, {os.cpu_count()} CPU(s), one per trial;"
        f" synch={not args.asynch}, reuse_actors={args.reuse_actors}; digits, MLP 128-128, SGD momentum 0.9,"
        f" batch {args.batch_size}\n"
    )
    print("| population | epochs / interval | ray.init | start-up | Ray total | Ray excl. start-up | best val_acc |")
    print("|---|---|---|---|---|---|---|")
    print(
        f"| {args.population} | {args.epochs} / {args.interval} | {r['init']:.2f} s | {r['startup']:.2f} s"
        f" | {r['total']:.2f} s | {r['total'] - r['startup']:.2f} s | {r['best']:.4f} |"
    )


if __name__ == "__main__":
    main()
