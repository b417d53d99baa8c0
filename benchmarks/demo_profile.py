"""How much of a `make demo` (or `make study`) went to compute, read from its console output.

    make demo 2>&1 | tee demo.log;  .venv/bin/python benchmarks/demo_profile.py demo.log --total SECONDS

The sweep forwards each run's progress lines (`<run> step 10/360 ...`, `<run> evaluate validation
100/500 ...`) with a timestamp. Per run, compute is the span of its training steps and of its
generation, each extended by one progress interval for the part before its first line (the
first 10 steps; the first batch of questions). Everything else is not compute: the install, the
data stages, interpreter start-up and imports, model loading and saving, held-out NLL, MLflow and
Prefect. The share is that of the machine's core-seconds (`--cores`, default 2; each run uses
one core) over the whole command's wall time (`--total`, e.g. from `time make demo`).
"""

from __future__ import annotations

import argparse
import re
from collections import defaultdict
from pathlib import Path

LINE = re.compile(r"^(\d\d):(\d\d):(\d\d)\.(\d{3}) \| INFO .*? - (\S+) (?:step (\d+)/(\d+)|evaluate (\w+) (\d+)/(\d+))")


def spans(log: str) -> dict[str, float]:
    """Compute seconds per run and phase (`<run> train`, `<run> evaluate <split>`)."""
    seen: dict[str, list[tuple[float, int, int]]] = defaultdict(list)
    for line in log.splitlines():
        m = LINE.match(line)
        if not m:
            continue
        t = int(m[1]) * 3600 + int(m[2]) * 60 + int(m[3]) + int(m[4]) / 1000
        key = f"{m[5]} train" if m[6] else f"{m[5]} evaluate {m[8]}"
        done, total = (int(m[6]), int(m[7])) if m[6] else (int(m[9]), int(m[10]))
        seen[key].append((t, done, total))
    out = {}
    for key, points in seen.items():
        (t0, d0, _), (t1, d1, total) = points[0], points[-1]
        if d1 > d0:  # one progress interval (d0 items) before the first line, at the same rate
            out[key] = (t1 - t0) * d1 / (d1 - d0)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("log", type=Path)
    parser.add_argument("--total", type=float, required=True, help="wall seconds of the whole command")
    parser.add_argument("--cores", type=int, default=2)
    args = parser.parse_args(argv)
    phases = spans(args.log.read_text(encoding="utf-8", errors="replace"))
    train = sum(v for k, v in phases.items() if k.endswith(" train"))
    generate = sum(v for k, v in phases.items() if " evaluate " in k)
    runs = len({k.split()[0] for k in phases if k.endswith(" train")})
    machine = args.cores * args.total
    print(f"{runs} runs trained; training {train:.0f} s, generation {generate:.0f} s (core-seconds)")
    print(f"of {machine:.0f} core-seconds ({args.cores} cores x {args.total:.0f} s wall)")
    print(f"non-compute share: {1 - (train + generate) / machine:.1%}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
