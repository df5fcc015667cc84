"""Fused population engine: K separate trainer.train runs against one train_population of the same K runs.

Three timings (medians of the repeats, after a warm-up):
  one       a single trainer.train run (member 0, the same for every K), measured once up front: what
            "~1x the wall time of one" is measured against
  separate  the K runs through trainer.train, one after another
  fused     trainer.population.train_population over the same K configs (one group)
separate and fused alternate for each K in --members; the fused run of each K is warmed up first.

  python bench/fused.py --members 16 --epochs 5 --repeats 3                          # CPU, one torch thread
  python bench/fused.py --members 1,4,16,64 --epochs 20 --device cuda --threads 0    # a GPU, torch's threads
  python bench/fused.py --model cnn --members 1,4,16 --epochs 3 --repeats 2          # BatchNorm CNN

--model mlp is an MLP 128-128 (batched matmul, trainer/population/stack.py); --model cnn the cnn model at 32
channels, depth 2 (conv-BatchNorm-ReLU-maxpool twice; grouped convolutions, trainer/population/functional.py).
Members differ in seed (init, split, data order) and lr (log-spaced, Adam), as a sweep would. Prints a
Markdown table, one row per K, of seconds, ratios and the largest relative difference between a member's
final val_loss fused and separate: float32 rounding differences grown over the epochs (seen on the CPU: up to
6e-6 for the MLP over 5 epochs, 2e-4 for the cnn over 3; tests/trainer/test_population.py checks float64).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

import trainer  # noqa: E402

T = TypeVar("T")

MODELS = {
    "mlp": (trainer.ModelConfig("mlp", {"hidden": [128, 128]}), "MLP 128-128"),
    "cnn": (trainer.ModelConfig("cnn", {"channels": 32, "depth": 2}), "CNN 32 channels x 2 (BatchNorm)"),
}


def sweep(
    members: int, epochs: int, dataset: str, batch_size: int, model: trainer.ModelConfig
) -> list[trainer.RunConfig]:
    return [
        trainer.RunConfig(
            dataset=trainer.DatasetConfig(dataset),
            model=model,
            optimizer=trainer.OptimizerConfig("adam", 1e-4 * 30 ** (k / max(members - 1, 1))),  # 1e-4 .. 3e-3
            epochs=epochs,
            batch_size=batch_size,
            seed=k,
        )
        for k in range(members)
    ]


def timed(fn: Callable[[], T], device: str) -> tuple[float, T]:
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    result = fn()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - t0, result


def run_separate(configs: list[trainer.RunConfig], device: str) -> list[trainer.TrainResult]:
    return [trainer.train(c, device=device) for c in configs]


def members_list(text: str) -> list[int]:
    try:
        ks = [int(k) for k in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"Invalid --members: {text!r} (need e.g. 16 or 1,4,16,64)") from None
    if not ks or min(ks) < 1:
        raise argparse.ArgumentTypeError(f"Invalid --members: {text!r} (need positive counts)")
    return ks


def max_relative_difference(fused: list[trainer.TrainResult], separate: list[trainer.TrainResult]) -> float:
    """The largest |fused - separate| / |separate| over the members' final val_loss."""
    worst = 0.0
    for ours, theirs in zip(fused, separate, strict=True):
        a, b = ours.points[-1].val_loss, theirs.points[-1].val_loss
        worst = max(worst, abs(a - b) / max(abs(b), 1e-12))
    return worst


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--members", type=members_list, default=[16], help="K, or a list of K: 1,4,16,64")
    ap.add_argument("--model", choices=sorted(MODELS), default="mlp")
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--dataset", default="digits")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads; 0 leaves torch's default")
    ap.add_argument(
        "--compile",
        choices=["default", "reduce-overhead"],
        help="also time fused with the MLP's stacked forward under torch.compile (reduce-overhead: CUDA graphs)",
    )
    args = ap.parse_args()
    if args.repeats < 1:
        ap.error(f"Invalid --repeats: {args.repeats} (need at least 1)")
    if args.threads:
        torch.set_num_threads(args.threads)  # as the workers (LRLAB_TORCH_THREADS=1)
    device = args.device
    model, model_name = MODELS[args.model]

    def configs_of(k: int) -> list[trainer.RunConfig]:
        return sweep(k, args.epochs, args.dataset, args.batch_size, model)

    # member 0's config does not depend on K: one run is timed once
    one = configs_of(1)[0]
    trainer.train_population(configs_of(2), device=device)  # warm-up: data cache, kernels, allocator
    trainer.train(one, device=device)
    one_seconds = statistics.median(
        timed(lambda: trainer.train(one, device=device), device)[0] for _ in range(args.repeats)
    )

    where = torch.cuda.get_device_name(device) if device.startswith("cuda") else platform.processor() or "cpu"
    print(
        f"{where}, torch {torch.__version__}, {torch.get_num_threads()} thread(s); {args.dataset}, {model_name}, Adam,"
        f" batch {args.batch_size}, {args.epochs} epochs, medians of {args.repeats}\n"
    )
    extra = f" fused, compiled forward ({args.compile}) |" if args.compile else ""
    print(
        "| K | one run | separate (K runs) | fused | separate / fused | fused / one run | max rel. diff val_loss |"
        + extra
    )
    print("|---|---|---|---|---|---|---|" + ("---|" if args.compile else ""))
    for k in args.members:
        configs = configs_of(k)
        trainer.train_population(configs, device=device)  # warm-up at this K's shapes
        separate: list[float] = []
        fused: list[float] = []
        for _ in range(args.repeats):
            seconds, separate_results = timed(functools.partial(run_separate, configs, device), device)
            separate.append(seconds)
            seconds, fused_results = timed(functools.partial(trainer.train_population, configs, device=device), device)
            fused.append(seconds)
        s, f = statistics.median(separate), statistics.median(fused)
        diff = max_relative_difference(fused_results, separate_results)
        compiled = ""
        if args.compile:
            with compiled_forward(args.compile):
                trainer.train_population(configs, device=device)  # compiles (and records graphs) at these shapes
                runs = [timed(functools.partial(trainer.train_population, configs, device=device), device)[0]]
                runs += [timed(functools.partial(trainer.train_population, configs, device=device), device)[0]]
            compiled = f" {statistics.median(runs):.2f} s |"
        print(
            f"| {k} | {one_seconds:.2f} s | {s:.2f} s | {f:.2f} s | {s / f:.2f} | {f / one_seconds:.2f} | {diff:.1e} |"
            + compiled,
            flush=True,
        )


@contextlib.contextmanager
def compiled_forward(mode: str) -> Iterator[None]:
    """The MLP stack's forward under torch.compile for the duration (a trial of CUDA graphs / fusion)."""
    from trainer.population.stack import StackedParameters

    plain = StackedParameters.forward
    StackedParameters.forward = torch.compile(plain, mode=mode)  # type: ignore[method-assign]
    try:
        yield
    finally:
        StackedParameters.forward = plain  # type: ignore[method-assign]


if __name__ == "__main__":
    main()
