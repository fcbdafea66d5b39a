"""Helpers for tests that start servers on loopback (MLflow, optuna-dashboard)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import cli_env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def mlflow_command() -> list[str]:
    beside = Path(sys.executable).with_name("mlflow")  # the interpreter's own environment
    return [str(beside)] if beside.exists() else ["mlflow"]


def stop(proc: subprocess.Popen) -> None:
    """Stop a server started with ``start_new_session=True`` and all its children."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


def kill_group(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)


def wait_until_up(proc: subprocess.Popen, url: str, log: Path, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"server exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=5) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.5)
    pytest.fail(f"{url} did not answer within {seconds} s:\n{log.read_text()[-3000:]}")


def start_mlflow_server(folder: Path, backend: str, port: int) -> subprocess.Popen:
    """``mlflow server`` on a loopback port with the given backend store, up and answering."""
    log = folder / f"mlflow-server-{port}.log"
    proc = subprocess.Popen(
        [
            *mlflow_command(),
            "server",
            "--backend-store-uri",
            backend,
            "--artifacts-destination",
            str(folder / "mlartifacts"),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        cwd=folder,
        env=cli_env(),
        stdout=open(log, "a"),  # noqa: SIM115 - the child keeps it; closed when it exits
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        wait_until_up(proc, f"http://127.0.0.1:{port}/health", log, 120)
    except BaseException:
        kill_group(proc)
        raise
    return proc
