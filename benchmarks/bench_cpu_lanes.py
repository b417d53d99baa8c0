"""CPU lanes: how many demo-sized training runs an hour, one run at a time on every core or
several side by side with the cores split between them (`sweep.max_concurrent`).

    .venv/bin/python benchmarks/bench_cpu_lanes.py              # 4 runs per arrangement
    .venv/bin/python benchmarks/bench_cpu_lanes.py --runs 2

Each run is what the sweep starts for one config of `make demo` (benchmarks/size_arith.py's
DEMO: the arith task, the 0.52M-parameter model, 360 steps of batch 16, K=1, lambda 0.1,
infonce, packed; no tracking), through the sweep's own path: `launch.train_command` (an
`accelerate launch` process per run) in the environment `DeviceSlots.env` gives it. Data and
model are built once (size_arith.py's cache under --work). Runs of one arrangement start
together up to its lane count; the figure is wall seconds for all of them, so process start-up
is in it, as it is in a sweep.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from size_arith import build_config, prepared_data  # noqa: E402

from stepjepa.config import write_config  # noqa: E402
from stepjepa.training import launch  # noqa: E402

RUN = ["train.k=1", "train.lambda=0.1", "train.loss=infonce", "train.layout=packed"]


def run_all(lanes: int, runs: int, config: Path, data: Path, work: Path) -> float:
    """Wall seconds for `runs` training runs, `lanes` at a time."""
    slots = launch.DeviceSlots([], cpu_slots=lanes)

    def one(index: int) -> None:
        out = work / "lanes" / f"{lanes}-{index}-{time.strftime('%H%M%S')}"
        with slots.acquire() as slot:
            cmd = launch.train_command(config, data, out, slot, resume=False)
            subprocess.run(cmd, env=slots.env(slot), check=True, capture_output=True)

    start = time.perf_counter()
    threads = [threading.Thread(target=one, args=(i,)) for i in range(runs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=4)
    parser.add_argument("--lanes", type=int, action="append", help="default: 1 and every core")
    parser.add_argument("--work", type=Path, default=Path("/tmp/size_arith"))
    args = parser.parse_args(argv)
    cfg = build_config(RUN)
    paths = prepared_data(cfg, args.work)
    config = write_config(build_config([f"model.name_or_path={paths['model']}", *RUN]), args.work / "lanes.yaml")
    cores = launch.usable_cores()
    rows = []
    for lanes in args.lanes or sorted({1, cores}):
        wall = run_all(lanes, args.runs, config, paths["train"], args.work)
        threads = launch.DeviceSlots([], cpu_slots=lanes).cpu_threads or cores
        rows.append((lanes, threads, wall))
        print(f"{lanes} lane(s) x {threads} thread(s): {args.runs} runs in {wall:.1f} s", file=sys.stderr, flush=True)
    base = rows[0][2]
    print(f"{args.runs} demo-sized training runs on {cores} cores\n")
    print("| lanes x threads per run | wall s | s per run | speed vs 1 lane |")
    print("|---|---|---|---|")
    for lanes, threads, wall in rows:
        print(f"| {lanes} x {threads} | {wall:.1f} | {wall / args.runs:.1f} | {base / wall:.2f}x |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
