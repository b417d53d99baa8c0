"""benchmarks/process_census.py: every process a command starts and the CPU of each kind,
found by descent or by the marker in its environment (a process whose parent is not the
command's), counted from real processes that burn CPU; a process outside the command is not."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import pytest

from tests.support.projects import ROOT

TREE = """
import json, os, subprocess, sys, time
from pathlib import Path

def burn(seconds):
    end = time.process_time() + seconds
    while time.process_time() < end:
        pass

role, tmp = sys.argv[1], Path(sys.argv[2])
if role == "root":
    subprocess.run([sys.executable, __file__, "waited", tmp], check=True)
    subprocess.run([sys.executable, __file__, "bare", tmp], env={}, check=True)  # without the marker
    child = os.fork()
    if child == 0:
        burn(0.4)
        os._exit(0)
    os.waitpid(child, 0)
    # A process with the command's environment whose parent is not the command's, as a
    # server started through another server is: the outsider starts it with this environment.
    (tmp / "env.json").write_text(json.dumps(dict(os.environ)))
    while not (tmp / "done").exists():
        time.sleep(0.02)
    sys.exit(3)
elif role == "outsider":
    while not (tmp / "env.json").exists():
        time.sleep(0.02)
    burn(0.4)
    subprocess.run([sys.executable, __file__, "stranger", tmp], env=json.loads((tmp / "env.json").read_text()))
elif role == "stranger":
    burn(0.4)
    (tmp / "done").touch()
    time.sleep(0.3)  # read once more after its work, before it ends
else:
    burn(0.4)
"""


@pytest.fixture
def census():
    spec = importlib.util.spec_from_file_location("process_census", ROOT / "benchmarks/process_census.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_commands_processes_are_counted_by_kind_and_an_outsider_is_not(census, tmp_path, capsys, monkeypatch):
    tree = tmp_path / "tree.py"
    tree.write_text(TREE)
    monkeypatch.setattr(
        census,
        "KINDS",
        [
            (r"tree\.py waited", "waited"),
            (r"tree\.py bare", "bare"),
            (r"tree\.py stranger", "stranger"),
            (r"tree\.py root", "root"),
        ]
        + [(r"tree\.py outsider", "outsider")],
    )
    outsider = subprocess.Popen([sys.executable, str(tree), "outsider", str(tmp_path)])
    try:
        command = [sys.executable, str(tree), "root", str(tmp_path)]
        rc = census.main(["--every", "0.05", "--json", str(tmp_path / "seen.json"), "--", *command])
    finally:  # its part is over once the command is; after a failed command it would wait forever
        outsider.kill()
        outsider.wait()
    assert rc == 3, "the census exits with its command's status"
    out = capsys.readouterr().out
    rows = {
        cells[0]: (int(cells[1]), float(cells[2]))
        for line in out.splitlines()
        if line.startswith("| ") and not line.startswith("| processes")
        for cells in [[c.strip() for c in line.strip("|").split("|")]]
    }
    assert set(rows) == {"the command itself", "waited", "bare", "stranger", "root: forked"}, out
    assert rows["the command itself"][0] == 1
    for kind in rows.keys() - {"the command itself"}:
        count, cpu = rows[kind]
        assert count == 1 and 0.3 <= cpu < 2, (kind, out)
    reaped = float(out.split("the command's own count of what it reaped: ")[1].split()[0])
    assert 1.2 <= reaped < 5, "the root reaped its two children and its fork, not the stranger"
    saved = json.loads((tmp_path / "seen.json").read_text())
    assert sorted(p["cmdline"].split()[-2] for p in saved["processes"]) == [
        "bare",
        "root",
        "root",
        "stranger",
        "waited",
    ]
    assert census.main(["--table-of", str(tmp_path / "seen.json")]) == 0
    assert capsys.readouterr().out.strip() == out.strip(), "the saved census tallies to the same table"


def test_a_fork_is_its_parents_kind_forked_and_the_first_rule_wins(census):
    kinds = [(r"warm --serve", "warm server"), (r"warm", "warm client"), (r"python", "Python")]
    assert census.kind_of("python -m warm --serve s.sock", "python -m warm --socket s.sock", kinds) == "warm server"
    assert census.kind_of("python -m warm --serve s.sock", "python -m warm --serve s.sock", kinds) == (
        "warm server: forked"
    )
    assert census.kind_of("python x.py", None, kinds) == "Python"
    assert census.kind_of("ls", None, kinds) == "other"
    assert census.kind_of("", None, kinds) == "gone before its first reading"


def test_a_census_without_a_command_says_how_to_give_one(census, capsys):
    with pytest.raises(SystemExit) as exit_:
        census.main([])
    assert exit_.value.code == 2
    assert "no command to run: give it after --" in capsys.readouterr().err
