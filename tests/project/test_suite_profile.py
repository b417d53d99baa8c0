"""benchmarks/test_suite_profile.py: where `make test`'s CPU went, per module, and the counted
CPU in units of a fixed probe run on the same machine (machines here differ ~2x in speed)."""

from __future__ import annotations

import importlib.util
import json

from tests.support.projects import ROOT


def _profile():
    spec = importlib.util.spec_from_file_location("test_suite_profile", ROOT / "benchmarks/test_suite_profile.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_modules_are_summed_and_the_cpu_is_counted_in_probes(tmp_path, capsys, monkeypatch):
    profile = _profile()
    rows = {
        "gw0": [("tests/a.py::t1", 10.0, 1.0, 5.0), ("tests/a.py::t2", 2.0, 0.5, 0.5)],
        "gw1": [("tests/b.py::t", 4.0, 3.0, 0.0)],
    }
    for worker, tests in rows.items():
        lines = [
            json.dumps({"nodeid": n, "module": n.split("::")[0], "wall": w, "cpu_self": s, "cpu_children": c})
            for n, w, s, c in tests
        ]
        (tmp_path / f"{worker}.jsonl").write_text("\n".join(lines) + "\n")
    monkeypatch.setattr(profile, "speed_probe", lambda: 0.5)
    assert profile.main([str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "| tests/a.py | gw0 | 2 | 12 | 7.0 | 5.5 | 70.0% |" in out
    assert "| tests/b.py | gw1 | 1 | 4 | 3.0 | 0.0 | 30.0% |" in out
    assert "counted: 10 CPU-s over 3 tests; workers busy gw0 12 s, gw1 4 s" in out
    assert "machine probe: 0.50 CPU-s" in out and "counted CPU = 20 probes" in out
    assert profile.main([str(tmp_path), "--no-probe"]) == 0
    assert "machine probe" not in capsys.readouterr().out


def test_the_probe_is_the_median_of_its_runs_in_cpu_seconds():
    probe = _profile().speed_probe(n=200_000, runs=3)
    assert 0 < probe < 5
