"""Logging for the CLIs: one line per message on stderr, secrets redacted, library noise quiet."""

from __future__ import annotations

import logging
import os
import warnings

from bench.errors import redact


class RedactingFilter(logging.Filter):
    """Masks passwords in URLs in every record, whoever logs it."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = redact(record.getMessage())
        record.args = ()
        return True


def setup_logging(level: int = logging.INFO, verbose: bool | None = None) -> None:
    """Configure the ``bench`` logger and quiet TensorFlow, Optuna and MLflow chatter.

    Args:
        level: The ``bench`` logger's level.
        verbose: Let TensorFlow's start-up messages through (``--verbose``); None keeps what
            ``BENCH_VERBOSE`` says, so worker processes inherit the choice.
    """
    if verbose is not None:
        os.environ["BENCH_VERBOSE"] = "1" if verbose else ""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # no C++ chatter (cuInit, oneDNN)
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    # MLflow 3 reports usage to its makers unless told not to; a benchmark harness has no
    # business sending that (and offline machines would wait on it). Users can set it to false.
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    if not os.environ.get("BENCH_VERBOSE"):
        # MLflow sets its logger's level from this variable when it is imported, which is after
        # this call (lazily, on first use): the setLevel below alone would be undone, and a fresh
        # folder would show "INFO mlflow.store.db.utils: Creating initial MLflow database tables"
        os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "ERROR")
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    handler.addFilter(RedactingFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    logging.getLogger("bench").setLevel(level)
    for noisy in ("optuna", "mlflow", "alembic", "absl", "tensorflow", "keras", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
