"""Wall time of `stepjepa score` over 100,000 ordinary completions (target < 10 s).

    python benchmarks/bench_score.py [--lines 100000]

The completions are built from GSM8K's test solutions: the reference steps followed by
the usual endings a model writes (a boxed number, a `####` line, "The answer is N.", a
`\\frac` box, nothing), so extraction takes every path it takes on real output. The time
is of the whole command as a user runs it: process start, imports, reading, scoring and
printing the metrics; its CPU time is printed too, as wall time on a shared machine
mostly measures the other jobs.
"""

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ENDINGS = [
    "\\boxed{{{n}}}",
    "#### {n}",
    "The answer is {n}.",
    "So she has {n:,} dollars in total.",
    "\\boxed{{\\frac{{{n}}}{{2}}}}",
    "The final answer is ${n}$",
    "I am not sure.",
]


def completions(count: int, solutions: list[str], seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    lines = []
    for _ in range(count):
        steps = rng.choice(solutions).rsplit("####", 1)[0].strip()
        ending = rng.choices(ENDINGS, weights=[60, 10, 10, 10, 2, 5, 3])[0].format(n=rng.randint(1, 5000))
        lines.append(json.dumps({"completion": f"{steps}\n{ending}", "answer": f"#### {rng.randint(1, 5000)}"}))
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lines", type=int, default=100_000)
    args = parser.parse_args()
    test = Path(os.environ.get("GSM8K_DIR", "../shared/data/gsm8k")) / "test.jsonl"
    solutions = [json.loads(line)["answer"] for line in test.read_text(encoding="utf-8").splitlines()]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "predictions.jsonl"
        path.write_text("\n".join(completions(args.lines, solutions)) + "\n", encoding="utf-8")
        size_mb = path.stat().st_size / 1e6
        started = time.perf_counter()
        out = subprocess.run(
            [sys.executable, "-m", "stepjepa.cli", "score", str(path)], check=True, capture_output=True, text=True
        ).stdout
        elapsed = time.perf_counter() - started
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    metrics = json.loads(out)
    print(
        f"stepjepa score: {args.lines:,} lines ({size_mb:.0f} MB) "
        f"in {elapsed:.2f} s wall, {usage.ru_utime + usage.ru_stime:.2f} s CPU (n={metrics['n']}, "
        f"unscorable={metrics['unscorable']}, load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs)"
    )


if __name__ == "__main__":
    main()
