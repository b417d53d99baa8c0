"""`stepjepa resend OUT` (or `python -m stepjepa.training.resend OUT`): send to MLflow what a run logged
while the server was down.

Training writes every logged step to `OUT/metrics.jsonl` first and sends it to MLflow in
the background; when the server stays down past the end of the run, the steps it never
received (and the run's final status) are sent from the file by this command. A run that
could not reach MLflow when it started recorded itself in `OUT/mlflow-offline.jsonl`: this
command creates its MLflow run (with its real start time) and sends the whole record. The
next sweep (and `python -m pipelines.sweep --reconcile`) does the same for its run folders.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from stepjepa.tracking import offline_run_id, one_line, resend, send_pending, tracking_uri

log = logging.getLogger(__name__)


def run_id_of(out: Path) -> str | None:
    """The MLflow run of the run folder `out`: from `summary.json`, else its latest checkpoint,
    else the record of a run that started offline."""
    from stepjepa.training.checkpoint import latest_checkpoint  # imports torch: not for `--help`

    for state in (out / "summary.json", (latest_checkpoint(out) or out / "-") / "state.json"):
        if state.is_file() and (run_id := json.loads(state.read_text()).get("run_id")):
            return run_id
    return offline_run_id(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="stepjepa resend", description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="the run folder (`stepjepa train --out`)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        if send_pending(args.out) is not None:
            return 0
        run_id = run_id_of(args.out)
        if run_id is None:
            log.error("%s: no summary.json, checkpoint or mlflow-offline.jsonl names an MLflow run", args.out)
            return 2
        if not (args.out / "metrics.jsonl").is_file():
            log.error("%s: no metrics.jsonl to send", args.out)
            return 2
        history = [json.loads(line) for line in (args.out / "metrics.jsonl").read_text().splitlines() if line.strip()]
        # A run that saved its model finished; any other was stopped before it could say how.
        status = "FINISHED" if (args.out / "summary.json").is_file() else "KILLED"
        sent = resend(run_id, history, status)
    except Exception as err:  # noqa: BLE001 - MLflow's, requests' and sqlite's errors alike: one line, no traceback
        log.error(
            "%s: could not send to MLflow at %s (%s); nothing is lost: run this again when it is reachable",
            args.out,
            tracking_uri(),
            one_line(err),
        )
        return 1
    log.info("sent %d steps to MLflow run %s", sent, run_id)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
