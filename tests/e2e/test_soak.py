"""The SIGKILL soak (bench/kill_soak.py) as a test: only with `pytest -m slow` (minutes of CPU)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[2]


def test_sigkilled_training_resumes_to_the_uninterrupted_weights(tmp_path):
    out = tmp_path / "soak.json"
    r = subprocess.run([sys.executable, str(ROOT / "bench/kill_soak.py"), "--kills", "5", "--seed", "1",
                        "--out", str(out)], capture_output=True, text=True, timeout=1800)  # fmt: skip
    result = json.loads(out.read_text())
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert result["kills"] == 5 and result["identical_to_uninterrupted"] and result["mlflow_runs"] == 1
    assert result["temp_files_left"] == []
