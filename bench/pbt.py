"""Population based training, in process: the whole population fused per round vs each member on its own.

The same rounds as the service runs them (lrlab.pbt.search decides; checkpoints carry members across rounds,
exploit loads the source's weights and optimizer state), without the database and the broker, so the figure
is the training itself: what `execution: fused` saves over `distributed` on one device.

  python bench/pbt.py --population 16 --epochs 8 --interval 2                 # CPU, one torch thread
  python bench/pbt.py --population 64 --epochs 20 --interval 4 --device cuda --threads 0

Prints a Markdown row: wall time of each execution, their ratio, and the best final val_accuracy of each.
"""

from __future__ import annotations

import argparse
import functools
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

import trainer  # noqa: E402
from lrlab.pbt import search  # noqa: E402
from trainer.population import train_population  # noqa: E402


def member_config(k: int, lr: float, epochs: int, batch_size: int) -> trainer.RunConfig:
    return trainer.RunConfig(
        dataset=trainer.DatasetConfig("digits"),
        model=trainer.ModelConfig("mlp", {"hidden": [128, 128]}),
        optimizer=trainer.OptimizerConfig("sgd", lr, {"momentum": 0.9}),
        epochs=epochs,
        batch_size=batch_size,
        seed=k,
        split_seed=0,  # one validation split for the population, as the service's members share
        divergence=trainer.DivergenceConfig(enabled=False),
    )


def train_round(
    configs: list[trainer.RunConfig],
    begin: list[trainer.Checkpoint | None],
    boundary: int,
    end: int,
    device: str,
    fused: bool,
    scores: list[float | None],
) -> dict[int, trainer.Checkpoint]:
    """Every member from `boundary` to `end`; their checkpoints at `end`, their last val_accuracy in scores."""
    saved: dict[int, trainer.Checkpoint] = {}
    reached = [boundary] * len(configs)

    def seen(k: int, point: trainer.EpochPoint) -> None:
        reached[k] = point.epoch
        scores[k] = point.val_accuracy

    if fused:
        train_population(
            configs,
            device=device,
            starts=begin,
            on_epoch=seen,
            should_stop=lambda k: reached[k] >= end,
            checkpoint_due=lambda k, e: e == end,
            on_checkpoint=saved.__setitem__,
        )
        return saved
    for k, config in enumerate(configs):
        trainer.train(
            config,
            device=device,
            start=begin[k],
            on_epoch=functools.partial(seen, k),
            should_stop=lambda k=k: reached[k] >= end,  # type: ignore[misc]
            checkpoint_due=lambda e: e == end,
            on_checkpoint=functools.partial(saved.__setitem__, k),
        )
    return saved


def run_pbt(population: int, epochs: int, interval: int, device: str, fused: bool, batch_size: int) -> float:
    """Best final val_accuracy of one PBT over lr in [1e-3, 1] (log-uniform), seed 0."""
    mutations = {"lr": search.Mutation("log_uniform", 1e-3, 1.0)}
    hps = search.initial(mutations, population, seed=0)
    starts: list[trainer.Checkpoint | None] = [None] * population
    weights_from = list(range(population))
    scores: list[float | None] = [None] * population
    boundary = 0
    while boundary < epochs:
        end = min(boundary + interval, epochs)
        configs = [member_config(k, hp["lr"], epochs, batch_size) for k, hp in enumerate(hps)]
        begin = []
        for k in range(population):
            own = starts[k]
            if own is not None and weights_from[k] != k:
                source = starts[weights_from[k]]
                assert source is not None
                own = trainer.exploit(own, {"lr": hps[k]["lr"]}, source)
            begin.append(own)
        saved = train_round(configs, begin, boundary, end, device, fused, scores)
        starts = [saved[k] for k in range(population)]
        weights_from = list(range(population))
        boundary = end
        if boundary < epochs:
            for r in search.exploit_and_explore(
                scores,
                hps,
                mutations,
                quantile=0.25,
                mode="max",
                factors=(0.8, 1.2),
                resample_probability=0.25,
                seed=0,
                epoch=boundary,
            ):
                hps[r.target], weights_from[r.target] = r.new, r.source
    return max(s for s in scores if s is not None)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--population", type=int, default=16)
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--interval", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads; 0 leaves torch's default")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = args.device
    run_pbt(2, 2, 1, device, True, args.batch_size)  # warm-up: data, kernels, the allocator
    run_pbt(2, 2, 1, device, False, args.batch_size)
    times, best = {}, {}
    for name, fused in (("distributed", False), ("fused", True)):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        best[name] = run_pbt(args.population, args.epochs, args.interval, device, fused, args.batch_size)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        times[name] = time.perf_counter() - t0
    where = torch.cuda.get_device_name(device) if device.startswith("cuda") else platform.processor() or "cpu"
    print(
        f"{where}, torch {torch.__version__}, {torch.get_num_threads()} thread(s); digits, MLP 128-128, SGD momentum"
        f" 0.9, lr log-uniform [1e-3, 1], batch {args.batch_size}\n"
    )
    print("| population | epochs / interval | one by one | fused | one by one / fused | best val_acc (each) |")
    print("|---|---|---|---|---|---|")
    print(
        f"| {args.population} | {args.epochs} / {args.interval} | {times['distributed']:.2f} s | {times['fused']:.2f} s"
        f" | {times['distributed'] / times['fused']:.2f} | {best['distributed']:.4f}, {best['fused']:.4f} |"
    )


if __name__ == "__main__":
    main()
