"""Trials and epochs per hour with a 1, 2, ... node Ray cluster (one CPU per node) on one
PostgreSQL study and MLflow server: one driver, ``bench.search --executor ray``.

    # a fixed trial budget: quick, but start-up and the last straggling trial weigh heavily
    BENCH_TEST_POSTGRES_URL=postgresql://postgres@127.0.0.1:5432/test \\
        python benchmarks/scale_out.py --workers 1 2 --trials 8 --max-epochs 3

    # steady state: 20 minutes of searching per worker count (about 45 minutes for 1 and 2)
    python benchmarks/scale_out.py --long --storage postgresql://postgres@127.0.0.1:5432/bench
    python benchmarks/scale_out.py --long --budget-seconds 30 --dataset digits   # smoke check

For N nodes, ``ray start`` runs a head and N-1 workers on loopback, one CPU each (what N one-core
machines would be), and one driver runs ``python -m bench.search --executor ray --jobs N
--threads 1`` on it; every slot shares one PostgreSQL study and one MLflow tracking server. ``--storage`` names
the PostgreSQL database for the studies (each worker count gets its own study name); without it a
fresh database is created on the server of ``BENCH_TEST_POSTGRES_URL`` and dropped afterwards.
``--tracking-uri`` names an MLflow server; without it one is started on loopback, backed by a
fresh PostgreSQL database.

The default mode times a fixed number of trials and prints trials/hour and the scaling ratio.
``--long`` instead gives every worker count the same wall-clock window (``--budget-seconds``,
default 1,200 s, counted from the workers' start so their start-up is included), stops the
workers at its end (SIGTERM: the trial in training is failed and dropped) and counts the trials
that finished inside the window: finished trials per hour, epochs per hour (the throughput
measure that pruning decisions cannot move), and the 2-vs-1 ratio of both. Workers do not
register a champion in this mode; that one-off cost belongs to a search, not to its throughput.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
LONG_BUDGET_S = 1200.0  # 20 minutes: start-up (~10 s) and the cut-off trial become small
STOP_GRACE_S = 60.0  # bench exits within seconds of SIGTERM; this only bounds a stuck worker
FINISHED = ("COMPLETE", "PRUNED")


def default_postgres() -> str:
    return os.environ.get("BENCH_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")


@contextlib.contextmanager
def fresh_databases(base: str, count: int) -> Iterator[list[str]]:
    """URLs of ``count`` new databases on ``base``'s server, dropped on exit."""
    import psycopg

    names = [f"bench_scale_{uuid.uuid4().hex[:8]}" for _ in range(count)]
    with psycopg.connect(base, autocommit=True) as conn:
        for name in names:
            conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield [f"{base.rsplit('/', 1)[0]}/{name}" for name in names]
    finally:
        with psycopg.connect(base, autocommit=True) as conn:
            for name in names:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextlib.contextmanager
def cluster(args, folder: Path) -> Iterator[tuple[str, str]]:
    """(Optuna storage URL, MLflow tracking URI) for one worker count: the given ones, or fresh."""
    from tests.servers import free_port, kill_group, start_mlflow_server

    with contextlib.ExitStack() as stack:
        needed = [args.storage is None, args.tracking_uri is None].count(True)
        fresh = stack.enter_context(fresh_databases(default_postgres(), needed)) if needed else []
        storage = args.storage or fresh.pop()
        tracking = args.tracking_uri
        if tracking is None:
            port = free_port()
            server = start_mlflow_server(folder, fresh.pop(), port)
            stack.callback(kill_group, server)
            tracking = f"http://127.0.0.1:{port}"
        yield storage, tracking


def builtin_space(name: str) -> str:
    """A shipped space file, wherever this checkout keeps them."""
    for folder in (REPO / "bench" / "space" / "builtin", REPO / "search_spaces"):
        if (folder / f"{name}.yaml").is_file():
            return str(folder / f"{name}.yaml")
    raise SystemExit(f"no built-in space {name!r} in this checkout")


def search_command(args, n_trials: int, study: str, storage: str, tracking: str) -> list[str]:
    cmd = [sys.executable, "-m", "bench.search", "--trials", str(n_trials), "--quiet"]
    cmd += ["--executor", "ray", "--threads", "1", "--dataset", args.dataset]
    cmd += ["--seed", str(args.seed)]
    cmd += ["--study-name", study, "--experiment", study]
    cmd += ["--storage", storage, "--tracking-uri", tracking]
    space = args.space or (builtin_space("smoke") if args.dataset == "digits" else None)
    if space:
        cmd += ["--space", space]
    if args.max_epochs:
        cmd += ["--max-epochs", str(args.max_epochs)]
    if args.long:
        cmd.append("--no-register")
    return cmd


RAY_PORT = 6390


def start_workers(cmd: list[str], n: int, folder: Path) -> list[subprocess.Popen]:
    """A Ray cluster of ``n`` one-CPU nodes on loopback, and the driver on it (``--jobs n``)."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "RAY_ADDRESS": f"127.0.0.1:{RAY_PORT}"}
    env.pop("RAY_ADDRESS_OVERRIDE", None)
    ray = [sys.executable, "-m", "ray.scripts.scripts", "start", "--num-cpus", "1",
           "--node-ip-address", "127.0.0.1", "--disable-usage-stats"]  # fmt: skip
    log = open(folder / "ray.log", "a")  # noqa: SIM115 - closed at exit
    subprocess.run([*ray, "--head", "--port", str(RAY_PORT)], check=True, stdout=log, stderr=log)
    for _ in range(n - 1):
        subprocess.run([*ray, "--address", f"127.0.0.1:{RAY_PORT}"], check=True, stdout=log,
                       stderr=log)  # fmt: skip
    return [
        subprocess.Popen(
            [*cmd, "--jobs", str(n)],
            cwd=folder,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=open(folder / "worker-0.err", "w"),  # noqa: SIM115 - closed at exit
            start_new_session=True,
        )
    ]


def stop_workers(procs: list[subprocess.Popen]) -> None:
    """SIGTERM (bench fails the trial in training and exits), then SIGKILL if one hangs."""
    for proc in procs:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE_S
    for proc in procs:
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
    subprocess.run([sys.executable, "-m", "ray.scripts.scripts", "stop", "--force"],
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip


def worker_error(folder: Path) -> str:
    texts = [p.read_text(errors="replace") for p in sorted(folder.glob("worker-*.err"))]
    return "\n".join(t[-2000:] for t in texts if t.strip())


# ---------------------------------------------------------------- fixed trial count


def run_fixed(args, n: int, folder: Path) -> dict:
    with cluster(args, folder) as (storage, tracking):
        study = f"scale-{n}w-{uuid.uuid4().hex[:6]}"
        start = time.time()
        procs = start_workers(
            search_command(args, args.trials, study, storage, tracking), n, folder
        )
        codes = [proc.wait() for proc in procs]
        wall = time.time() - start
    if any(codes):
        raise SystemExit(f"a worker failed with {codes}:\n{worker_error(folder)}")
    print(f"{n} worker(s): {args.trials} trials in {wall:.0f} s", flush=True)
    return {"workers": n, "wall_s": wall, "trials_per_hour": 3600 * args.trials / wall}


def fixed_table(rows: list[dict]) -> str:
    lines = ["| workers | wall s | trials/h | scaling vs 1 |", "|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['workers']} | {r['wall_s']:.0f} | {r['trials_per_hour']:.0f} | "
            f"{r['trials_per_hour'] / rows[0]['trials_per_hour']:.2f}× |"
        )
    return "\n".join(lines)


# ---------------------------------------------------------------- fixed wall-clock window


def count_window(storage: str, study: str, start: float, end: float) -> dict:
    """Trials of ``study`` that finished in [start, end], their epochs and pruned share."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    trials = optuna.load_study(study_name=study, storage=storage).get_trials(deepcopy=False)
    done = [
        t
        for t in trials
        if t.state.name in FINISHED
        and t.datetime_complete is not None
        and start <= t.datetime_complete.timestamp() <= end
    ]
    starts = [t.datetime_start.timestamp() for t in trials if t.datetime_start is not None]
    return {
        "finished": len(done),
        "pruned": sum(t.state.name == "PRUNED" for t in done),
        # bench records the epochs a trial trained; the pruning reports are one per epoch
        "epochs": sum(
            int(t.user_attrs.get("bench.epochs", len(t.intermediate_values))) for t in done
        ),
        "first_trial_s": min(starts) - start if starts else None,
    }


def run_window(args, n: int, folder: Path) -> dict:
    budget = args.budget_seconds
    # Enough slots that no worker runs dry: no trial finishes in under ~3 s, even when pruned.
    n_trials = args.trials or max(10, math.ceil(n * budget / 3))
    with cluster(args, folder) as (storage, tracking):
        study = f"scale-{n}w-{uuid.uuid4().hex[:6]}"
        start = time.time()
        procs = start_workers(search_command(args, n_trials, study, storage, tracking), n, folder)
        end = start + budget
        while time.time() < end and any(p.poll() is None for p in procs):
            time.sleep(min(1.0, max(0.0, end - time.time())))
        early = [p.returncode for p in procs if p.poll() is not None]  # before the window closed
        stop_workers(procs)
        if any(early):
            raise SystemExit(f"a worker failed with {early}:\n{worker_error(folder)}")
        counts = count_window(storage, study, start, end)
    if len(early) == n:
        print(
            f"warning: all {n_trials} slots ran out before the window closed; raise --trials",
            file=sys.stderr,
        )
    row = {"workers": n, "budget_s": budget, "slots": n_trials, **counts}
    row["trials_per_hour"] = 3600 * row["finished"] / budget
    row["epochs_per_hour"] = 3600 * row["epochs"] / budget
    print(
        f"{n} worker(s): {row['finished']} trials ({row['pruned']} pruned), {row['epochs']} "
        f"epochs finished in {budget:.0f} s",
        flush=True,
    )
    return row


def window_table(rows: list[dict]) -> str:
    base = rows[0]
    lines = [
        "| workers | window s | finished | pruned | epochs | trials/h | epochs/h "
        "| trials/h vs 1 | epochs/h vs 1 | first trial at s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        first = "—" if r["first_trial_s"] is None else f"{r['first_trial_s']:.0f}"
        lines.append(
            f"| {r['workers']} | {r['budget_s']:.0f} | {r['finished']} | {r['pruned']} | "
            f"{r['epochs']} | {r['trials_per_hour']:.0f} | {r['epochs_per_hour']:.0f} | "
            f"{_ratio(r['trials_per_hour'], base['trials_per_hour'])} | "
            f"{_ratio(r['epochs_per_hour'], base['epochs_per_hour'])} | {first} |"
        )
    by_n = {r["workers"]: r for r in rows}
    if 1 in by_n and 2 in by_n:
        one, two = by_n[1], by_n[2]
        lines += [
            "",
            f"2 workers vs 1: finished trials/hour "
            f"{_ratio(two['trials_per_hour'], one['trials_per_hour'])}, epochs/hour "
            f"{_ratio(two['epochs_per_hour'], one['epochs_per_hour'])}",
        ]
    return "\n".join(lines)


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}×" if b else "—"


# ---------------------------------------------------------------- main


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    p.add_argument(
        "--trials",
        type=int,
        help="trials per worker count (8); with --long, the slots enqueued (enough to never "
        "run dry: workers x budget / 3)",
    )
    p.add_argument(
        "--max-epochs", type=int, help="epoch cap per trial (3; with --long the space's own)"
    )
    p.add_argument("--dataset", default="fashion-mnist")
    p.add_argument("--space", help="search space (the default space; smoke for digits)")
    p.add_argument("--seed", type=int, default=0, help="study seed, the same for every count")
    p.add_argument("--storage", help="PostgreSQL URL for the studies (default: a fresh database)")
    p.add_argument("--tracking-uri", help="MLflow server (default: a fresh one on loopback)")
    p.add_argument(
        "--long",
        action="store_true",
        help="measure finished trials per hour over a fixed window per worker count",
    )
    p.add_argument(
        "--budget-seconds",
        type=float,
        help=f"with --long: the window per worker count ({LONG_BUDGET_S:.0f}; less only for "
        "a smoke check)",
    )
    p.add_argument("--record", action="store_true", help="append the table to RESULTS.md")
    args = p.parse_args(argv)
    if args.budget_seconds is not None and not args.long:
        p.error("--budget-seconds needs --long")
    if args.budget_seconds is not None and args.budget_seconds <= 0:
        p.error(f"--budget-seconds {args.budget_seconds}: give a positive number of seconds")
    if args.storage and not args.storage.startswith("postgresql"):
        p.error(f"--storage {args.storage}: give a postgresql:// URL (the scale-out setup)")
    if not args.long:
        args.trials = args.trials or 8
        args.max_epochs = args.max_epochs or 3
    args.budget_seconds = args.budget_seconds or LONG_BUDGET_S
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.long and args.budget_seconds < LONG_BUDGET_S:
        print(
            f"note: a {args.budget_seconds:.0f} s window is a smoke check; the measurement "
            f"needs {LONG_BUDGET_S:.0f} s or more",
            file=sys.stderr,
        )
    rows = []
    for n in args.workers:
        with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
            run = run_window if args.long else run_fixed
            rows.append(run(args, n, Path(tmp)))
    text = window_table(rows) if args.long else fixed_table(rows)
    print(text)
    if args.record:
        if args.long:
            title = f"scale_out.py --long, {args.budget_seconds:.0f} s per worker count"
        else:
            title = f"scale_out.py --trials {args.trials} --max-epochs {args.max_epochs}"
        with open(REPO / "benchmarks" / "RESULTS.md", "a") as f:
            f.write(f"\n### {title} ({os.cpu_count()} cores, {args.dataset})\n\n{text}\n")


if __name__ == "__main__":
    main()
