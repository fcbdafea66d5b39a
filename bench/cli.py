"""What every command-line entry point shares: argument types and one-line usage errors."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from typing import NoReturn

from bench.errors import EXIT_FAILURE, EXIT_INTERRUPTED, EXIT_USAGE, redact


def positive_int(text: str) -> int:
    """An argparse type: a whole number >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def positive_seconds(text: str) -> float:
    """An argparse type: a number of seconds > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number of seconds, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {value}")
    return value


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are one line and exit 2."""

    def error(self, message: str):
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}; see --help\n")


def run(main: Callable[[], int]) -> NoReturn:
    """Exit with ``main()``'s code; an unexpected error becomes one line and exit 1.

    ``BENCH_DEBUG=1`` lets the traceback through instead.
    """
    try:
        code = main()
    except KeyboardInterrupt:  # a command without the engine's handler (report, predict, ui)
        print("interrupted", file=sys.stderr)
        code = EXIT_INTERRUPTED
    except Exception as exc:  # noqa: BLE001 - last resort for every CLI
        if os.environ.get("BENCH_DEBUG"):
            raise
        print(f"error: {type(exc).__name__}: {redact(exc)}", file=sys.stderr)
        code = EXIT_FAILURE
    sys.exit(code)


def bounded_int(low: int, high: int, what: str = "") -> Callable[[str], int]:
    """An argparse type: a whole number in ``[low, high]``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a whole number, got {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be from {low} to {high}{what}, got {value}")
        return value

    return parse


def bounded_float(low: float, high: float) -> Callable[[str], float]:
    """An argparse type: a number in ``[low, high]`` (NaN refused)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
        if not low <= value <= high:  # NaN fails this too
            raise argparse.ArgumentTypeError(f"must be from {low:g} to {high:g}, got {text}")
        return value

    return parse


SEED_MAX = 2**31 - 1  # job seeds are seed + index (+ 2,000,000 at most): kept below 2**32


def check_name(flag: str, name: str) -> str:
    """A study, experiment or model name: letters, digits and ``._-+``, not starting with a dot.

    Raises:
        BenchError: the name could escape a folder (``../x``), break an MLflow filter (a quote)
            or is empty.
    """
    from bench.errors import BenchError, name_problem

    if (problem := name_problem(name)) is not None:
        raise BenchError(f"{flag} {name[:60]!r}{'...' if len(name) > 60 else ''}: {problem}")
    return name


def engine_main(run_fn: Callable[..., int], args: argparse.Namespace) -> int:
    """What every command that runs jobs does around its work: logging, deferred interrupts,
    and one line with exit 2 for a usage error or 130 for Ctrl-C before any job started.

    Args:
        run_fn: ``f(args, interrupts) -> exit code``.
        args: The parsed flags (``--verbose``, where the command has it, opens TensorFlow's
            start-up messages).
    """
    from bench.errors import BenchError
    from bench.logs import setup_logging

    setup_logging(verbose=getattr(args, "verbose", None))
    try:
        from bench.engine.interrupts import Interrupts

        interrupts = Interrupts()
        interrupts.install()
        return run_fn(args, interrupts)
    except BenchError as exc:
        print(f"error: {redact(exc)}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(
            "interrupted while starting; rerun the same command to continue where it stopped",
            file=sys.stderr,
        )
        return EXIT_INTERRUPTED


def add_store_flags(
    p: argparse.ArgumentParser, study: str | None = None, required_study: bool = False
) -> None:
    """Where a study lives: ``--study-name`` (when ``study`` gives its help), ``--storage`` and
    ``--tracking-uri``, with one wording across the commands."""
    if study is not None:
        p.add_argument("--study-name", required=required_study, help=study)
    p.add_argument(
        "--storage",
        help="Optuna storage: a journal file path (default optuna-studies.log) or a database URL, "
        "e.g. postgresql://...; the job store lives beside it or in it",
    )
    p.add_argument(
        "--tracking-uri",
        metavar="URI",
        help="MLflow tracking URI (default MLFLOW_TRACKING_URI or sqlite:///mlflow.db)",
    )


def add_ensemble_flag(p: argparse.ArgumentParser, among: str) -> None:
    """``--ensemble K``: how many of the best configurations the registered model averages."""
    p.add_argument(
        "--ensemble",
        type=bounded_int(1, 10),
        default=2,
        metavar="K",
        help=f"refit the best K {among} on all training images (in parallel) and register the "
        "mean of their probabilities as one model (default 2; 1: the best alone)",
    )


def add_worker_flags(p: argparse.ArgumentParser) -> None:
    """The flags of every command that runs jobs: workers, threads, progress, start-up noise."""
    p.add_argument(
        "--workers",
        "--jobs",  # its first name; a job is one training run, so it reads as the wrong noun
        dest="workers",
        type=bounded_int(1, 256),
        help="worker processes on this machine (default: one per usable CPU, or per GPU); "
        "--jobs is the same flag",
    )
    p.add_argument(
        "--threads",
        type=bounded_int(1, 1024),
        help="TensorFlow threads per worker (default: usable CPUs / workers)",
    )
    p.add_argument(
        "--executor",
        choices=("local", "ray"),
        default="local",
        help="where jobs run: local (slot processes on this machine, the default) or ray (Ray "
        "actors on the cluster of --ray-address or RAY_ADDRESS; pip install 'bench[ray]')",
    )
    p.add_argument(
        "--ray-address",
        metavar="ADDR",
        help="the Ray cluster for --executor ray (default: RAY_ADDRESS, else a Ray started here)",
    )
    p.add_argument(
        "--gpus-per-slot",
        type=bounded_float(0.01, 8.0),
        default=1.0,
        metavar="G",
        help="GPUs per Ray actor when the cluster has GPUs (default 1; 0.5: two per GPU)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.add_argument(
        "--verbose", action="store_true", help="let TensorFlow's start-up messages through"
    )


def worker_plan(args: argparse.Namespace, n_jobs: int):
    """The :class:`~bench.resources.WorkerPlan` the worker flags ask for.

    Raises:
        BenchError: a flag that does not fit this machine, or Ray flags without ``--executor
            ray``.
    """
    from bench.errors import BenchError
    from bench.resources import plan_for

    executor = getattr(args, "executor", "local")
    if executor != "ray" and getattr(args, "ray_address", None):
        raise BenchError("--ray-address: only with --executor ray; add --executor ray")
    if executor == "ray":
        from bench.engine.ray_slots import check_ray

        check_ray()
    return plan_for(
        args.workers, args.threads, n_jobs, executor, getattr(args, "ray_address", None),
        getattr(args, "gpus_per_slot", 1.0),
    )  # fmt: skip
