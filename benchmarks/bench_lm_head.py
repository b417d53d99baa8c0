"""Peak memory and time of the LM loss with and without chunking the LM head
(stepjepa/method/forward.py, `lm_loss_sum`; `train.lm_loss_chunk`).

One forward and backward of the LM loss alone: `(N, H)` labelled hidden states through a
float32 `Linear(H, V)` head at Qwen2.5-0.5B's shape (V = 151,936, H = 896), N = 2,000
labelled positions (batch 8 x ~250), then cross-entropy. Each variant runs in a fresh
process of its own, which reports its peak RSS above the RSS it had once its inputs, the
head and the head's gradient buffer existed (2 x 0.54 GB, in the baseline: the same for
every variant), and the wall time of forward + backward.

    .venv/bin/python benchmarks/bench_lm_head.py                  # chunk 1024 vs none
    .venv/bin/python benchmarks/bench_lm_head.py --chunks none 1024 256 --threads 2

Unchunked, the float32 logits (N x V x 4 B = 1.2 GB at N = 2,000), the log-softmax kept
for backward and the logits' gradient are alive together; chunked, one chunk's.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import torch

VOCAB, HIDDEN, POSITIONS = 151_936, 896, 2_000


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def measure(chunk: int | None, positions: int, threads: int) -> dict:
    """One forward + backward of the LM loss in this process: peak RSS above the baseline, seconds."""
    from stepjepa.method.forward import ModelParts, lm_loss_from_hidden

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    head = torch.nn.Linear(HIDDEN, VOCAB, bias=False)
    parts = ModelParts(
        decoder=torch.nn.Identity(), head=head, attn_implementation="sdpa", dtype=torch.float32, softcap=None
    )
    hidden = torch.randn(1, positions, HIDDEN, requires_grad=True)
    targets = torch.randint(0, VOCAB, (1, positions))
    # The gradient buffer is the same for every variant: allocated and touched (zeros from
    # calloc would only take memory when the backward pass first writes them) before the baseline.
    head.weight.grad = torch.empty_like(head.weight).fill_(0.0)
    base = rss_mib()
    started = time.perf_counter()
    loss = lm_loss_from_hidden(parts, hidden, targets, chunk)
    loss.backward()
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    return {
        "chunk": chunk,
        "positions": positions,
        "peak_above_base_mib": round(peak - base),
        "seconds": round(seconds, 2),
        "loss": float(loss),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--chunks", nargs="+", default=["none", "1024"], help="chunk sizes; none = unchunked")
    parser.add_argument("--positions", type=int, default=POSITIONS)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        chunk = None if args.child == "none" else int(args.child)
        print(json.dumps(measure(chunk, args.positions, args.threads)))
        return
    results = []
    for chunk in args.chunks:  # a fresh process each: peak RSS is per process
        done = subprocess.run(
            [
                sys.executable,
                __file__,
                "--child",
                chunk,
                "--positions",
                str(args.positions),
                "--threads",
                str(args.threads),
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        results.append(json.loads(done.stdout.splitlines()[-1]))
        print(json.dumps(results[-1]), flush=True)
    print(f"{'chunk':>6} {'peak MiB above base':>20} {'seconds':>8} {'loss':>10}")
    for r in results:
        print(f"{str(r['chunk']):>6} {r['peak_above_base_mib']:>20} {r['seconds']:>8} {r['loss']:>10.6f}")


if __name__ == "__main__":
    main()
