"""One training step's forward + backward for K stacked members: the fused engine's stack against the alternatives.

  python bench/stacked_forward.py --model cnn --members 4,16 --repeats 7                  # CPU, one thread
  python bench/stacked_forward.py --model cnn --members 4,16,64 --device cuda --threads 0  # a GPU

Columns (milliseconds per step, medians of --repeats x --steps steps, after a warm-up):
  stack  what trainer.population.functional.stack_models picks: grouped convolutions for cnn and resnet
         (FunctionalStack), batched matmul for mlp (StackedParameters)
  vmap   torch.func.vmap(functional_call) over the same stacked tensors (FunctionalStack(grouped=False))
  loop   the K models one after another, as K separate runs would step
Each step is a cross-entropy forward in training mode (BatchNorm updating its statistics) and the gradient.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import Tensor, nn  # noqa: E402

from trainer.config import ModelConfig  # noqa: E402
from trainer.models import build_model  # noqa: E402
from trainer.population.functional import FunctionalStack, stack_models  # noqa: E402
from trainer.population.stack import StackedParameters  # noqa: E402

MODELS = {
    "mlp": ModelConfig("mlp", {"hidden": [128, 128]}),
    "cnn": ModelConfig("cnn", {"channels": 32, "depth": 2}),
    "resnet": ModelConfig("resnet", {"width": 16, "blocks": 2}),
}


def stacked_step(stack: StackedParameters | FunctionalStack, x: Tensor, y: Tensor) -> Callable[[], object]:
    k, b = y.shape

    def step() -> Tensor:
        logits = stack.forward(x)  # (K, B, C)
        loss = F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="none").view(k, b).mean(1).sum()
        return stack.grad(loss)

    return step


def loop_step(models: list[nn.Module], x: Tensor, y: Tensor) -> Callable[[], object]:
    def step() -> list[tuple[Tensor, ...]]:
        return [torch.autograd.grad(F.cross_entropy(m(x[k]), y[k]), list(m.parameters())) for k, m in enumerate(models)]

    return step


def median_ms(step: Callable[[], object], device: torch.device, repeats: int, steps: int) -> float:
    for _ in range(3):
        step()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        for _ in range(steps):
            step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append((time.perf_counter() - t0) / steps * 1e3)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", choices=sorted(MODELS), default="cnn")
    ap.add_argument("--members", default="4,16", help="a list of K: 4,16,64")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads; 0 leaves torch's default")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(
        f"{where}, torch {torch.__version__}, {torch.get_num_threads()} thread(s); {args.model} on (1, 8, 8) inputs,"
        f" batch {args.batch_size}; ms per forward + backward, medians of {args.repeats} x {args.steps} steps\n"
    )
    print("| K | stack | vmap | loop |")
    print("|---|---|---|---|")
    for k in [int(v) for v in args.members.split(",")]:
        torch.manual_seed(k)
        models = [build_model(MODELS[args.model], (1, 8, 8), 10).to(device) for _ in range(k)]
        x = torch.randn(k, args.batch_size, 1, 8, 8, device=device)  # (K, B, 1, 8, 8)
        y = torch.randint(0, 10, (k, args.batch_size), device=device)  # (K, B)
        timings = [
            median_ms(stacked_step(stack, x, y), device, args.repeats, args.steps)
            for stack in (stack_models(models, device), FunctionalStack(models, device, grouped=False))
        ]
        timings.append(median_ms(loop_step(models, x, y), device, args.repeats, args.steps))
        print(f"| {k} | " + " | ".join(f"{t:.2f}" for t in timings) + " |", flush=True)


if __name__ == "__main__":
    main()
