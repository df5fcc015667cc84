"""The Python client without its optional pandas: the DataFrame methods say which extra brings it."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import ROOT


def test_frames_without_pandas_name_the_extra() -> None:
    code = """
import sys
sys.modules["pandas"] = None  # as if not installed
from lrlab.client import Client
lab = Client("http://127.0.0.1:9")
for call in (lambda: lab.curves_frame("r"), lambda: lab.compare_frame(runs=["r"])):
    try:
        call()
    except ImportError as exc:
        print(exc)
"""
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == [
        "Client.curves_frame needs pandas: pip install 'lrlab[frames]'",
        "Client.compare_frame needs pandas: pip install 'lrlab[frames]'",
    ]
