"""Fused population engine: K separate trainer.train runs against one train_population of the same K runs.

Three timings, alternating, after a warm-up of each (medians of the repeats):
  one       a single trainer.train run (member 0): what "~1x the wall time of one" is measured against
  separate  the K runs through trainer.train, one after another
  fused     trainer.population.train_population over the same K configs (one group)

  python bench/fused.py --members 16 --epochs 5 --repeats 3                # CPU, one torch thread
  python bench/fused.py --members 64 --epochs 20 --device cuda --threads 0  # a GPU, torch's threads

Members differ in seed (init, split, data order) and lr (log-spaced, Adam), as a sweep would.
Prints a Markdown table of seconds and ratios.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

import trainer  # noqa: E402


def sweep(members: int, epochs: int, dataset: str, batch_size: int) -> list[trainer.RunConfig]:
    return [
        trainer.RunConfig(
            dataset=trainer.DatasetConfig(dataset),
            model=trainer.ModelConfig("mlp", {"hidden": [128, 128]}),
            optimizer=trainer.OptimizerConfig("adam", 1e-4 * 30 ** (k / max(members - 1, 1))),  # 1e-4 .. 3e-3
            epochs=epochs,
            batch_size=batch_size,
            seed=k,
        )
        for k in range(members)
    ]


def timed(fn: Callable[[], object], device: str) -> float:
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--members", type=int, default=16)
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--dataset", default="digits")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads; 0 leaves torch's default")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)  # as the workers (LRLAB_TORCH_THREADS=1)
    configs = sweep(args.members, args.epochs, args.dataset, args.batch_size)
    device = args.device

    runs: dict[str, Callable[[], object]] = {
        "one": lambda: trainer.train(configs[0], device=device),
        "separate": lambda: [trainer.train(c, device=device) for c in configs],
        "fused": lambda: trainer.train_population(configs, device=device),
    }
    trainer.train_population(configs[:2], device=device)  # warm-up: data cache, kernels, allocator
    for fn in runs.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(args.repeats):
        for name, fn in runs.items():
            times[name].append(timed(fn, device))
    median = {name: statistics.median(ts) for name, ts in times.items()}

    where = torch.cuda.get_device_name(device) if device.startswith("cuda") else platform.processor() or "cpu"
    print(
        f"{where}, torch {torch.__version__}, {torch.get_num_threads()} thread(s); {args.dataset}, MLP 128-128, Adam,"
        f" batch {args.batch_size}, {args.epochs} epochs, K = {args.members}, medians of {args.repeats}\n"
    )
    print("| K | one run | separate (K runs) | fused | separate / fused | fused / one run |")
    print("|---|---|---|---|---|---|")
    print(
        f"| {args.members} | {median['one']:.2f} s | {median['separate']:.2f} s | {median['fused']:.2f} s"
        f" | {median['separate'] / median['fused']:.2f} | {median['fused'] / median['one']:.2f} |"
    )


if __name__ == "__main__":
    main()
