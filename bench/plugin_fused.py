"""A plugin's model fused: K separate trainer.train runs of the example plugin's tiny-transformer against one
train_population of the same K runs (stacked by torch.func.stack_module_state and vmap over functional_call).

Needs the example plugin installed (`pip install -e examples/lrlab-example-plugin`). Members differ in seed
(init, split, data order) and lr (log-spaced, Adam), as a sweep would. separate and fused alternate, medians of
the repeats after a warm-up at each K; the table also gives the largest relative difference between a member's
final val_loss fused and separate (float32 rounding, grown over the epochs; tests/trainer/test_stackable.py
checks float64 equality). `--model sequential` times a layer list on the same data instead (grouped path).

  python bench/plugin_fused.py --members 1,4,8 --epochs 3 --repeats 3              # CPU, one torch thread
  python bench/plugin_fused.py --members 1,8,32 --device cuda --threads 0          # a GPU
"""

from __future__ import annotations

import argparse
import functools
import platform
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

import trainer  # noqa: E402
from bench.fused import max_relative_difference, members_list, run_separate, timed  # noqa: E402

MOTIFS = trainer.DatasetConfig("motifs", params={"n_samples": 2000, "length": 24})
MODELS = {
    "tiny-transformer": (
        trainer.ModelConfig("tiny-transformer", {"width": 32, "heads": 4, "depth": 2}),
        "tiny-transformer width 32, 4 heads, depth 2 (plugin; vmap over functional_call)",
    ),
    "sequential": (
        trainer.ModelConfig(
            "sequential",
            {
                "layers": [
                    {"type": "conv1d", "out_channels": 32, "kernel_size": 3, "padding": 1},
                    "batchnorm",
                    "relu",
                    {"type": "maxpool", "kernel_size": 2},
                    "flatten",
                    "linear",
                ]
            },
        ),
        "sequential conv1d 32-BatchNorm-ReLU-maxpool-linear over (24, 6) (grouped convolutions)",
    ),
}


def sweep(members: int, epochs: int, model: trainer.ModelConfig) -> list[trainer.RunConfig]:
    return [
        trainer.RunConfig(
            dataset=MOTIFS,
            model=model,
            optimizer=trainer.OptimizerConfig("adam", 3e-4 * 10 ** (k / max(members - 1, 1))),  # 3e-4 .. 3e-3
            epochs=epochs,
            batch_size=64,
            seed=k,
        )
        for k in range(members)
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--members", type=members_list, default=[1, 4, 8], help="K, or a list of K: 1,4,8")
    ap.add_argument("--model", choices=sorted(MODELS), default="tiny-transformer")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads; 0 leaves torch's default")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)  # as the workers (LRLAB_TORCH_THREADS=1)
    model, described = MODELS[args.model]
    reason = trainer.why_not_fusable(sweep(2, 1, model), try_stacking=True)
    if reason is not None:
        sys.exit(f"{args.model} does not fuse: {reason}")

    one = sweep(1, args.epochs, model)[0]
    trainer.train_population(sweep(2, 1, model), device=args.device)  # warm-up: data, kernels, allocator
    one_seconds = statistics.median(
        timed(lambda: trainer.train(one, device=args.device), args.device)[0] for _ in range(args.repeats)
    )
    where = torch.cuda.get_device_name(args.device) if args.device.startswith("cuda") else platform.processor() or "cpu"
    print(
        f"{where}, torch {torch.__version__}, {torch.get_num_threads()} thread(s); motifs (2000 x (24, 6), 4 classes),"
        f" {described}, Adam, batch 64, {args.epochs} epochs, medians of {args.repeats}\n"
    )
    print("| K | one run | separate (K runs) | fused | separate / fused | fused / one run | max rel. diff val_loss |")
    print("|---|---|---|---|---|---|---|")
    for k in args.members:
        configs = sweep(k, args.epochs, model)
        trainer.train_population(configs, device=args.device)  # warm-up at this K's shapes
        separate, fused = [], []
        for _ in range(args.repeats):
            seconds, separate_results = timed(functools.partial(run_separate, configs, args.device), args.device)
            separate.append(seconds)
            seconds, fused_results = timed(
                functools.partial(trainer.train_population, configs, device=args.device), args.device
            )
            fused.append(seconds)
        s, f = statistics.median(separate), statistics.median(fused)
        diff = max_relative_difference(fused_results, separate_results)
        print(
            f"| {k} | {one_seconds:.2f} s | {s:.2f} s | {f:.2f} s | {s / f:.2f} | {f / one_seconds:.2f} | {diff:.1e} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
