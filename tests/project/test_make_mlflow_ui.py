"""`make mlflow-ui` and the tracking server of docs/sweeps.md do not collide (issue 32: both
wanted port 5000, so `make mlflow-ui` failed while the README's server ran)."""

from __future__ import annotations

import os
import re
import subprocess

from tests.support.projects import ROOT

# The Makefile's recipe alone: `-o` keeps make from (re)installing the virtual environment.
MAKE = ["make", "-s", "-o", "install", "-o", ".venv/.installed-stamp", "mlflow-ui"]


def test_mlflow_ui_leaves_the_tracking_servers_port_alone():
    server = re.search(r"mlflow server --host 127\.0\.0\.1 --port (\d+)", (ROOT / "docs/sweeps.md").read_text())
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "MLFLOW_UI_PORT")}
    dry = subprocess.run([*MAKE, "-n"], cwd=ROOT, env=env, capture_output=True, text=True, check=True).stdout
    ui = re.search(r"mlflow ui --backend-store-uri sqlite:///\S+ --host 127\.0\.0\.1 --port (\d+)", dry)
    assert server and ui and ui.group(1) != server.group(1), dry


def test_with_a_tracking_server_in_use_it_is_the_ui_and_nothing_starts():
    url = "http://127.0.0.1:5000"
    env = os.environ | {"MLFLOW_TRACKING_URI": url}
    out = subprocess.run(MAKE, cwd=ROOT, env=env, capture_output=True, text=True, timeout=30)
    assert out.returncode == 0 and f"MLflow UI: {url}" in out.stdout, out.stdout + out.stderr
