"""Trials per hour with 1, 2, ... independent workers on one PostgreSQL study and MLflow server.

    BENCH_TEST_POSTGRES_URL=postgresql://postgres@127.0.0.1:5432/test \
        python benchmarks/scale_out.py --workers 1 2 --trials 8 --max-epochs 3

Every worker is a separate ``python -m bench.search --jobs 1 --threads 1`` process (what one
machine runs); all share a fresh PostgreSQL study and a loopback MLflow server backed by
PostgreSQL. Prints trials/hour per worker count and the scaling ratio against one worker.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def main() -> None:
    from tests.faults import free_port, kill_group, start_mlflow_server

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--trials", type=int, default=8)
    p.add_argument("--max-epochs", type=int, default=3)
    p.add_argument("--dataset", default="fashion-mnist")
    p.add_argument("--record", action="store_true")
    args = p.parse_args()
    base = os.environ.get("BENCH_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
    import psycopg

    rows = []
    for n in args.workers:
        with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
            folder = Path(tmp)
            dbs = [f"bench_scale_{uuid.uuid4().hex[:8]}" for _ in range(2)]
            with psycopg.connect(base, autocommit=True) as conn:
                for db in dbs:
                    conn.execute(f'CREATE DATABASE "{db}"')
            root = base.rsplit("/", 1)[0]
            port = free_port()
            server = start_mlflow_server(folder, f"{root}/{dbs[0]}", port)
            try:
                cmd = [sys.executable, "-m", "bench.search", "--trials", str(args.trials),
                       "--max-epochs", str(args.max_epochs), "--dataset", args.dataset,
                       "--jobs", "1", "--threads", "1", "--quiet",
                       "--storage", f"{root}/{dbs[1]}", "--tracking-uri", f"http://127.0.0.1:{port}"]
                env = {**os.environ, "PYTHONPATH": str(REPO)}
                start = time.time()
                procs = [subprocess.Popen(cmd, cwd=folder, env=env, stdout=subprocess.DEVNULL,
                                          stderr=subprocess.PIPE, text=True) for _ in range(n)]
                codes = [proc.wait() for proc in procs]
                wall = time.time() - start
            finally:
                kill_group(server)
                with psycopg.connect(base, autocommit=True) as conn:
                    for db in dbs:
                        conn.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
            if any(codes):
                raise SystemExit(f"a worker failed with {codes}: {procs[0].stderr.read()[-2000:]}")
            rows.append((n, wall, 3600 * args.trials / wall))
            print(f"{n} worker(s): {args.trials} trials in {wall:.0f} s", flush=True)
    lines = ["| workers | wall s | trials/h | scaling vs 1 |", "|---|---|---|---|"]
    for n, wall, tph in rows:
        lines.append(f"| {n} | {wall:.0f} | {tph:.0f} | {tph / rows[0][2]:.2f}× |")
    text = "\n".join(lines)
    print(text)
    if args.record:
        with open(REPO / "benchmarks" / "RESULTS.md", "a") as f:
            f.write(f"\n### scale_out.py --trials {args.trials} --max-epochs {args.max_epochs} "
                    f"({os.cpu_count()} cores, {args.dataset})\n\n{text}\n")


if __name__ == "__main__":
    main()
