"""Prefect's temporary server for a sweep, started so that a terminal's Ctrl-C spares it.

Without `PREFECT_API_URL`, Prefect starts a temporary server as a child of the sweep, in
the sweep's process group. Ctrl-C signals that whole group: the server died with the sweep
before the sweep could record its flow run's end, which then stayed "Running" for good (and
the sweep spent minutes retrying the dead API on its way out). Started here first, in its
own session, the server outlives the signal long enough; Prefect's exit handler stops it
as before, and the sweep's watchdog (`launch.watch_descendants`) stops it after a kill -9.
"""

import subprocess
from functools import partial
from unittest import mock

from prefect.settings import PREFECT_API_URL


def start_temporary_server() -> None:
    """Start Prefect's temporary server in its own session, unless a server is configured."""
    if PREFECT_API_URL.value():
        return
    from prefect.server.api.server import SubprocessASGIServer

    # Every Prefect client uses this one instance, which starts its process with a plain
    # Popen; nothing else starts a process while it does.
    with mock.patch.object(subprocess, "Popen", partial(subprocess.Popen, start_new_session=True)):
        SubprocessASGIServer().start()
