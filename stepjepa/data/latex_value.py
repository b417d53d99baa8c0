"""Exact value of a LaTeX answer (`\\frac{1}{2}`, `\\sqrt{16}`, `x = 5`) via math-verify, in
bounded time.

A half-trained model writes anything, and sympy evaluates some of it for ever:
`10^{10^{10}}` is one big-integer power in C, which neither math-verify's
`signal.alarm` timeout nor any thread can interrupt (and the alarm works only on the
main thread). So the parse runs in a worker process that is killed when a completion's
budget runs out; the caller then scores that box as "no answer". Cheap checks reject
the obviously absurd (power towers, huge exponents or factorials, over-long text)
before the worker sees them, so a kill, and the worker restart after it, stays rare.

The worker is one `python -m stepjepa.data.latex_value` per scoring process, started on the
first LaTeX box and shared by all threads; it exits when its stdin closes (the scorer
exited) or its parent dies.
"""

from __future__ import annotations

import atexit
import json
import re
import select
import subprocess
import sys
import threading
import time
from fractions import Fraction

MAX_DIGITS = 100
"""A value whose numerator or denominator has more digits is absurd for GSM8K: no answer."""
MAX_LATEX_CHARS = 500
_START_TIMEOUT_S = 120.0  # importing sympy on a loaded machine; not charged to a completion

# `^` followed by a group or a token holding another `^` (a tower), or an exponent of 4+
# digits; a factorial of 4+ digits. Each is astronomically large or needs seconds.
_ABSURD_RE = re.compile(r"\^\s*\{[^{}]*\^|\^\s*\{?\s*-?\d{4}|\d{4,}\s*!")


def absurd(latex: str) -> bool:
    """True for text no GSM8K answer looks like and sympy could spend minutes on."""
    return (
        len(latex) > MAX_LATEX_CHARS
        or _ABSURD_RE.search(latex) is not None
        or re.search(rf"\d{{{MAX_DIGITS + 1}}}", latex) is not None
    )


def bounded(value: Fraction) -> Fraction | None:
    """`value` unless its numerator or denominator is absurdly long."""
    limit = 10**MAX_DIGITS
    return value if abs(value.numerator) < limit and value.denominator < limit else None


class _Absurd(Exception):
    """A value with more than `MAX_DIGITS` digits (raised in the worker)."""


class _Worker:
    """One worker process answering `{"latex": ...}` lines with `{"value": "p/q" | null}`,
    or `{"absurd": true}`."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.proc: subprocess.Popen | None = None
        self.ready = False
        self.start_wait_s = 0.0
        """Seconds callers waited for a worker to start (once per process, and after each kill)."""

    def _spawn(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "stepjepa.data.latex_value"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            bufsize=1,
        )
        self.ready = False

    def _wait_ready(self) -> None:
        started = time.monotonic()
        line = self._read_line(self.proc, _START_TIMEOUT_S)
        self.start_wait_s += time.monotonic() - started
        if line != "ready":
            self._kill(self.proc)
            self.proc = None
            raise RuntimeError("the LaTeX worker (python -m stepjepa.data.latex_value) did not start")
        self.ready = True

    @staticmethod
    def _read_line(proc: subprocess.Popen, timeout_s: float) -> str | None:
        ready, _, _ = select.select([proc.stdout], [], [], max(timeout_s, 0.0))
        return proc.stdout.readline().strip() if ready else None

    @staticmethod
    def _kill(proc: subprocess.Popen) -> None:
        proc.kill()
        proc.wait()

    def value(self, latex: str, timeout_s: float) -> tuple[Fraction | None, bool]:
        """(value or None, gave up?) of one LaTeX text: out of time, or absurd."""
        with self.lock:
            if self.proc is None or self.proc.poll() is not None:
                self._spawn()
            if not self.ready:
                self._wait_ready()
            self.proc.stdin.write(json.dumps({"latex": latex}) + "\n")
            self.proc.stdin.flush()
            line = self._read_line(self.proc, timeout_s)
            if not line:  # out of time (or the worker died): kill it; a fresh one, started now, serves the next box
                self._kill(self.proc)
                self._spawn()
                return None, True
        found = json.loads(line)
        if found.get("absurd"):
            return None, True
        return (Fraction(found["value"]) if found["value"] is not None else None), False

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.stdin.close()
            self._kill(self.proc)


_WORKER = _Worker()
atexit.register(_WORKER.close)
_CACHE: dict[str, Fraction | None] = {}


def latex_value(latex: str, timeout_s: float) -> tuple[Fraction | None, bool]:
    """(exact value or None, gave up?) of a LaTeX expression within `timeout_s` seconds.

    "Gave up" means absurd or out of time: the scorer counts these completions.
    """
    if absurd(latex):
        return None, True
    if latex in _CACHE:  # completions repeat (a model that always writes \frac{1}{2})
        return _CACHE[latex], False
    value, gave_up = _WORKER.value(latex, timeout_s)
    if not gave_up:
        _CACHE[latex] = value
    return value, gave_up


# ---- the worker side -------------------------------------------------------------


def _parse(latex: str) -> Fraction | None:
    from math_verify import LatexExtractionConfig, parse

    # No math-verify timeout: its signal.alarm cannot stop C code; the parent's kill can.
    results = parse(f"${latex}$", extraction_config=[LatexExtractionConfig()], parsing_timeout=None)
    return _sympy_value(results[0]) if results else None


def _sympy_value(expr: object) -> Fraction | None:
    """A real sympy number as an exact fraction (floats through their decimal text)."""
    import sympy

    if isinstance(expr, sympy.Equality):  # "x = 5" answers 5
        expr = expr.rhs
    if not isinstance(expr, sympy.Basic) or not expr.is_number:
        return None
    value = expr.doit()
    if value.is_Rational:
        fraction = bounded(Fraction(int(value.p), int(value.q)))
    elif value.is_real and value.is_finite:
        fraction = bounded(Fraction(str(sympy.N(value, 20))))
    else:
        return None
    if fraction is None:
        raise _Absurd
    return fraction


def _die_with_parent() -> None:
    """Linux: the kernel kills this worker when its parent dies, even mid-computation."""
    import ctypes
    import signal

    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass  # elsewhere, stdin closing at the parent's exit ends the loop below


def _serve() -> None:
    import os

    _die_with_parent()
    _parse("1")  # import sympy and math-verify before saying ready
    parent = os.getppid()
    print("ready", flush=True)
    for line in sys.stdin:
        if os.getppid() != parent:
            break
        try:
            value = _parse(json.loads(line)["latex"])
        except _Absurd:
            print(json.dumps({"absurd": True}), flush=True)
            continue
        except Exception:  # noqa: BLE001 - any failure to read a box is "no value"
            value = None
        print(json.dumps({"value": None if value is None else str(value)}), flush=True)


if __name__ == "__main__":
    _serve()
