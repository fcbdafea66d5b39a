"""What every command-line entry point shares: argument types and one-line usage errors."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from typing import NoReturn

from bench.errors import EXIT_FAILURE, EXIT_USAGE, redact


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
    except Exception as exc:  # noqa: BLE001 - last resort for every CLI
        if os.environ.get("BENCH_DEBUG"):
            raise
        print(f"error: {type(exc).__name__}: {redact(exc)}", file=sys.stderr)
        code = EXIT_FAILURE
    sys.exit(code)
