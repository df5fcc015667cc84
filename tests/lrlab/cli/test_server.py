"""The server's commands: a worker told to serve the gpu queue where torch sees no CUDA device refuses to start."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT


def test_worker_refuses_the_gpu_queue_without_cuda(tmp_path: os.PathLike[str]) -> None:
    import torch  # here, not at collection: a pytest run that does not select this test pays nothing for it

    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA device: the gpu queue is the worker's to take")
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
