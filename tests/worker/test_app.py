"""Workers warm up when they start: a first task imports nothing more (torch, its modules, digits, the engine)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# In a fresh interpreter: a pool process after worker_process_init, then what a first fused pack and a first
# separate run would train (two optimizer groups, one of two members), recording the modules they import.
PROBE = """
import json, sys
import worker.app
before = "torch" in sys.modules
worker.app._warm_pool_process()
import trainer
from trainer.population import train_population
warm = set(sys.modules)
configs = [
    trainer.RunConfig.from_spec({"dataset": "digits", "epochs": 1, "seed": 0, "optimizer": {"name": name}})
    for name in ("adam", "sgd", "adam")
]
train_population(configs, device="cpu")
trainer.train(configs[1], device="cpu")
print(json.dumps({"before": before, "warm": sorted(warm), "new": sorted(set(sys.modules) - warm)}))
"""


def test_first_task_after_warm_up_imports_nothing(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LRLAB_")}
    env["LRLAB_DATA_DIR"] = str(tmp_path)
    out = subprocess.run(
        [sys.executable, "-c", PROBE], cwd=ROOT, env=env, capture_output=True, text=True, timeout=180, check=True
    )
    probe = json.loads(out.stdout.strip().splitlines()[-1])
    assert probe["before"] is False  # importing the app (as the prefork parent does) does not import torch
    assert {"torch", "sklearn", "worker.run", "worker.pack", "worker.steps"} <= set(probe["warm"])
    assert probe["new"] == []  # no import (scikit-learn's, the memory estimate's torch._dynamo) in a first task
