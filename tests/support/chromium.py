"""Headless Chromium (Debian's `chromium`) for the browser checks of the DVC plots page and
the MLflow run page, and a command runner that leaves nothing behind."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

# Headless, offline (every host name fails to resolve) and with a profile of its own.
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--host-resolver-rules=MAP * ~NOTFOUND",
    "--virtual-time-budget=30000",
    "--window-size=1100,2600",
]


def run_in_group(cmd: list[str], cwd: Path, env: dict, timeout: float = 180) -> str:
    """Run a command in its own process group, killed with everything it started."""
    proc = subprocess.Popen(
        cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{out}\n{err}"
    return out


def chromium(flags: list[str], env: dict, tmp: Path, *args: str) -> str:
    """Chromium's stdout for `args`, with a fresh profile under `tmp` each call."""
    profile = tmp / f"profile-{len(list(tmp.glob('profile-*')))}"
    return run_in_group(["chromium", *flags, f"--user-data-dir={profile}", *args], tmp, env, timeout=120)


# For a page of a server on 127.0.0.1 (the MLflow and Prefect UIs): every other host name still
# fails to resolve, and the JS app gets (virtual) time to ask its API and render.
LOCAL_FLAGS = [f for f in CHROMIUM_FLAGS if not f.startswith(("--host-resolver-rules", "--virtual-time-budget"))] + [
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
    "--virtual-time-budget=20000",
]


def screenshot(url: str, png: Path, env: dict, tmp: Path, size: str = "1400,900") -> Path:
    """A PNG of the page at `url` in a `size` window (width,height), for docs/screenshots/."""
    flags = [f for f in LOCAL_FLAGS if not f.startswith("--window-size")] + [f"--window-size={size}"]
    png.parent.mkdir(parents=True, exist_ok=True)
    chromium([*flags, "--hide-scrollbars"], env, tmp, f"--screenshot={png}", url)
    return png
