"""The server's commands: a worker told to serve the gpu queue where torch sees no CUDA device refuses to start."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT


@pytest.mark.skipif(
    subprocess.run([sys.executable, "-c", "import torch,sys; sys.exit(torch.cuda.is_available())"]).returncode,
    reason="this machine has a CUDA device: the gpu queue is the worker's to take",
)
def test_worker_refuses_the_gpu_queue_without_cuda(tmp_path: os.PathLike[str]) -> None:
    env = {**os.environ, "LRLAB_DATA_DIR": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "-m", "lrlab.cli", "worker", "--queues", "gpu,cpu"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert "no CUDA device" in done.stderr and "--queues cpu" in done.stderr
    assert "celery@" not in done.stdout + done.stderr  # refused before Celery started
