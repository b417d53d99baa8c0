"""Every process a command starts, and the CPU each kind of process spent: servers and the
warm server's forked runs included, which `test_suite_profile.py` (what each pytest worker
reaped) misses where a parent is killed before it waits for its children.

    .venv/bin/python benchmarks/process_census.py -- make test
    .venv/bin/python benchmarks/process_census.py --json outputs/census.json -- make run
    .venv/bin/python benchmarks/process_census.py --table-of outputs/census.json   # again, after KINDS changed

The command runs with a marker in its environment; every `--every` seconds the census reads
/proc and keeps each process that carries the marker or descends from the command (a server
started by a server outside the command keeps the environment the command gave it), its
latest command line and CPU (user + system). A process is counted up to its last
reading: one that lives less than `--every`, or its CPU after the last reading, can be missed,
so the table ends with the command's own count of what it reaped (a lower bound of another
kind) beside the sum. Linux only; the sampling costs ~1% of a core.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import resource
import subprocess
import threading
import uuid
from pathlib import Path

import psutil

MARKER = "STEPJEPA_CENSUS"

# What `make test` and `make run` start, first match wins. The pytest-xdist workers are
# execnet's `-c import sys;exec(...)`; the tests' one-process MLflow server is a `-c` script.
KINDS: list[tuple[str, str]] = [
    (r"exec\(eval\(sys\.stdin\.readline\(\)\)\)", "pytest-xdist worker"),
    (r"(^|/)pytest ", "pytest"),  # not `pytest-of-root` in a test's temporary paths
    (r"import mlflow\.server", "MLflow server"),  # tests/support/servers.py's one-process server
    (r"stepjepa\.training\.warm --serve", "warm training server"),
    (r"accelerate", "accelerate launch"),  # its command line names the training module too
    (r"stepjepa\.training\.train|stepjepa(\.cli)? train\b", "cold training process"),
    (r"pipelines\.sweep --reconcile", "sweep flow: --reconcile"),
    (r"pipelines\.sweep --serve", "sweep flow: served deployment"),
    (r"pipelines\.sweep", "sweep flow"),
    (r"pipelines\.\w+", "data stage"),
    (r"prefect\.runner", "Prefect flow-run supervisor"),
    (r"prefect\.engine", "Prefect flow-run process"),
    (r"uvicorn .*prefect\.server", "Prefect temporary server"),
    (r"prefect server start", "`prefect server start`"),
    (r"bin/prefect ", "`prefect` CLI"),
    (r"mlflow\.server|mlflow server|uvicorn .*mlflow", "MLflow server"),
    (r"bin/dvc ", "DVC"),
    (r"stepjepa", "`stepjepa` command or script"),
    (r"psutil", "test watchdog"),
    (r"multiprocessing\.spawn", "multiprocessing child"),
    (r"pip install|_in_process\.py|get_requires_for_build", "install (pip)"),
    (r"chrom", "Chromium"),
    (r"^git |/git ", "git"),
    (r"python\S* ", "other Python"),
]


class Seen:
    """One process: its latest command line (a zombie has none), its parent at first sight, its CPU seconds."""

    def __init__(self, cmdline: str, ppid: int, cpu: float):
        self.cmdline, self.ppid, self.cpu = cmdline, ppid, cpu


def _stat(pid: int) -> tuple[int, float, float] | None:
    """(parent pid, CPU seconds, start time) of a live or zombie process; None once it is gone."""
    try:
        process = psutil.Process(pid)
        with process.oneshot():
            times = process.cpu_times()
            return process.ppid(), times.user + times.system, process.create_time()
    except psutil.Error:
        return None


def _cmdline(pid: int) -> str:
    try:
        return " ".join(psutil.Process(pid).cmdline())
    except psutil.Error:  # a zombie has none
        return ""


def _marked(pid: int, token: str) -> bool:
    try:
        return psutil.Process(pid).environ().get(MARKER) == token
    except psutil.Error:
        return False


class Census:
    """Samples /proc until stopped: the processes of one command, by (pid, start time)."""

    def __init__(self, root: int, token: str, every: float):
        self.root, self.token, self.every = root, token, every
        self.seen: dict[tuple[int, float], Seen] = {}
        self.ours: set[int] = {root}  # pids seen to be the command's, to find their children
        self.others: set[int] = set()  # live pids that are not: read once, not every time
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> Census:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _loop(self) -> None:
        while True:
            self.sample()
            if self._stop.wait(self.every):
                self.sample()
                return

    def sample(self) -> None:
        pids = set(psutil.pids())
        self.others &= pids  # a process found not ours stays not ours while it lives
        for pid in sorted(pids - self.others):  # parents before their children
            stat = _stat(pid)
            if stat is None:
                continue
            ppid, cpu, started = stat
            key = (pid, started)
            if key in self.seen:  # its latest command line too: a fork may exec another command
                self.seen[key].cpu, self.seen[key].cmdline = cpu, _cmdline(pid) or self.seen[key].cmdline
            elif pid == self.root or ppid in self.ours or _marked(pid, self.token):
                self.ours.add(pid)
                self.seen[key] = Seen(_cmdline(pid), ppid, cpu)
            else:
                self.others.add(pid)


def kind_of(cmdline: str, parent: str | None, kinds: list[tuple[str, str]]) -> str:
    """A process's kind by its command line; a fork (its parent's command line) is
    'PARENT'S KIND: forked', as the warm server's runs are."""
    if not cmdline:
        return "gone before its first reading"
    own = next((name for pattern, name in kinds if re.search(pattern, cmdline)), "other")
    return f"{own}: forked" if parent == cmdline else own


def tally(seen: dict[tuple[int, float], Seen], root: int, kinds: list[tuple[str, str]]) -> list[dict]:
    """Processes and CPU per kind, the costliest first; the command itself is a kind of its own."""
    by_pid = {pid: s for (pid, _), s in seen.items()}
    rows: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for (pid, _), s in seen.items():
        parent = by_pid.get(s.ppid)
        kind = "the command itself" if pid == root else kind_of(s.cmdline, parent.cmdline if parent else None, kinds)
        rows[kind]["processes"] += 1
        rows[kind]["cpu"] += s.cpu
    return sorted(({"kind": k, **v} for k, v in rows.items()), key=lambda r: -r["cpu"])


def table(rows: list[dict], reaped: float, wall: float) -> str:
    total = sum(r["cpu"] for r in rows)
    lines = ["| processes | count | CPU-s | CPU-s each | share |", "|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['kind']} | {r['processes']} | {r['cpu']:.1f} | {r['cpu'] / r['processes']:.2f} "
            f"| {r['cpu'] / total:.1%} |"
        )
    lines.append(
        f"\nseen: {total:.1f} CPU-s in {sum(r['processes'] for r in rows)} processes over {wall:.0f} s; "
        f"the command's own count of what it reaped: {reaped:.1f} CPU-s"
    )
    return "\n".join(lines)


def _write(path: Path, census: Census, reaped: float, wall: float) -> None:
    processes = [
        {"pid": pid, "started": started, "ppid": s.ppid, "cpu": s.cpu, "cmdline": s.cmdline}
        for (pid, started), s in census.seen.items()
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"root": census.root, "reaped": reaped, "wall": wall, "processes": processes}, indent=1))


def _read(path: Path) -> tuple[dict[tuple[int, float], Seen], int, float, float]:
    saved = json.loads(path.read_text())
    seen = {(p["pid"], p["started"]): Seen(p["cmdline"], p["ppid"], p["cpu"]) for p in saved["processes"]}
    return seen, saved["root"], saved["reaped"], saved["wall"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--every", type=float, default=0.2, help="seconds between readings of /proc")
    parser.add_argument("--json", type=Path, help="also write every process seen: command line, parent, CPU")
    parser.add_argument("--table-of", type=Path, metavar="JSON", help="the table of a census --json wrote, again")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="the command, after --")
    args = parser.parse_args(argv)
    if args.table_of:
        seen, root, reaped, wall = _read(args.table_of)
        print(table(tally(seen, root, KINDS), reaped, wall))
        return 0
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command to run: give it after --, e.g. `-- make test`")
    if not Path("/proc/self/stat").exists():
        parser.error("reads /proc: Linux only")
    token, start = uuid.uuid4().hex, os.times().elapsed
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.Popen(command, env=os.environ | {MARKER: token})
    with Census(proc.pid, token, args.every) as census:
        try:
            rc = proc.wait()
        except KeyboardInterrupt:  # the terminal sent it to the command too; let it end
            rc = proc.wait()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    reaped, wall = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime), os.times().elapsed - start
    print(table(tally(census.seen, proc.pid, KINDS), reaped, wall))
    if args.json:
        _write(args.json, census, reaped, wall)
    return rc


if __name__ == "__main__":
    raise SystemExit(main())
