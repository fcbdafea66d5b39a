"""What per-epoch MLflow logging costs the training loop: sent in the loop (as before) against
queued for the tracker's background thread (``Tracker.log_metrics_later``, then ``flush``).

    python benchmarks/epoch_logging.py                 # a SQLite store and an MLflow server
    python benchmarks/epoch_logging.py --epochs 200 --record

For each store it logs ``--epochs`` epochs of five metrics to one run, with ``--work-ms`` of
busy work between epochs standing in for training (so the background thread has something to
overlap with), and prints the milliseconds per epoch the loop spent in logging (median and 95th
percentile) and the wait in the final flush. The server is ``mlflow server`` on loopback backed
by SQLite, started here; on the 2-core machines both it and this loop share the cores.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
METRICS = ("loss", "accuracy", "val_loss", "val_accuracy", "learning_rate")


def busy(ms: float) -> None:
    end = time.perf_counter() + ms / 1000
    while time.perf_counter() < end:
        pass


def measure(uri: str, mode: str, epochs: int, work_ms: float) -> dict:
    from bench.tracking import Tracker

    tracker = Tracker(uri, f"epoch-logging-{mode}")
    run_id = tracker.start_child(None, mode, {"mode": mode}, {})
    spent = []
    for epoch in range(1, epochs + 1):
        busy(work_ms)
        metrics = {name: 1.0 / (epoch + i) for i, name in enumerate(METRICS)}
        started = time.perf_counter()
        if mode == "in-loop":
            tracker.safe(tracker.log_metrics, run_id, metrics, epoch)
        else:
            tracker.log_metrics_later(run_id, metrics, epoch)
        spent.append((time.perf_counter() - started) * 1000)
    started = time.perf_counter()
    tracker.flush()
    flush_ms = (time.perf_counter() - started) * 1000
    logged = len(tracker.client.get_metric_history(run_id, "val_accuracy"))
    assert logged == epochs and tracker.failures == 0, (logged, tracker.failures)
    spent.sort()
    return {
        "median_ms": statistics.median(spent),
        "p95_ms": spent[int(0.95 * (len(spent) - 1))],
        "flush_ms": flush_ms,
        "total_ms": sum(spent) + flush_ms,
    }


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--epochs", type=int, default=100)
    p.add_argument("--work-ms", type=float, default=200.0, help="busy work per epoch")
    p.add_argument("--record", action="store_true", help="append the table to RESULTS.md")
    args = p.parse_args(argv)
    from tests.servers import free_port, kill_group, start_mlflow_server

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        port = free_port()
        server = start_mlflow_server(folder, f"sqlite:///{folder}/server.db", port)
        try:
            stores = {
                "SQLite file": f"sqlite:///{folder}/local.db",
                "MLflow server": f"http://127.0.0.1:{port}",
            }
            for store, uri in stores.items():
                for mode in ("in-loop", "background"):
                    rows.append(
                        {
                            "store": store,
                            "mode": mode,
                            **measure(uri, mode, args.epochs, args.work_ms),
                        }
                    )
        finally:
            kill_group(server)
    lines = [
        f"epochs: {args.epochs}, {args.work_ms:.0f} ms of work each; five metrics per epoch",
        "",
        "| store | logging | loop ms/epoch (median) | p95 | final flush ms | total ms |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['store']} | {r['mode']} | {r['median_ms']:.2f} | {r['p95_ms']:.2f} | "
            f"{r['flush_ms']:.1f} | {r['total_ms']:.0f} |"
        )
    text = "\n".join(lines)
    print(text)
    if args.record:
        with open(REPO / "benchmarks" / "RESULTS.md", "a", encoding="utf-8") as f:
            command = f"python benchmarks/epoch_logging.py --epochs {args.epochs}"
            f.write(f"\n```\n$ {command}\n```\n\n{text}\n")


if __name__ == "__main__":
    main()
