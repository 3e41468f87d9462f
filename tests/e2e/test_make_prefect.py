"""`make prefect-server PREFECT_PORT=...`: the UI must call the API on that port, not on 4200."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import urllib.request
from pathlib import Path

import pytest

from tests.e2e.servers import start_server

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]


def test_prefect_ui_points_at_the_chosen_port(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}  # nothing inherited
    env |= {"PREFECT_HOME": str(tmp_path / "prefect"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    procs = []

    def launch(port: int) -> subprocess.Popen:
        # -o: never reinstall from here, whatever the stamp's age (the suite runs after `make install`)
        p = subprocess.Popen(["make", "-s", "-o", ".venv/.installed", "prefect-server", f"PREFECT_PORT={port}"],
                             cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
                             start_new_session=True)  # fmt: skip
        procs.append(p)
        return p

    try:
        _, port = start_server(launch, "/api/health")
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/ui-settings", timeout=10) as r:
            settings = json.load(r)
        assert settings["api_url"] == f"http://127.0.0.1:{port}/api"
    finally:
        for p in procs:  # make and the prefect server under it: the whole session
            try:
                os.killpg(p.pid, signal.SIGTERM)
                p.wait(timeout=30)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                os.killpg(p.pid, signal.SIGKILL)
