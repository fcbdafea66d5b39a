"""``python -m bench.ui``: the MLflow UI on this folder's store, at the latest batch's runs page.

``mlflow ui`` alone opens on MLflow 3's GenAI start page, where a bench experiment shows an empty
traces overview. This starts the same server (``mlflow ui``, bound to 127.0.0.1) on the store the
other commands use, waits until it answers, and prints the runs page of the latest batch's
experiment, the batch's own (parent) run and the registered model's page; on a desktop it opens
the runs page. Ctrl-C stops the server. Nothing here imports MLflow, Optuna or TensorFlow: the
server is a child process and the experiment's id comes from its REST API.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import webbrowser
from collections import deque
from pathlib import Path

from bench.cli import Parser, add_store_flags, bounded_int, check_name, run
from bench.errors import EXIT_FAILURE, EXIT_OK, EXIT_USAGE, BenchError, redact

DEFAULT_PORT = 5000  # MLflow's own; the links a search prints point at it
START_SECONDS = 180  # `mlflow ui` takes 10-30 s to answer on a busy 2-core machine
STOP_SECONDS = 15  # after SIGTERM, before SIGKILL


def build_parser() -> argparse.ArgumentParser:
    p = Parser(
        prog="python -m bench.ui",
        description="Start the MLflow UI on this folder's tracking store and print (on a "
        "desktop, open) the latest batch's runs page. Ctrl-C stops it.",
    )
    add_store_flags(p, "show this study's latest batch (default: any study's)")
    p.add_argument(
        "--port",
        type=bounded_int(1, 65535),
        default=DEFAULT_PORT,
        help=f"port on 127.0.0.1 (default {DEFAULT_PORT})",
    )
    opening = p.add_mutually_exclusive_group()
    opening.add_argument(
        "--open", action="store_true", help="open the runs page in a browser (default on a desktop)"
    )
    opening.add_argument("--no-open", action="store_true", help="never open a browser")
    p.add_argument("--verbose", action="store_true", help="show the server's own output")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return _run(args)
    except BenchError as exc:
        print(f"error: {redact(exc)}", file=sys.stderr)
        return EXIT_USAGE


def _run(args: argparse.Namespace) -> int:
    from bench.tracking import resolve_uri

    if args.study_name:
        check_name("--study-name", args.study_name)
    uri = resolve_uri(args.tracking_uri)
    batch = latest_batch(args.storage, args.study_name)
    if uri.startswith(("http://", "https://")):  # a tracking server already is the UI
        base = uri.rstrip("/")
        if _get(f"{base}/health") is None:
            raise BenchError(
                f"--tracking-uri {redact(base)}: the tracking server does not answer; start it, "
                "or leave --tracking-uri out to serve this folder's sqlite:///mlflow.db"
            )
        print(f"the tracking server {redact(base)} is the UI; nothing to start")
        _print_links(base, batch)
        return EXIT_OK
    _check_local_store(uri)
    if importlib.util.find_spec("mlflow") is None:
        raise BenchError("mlflow is not installed here: pip install -e '.[test]' (or ./setup)")
    _check_port_free(args.port)
    base = f"http://127.0.0.1:{args.port}"
    print(f"starting the MLflow UI on {redact(uri)} at {base} ...", file=sys.stderr, flush=True)
    server = Server(uri, args.port, args.verbose)
    stop_on_sigterm()
    try:
        if not server.wait_until_up(START_SECONDS):
            print(f"error: {server.failure()}", file=sys.stderr)
            return EXIT_FAILURE
        print(f"MLflow UI on {redact(uri)} at {base} (Ctrl-C stops it)")
        runs = _print_links(base, batch)
        if args.open or (not args.no_open and on_desktop()):
            webbrowser.open(runs)
        code = server.wait()
        print(f"error: {server.failure(code)}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        server.stop()
        print("stopped the MLflow UI", file=sys.stderr)
        return EXIT_OK
    finally:
        server.stop()


# ---------------------------------------------------------------- what to show


def latest_batch(storage: str | None, study: str | None):
    """The latest batch in the job store beside ``storage``; None when there is no job store.

    A journal's job store is only read when its file exists: looking creates nothing.
    """
    from bench.engine.store import JobStore, store_url
    from bench.optuna_adapter import DEFAULT_STORAGE

    storage = storage or DEFAULT_STORAGE
    url = store_url(storage)
    if "://" not in storage and not Path(url[len("sqlite:///") :]).is_file():
        return None
    try:
        return JobStore(storage).newest_batch(study)
    except BenchError:
        raise
    except Exception as exc:  # noqa: BLE001 - SQLAlchemy and driver errors alike
        raise BenchError(
            f"--storage {redact(storage)}: cannot read its job store ({redact(exc)})"
        ) from None


def _print_links(base: str, batch) -> str:
    """Print the runs page of ``batch``'s experiment, the batch's parent run and the model page
    (each when the store has it); returns the runs page's URL."""
    settings = batch.settings if batch is not None else {}
    experiment = settings.get("experiment")
    found = _api(base, "experiments/get-by-name", experiment_name=experiment) if experiment else {}
    exp_id = (found or {}).get("experiment", {}).get("experiment_id")
    shown = redact(base)  # a token in a server's URL is never printed
    if exp_id is None:
        runs = f"{base}/#/experiments"
        print(f"runs:   {shown}/#/experiments")
        why = (
            f"experiment {experiment!r} of study {batch.study} is not in this store"
            if batch is not None
            else "no bench batch in this folder's job store"
        )
        print(f"        ({why}: pick an experiment, then its runs)")
        return runs
    runs = f"{base}/#/experiments/{exp_id}/runs"
    print(f"runs:   {shown}/#/experiments/{exp_id}/runs  ({batch.design} batch {batch.number} of "
          f"study {batch.study})")  # fmt: skip
    parent = batch.parent_run_id  # the batch's own run: its jobs' runs are its children
    if parent and _api(base, "runs/get", run_id=parent):
        print(f"batch:  {shown}/#/experiments/{exp_id}/runs/{parent}")
    model = settings.get("model_name")
    if model and _api(base, "registered-models/get", name=model):
        print(f"model:  {shown}/#/models/{urllib.parse.quote(model)}")
    return runs


def _api(base: str, path: str, **params: str) -> dict | None:
    """GET one MLflow REST endpoint; None for a 404 or any failure (the links are a courtesy)."""
    body = _get(f"{base}/api/2.0/mlflow/{path}?{urllib.parse.urlencode(params)}")
    try:
        return json.loads(body) if body is not None else None
    except ValueError:
        return None


def _get(url: str) -> bytes | None:
    """The body of a 200 answer; None for any other answer or no answer."""
    try:
        with urllib.request.urlopen(url, timeout=30) as resp:
            return resp.read() if resp.status == 200 else None
    except (urllib.error.URLError, OSError, ValueError):
        return None


def on_desktop() -> bool:
    """A browser can be shown: a graphical session on Linux, or macOS and Windows."""
    if sys.platform in ("darwin", "win32"):
        return True
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


# ---------------------------------------------------------------- checks before starting


def _check_local_store(uri: str) -> None:
    """A local sqlite store must exist: `mlflow ui` would create an empty one instead.

    Raises:
        BenchError: the file is missing, or the URI is MLflow's file store.
    """
    if uri.startswith("sqlite:///"):
        path = Path(uri[len("sqlite:///") :])
        if not path.is_file():
            raise BenchError(
                f"no MLflow store here: {path.resolve()} does not exist; run "
                "python -m bench.search in this folder first, cd to the folder it ran in, or pass "
                "--tracking-uri"
            )
    elif uri.startswith("sqlite:") or "://" not in uri or uri.startswith("file:"):
        raise BenchError(
            f"--tracking-uri {redact(uri)}: not a store bench writes; pass sqlite:///PATH, a "
            "database URL or an http(s):// tracking server"
        )


def _check_port_free(port: int) -> None:
    with socket.socket() as s:
        # like the server's own bind: a UI stopped a moment ago leaves TIME_WAIT entries on the
        # port, which only SO_REUSEADDR lets past; a listening socket still refuses it
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            raise BenchError(
                f"--port {port}: 127.0.0.1:{port} is in use (another MLflow UI?); open it, stop "
                "it, or pass another --port"
            ) from None


# ---------------------------------------------------------------- the server


class Server:
    """``mlflow ui`` as a child in its own session: the terminal's Ctrl-C reaches only this
    process, which then stops the server and its workers as one group."""

    def __init__(self, uri: str, port: int, verbose: bool):
        self.port, self.verbose = port, verbose
        self.tail: deque[str] = deque(maxlen=20)  # its last lines, for an error message
        env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true"}
        command = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri]
        command += ["--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
        self.proc = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
        self._reader = threading.Thread(target=self._drain, daemon=True)
        self._reader.start()

    def _drain(self) -> None:
        for raw in self.proc.stdout:
            line = raw.decode(errors="replace").rstrip()
            self.tail.append(line)
            if self.verbose:
                print(line, file=sys.stderr, flush=True)

    def wait_until_up(self, seconds: float) -> bool:
        """True once ``/health`` answers; False when the server exits or takes too long."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            if _get(f"http://127.0.0.1:{self.port}/health") is not None:
                return True
            time.sleep(0.5)
        return False

    def wait(self) -> int:
        return self.proc.wait()

    def failure(self, code: int | None = None) -> str:
        code = self.proc.poll() if code is None else code
        last = next((line for line in reversed(self.tail) if line.strip()), "")
        what = (
            f"exited with code {code}"
            if code is not None
            else f"did not answer within {START_SECONDS} s"
        )
        return f"the MLflow UI {what}" + (f": {redact(last, limit=300)}" if last else "")

    def stop(self) -> None:
        """SIGTERM to the server's group, then SIGKILL after ``STOP_SECONDS``; idempotent.

        Returns once nothing listens on the port any more: ``mlflow ui`` (the group's leader)
        exits at once on SIGTERM, while the web server it started is still shutting down and
        holding the port, so the leader's exit alone does not mean the UI is gone.
        """
        if self.proc.poll() is None:
            for sig in (signal.SIGTERM, signal.SIGKILL):
                try:
                    os.killpg(self.proc.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    self.proc.wait(timeout=STOP_SECONDS)
                    break
                except subprocess.TimeoutExpired:
                    continue
        deadline = time.monotonic() + STOP_SECONDS
        while _listening(self.port) and time.monotonic() < deadline:
            time.sleep(0.1)
        if _listening(self.port):
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)  # what is left of the group
            except ProcessLookupError:
                pass


def _listening(port: int) -> bool:
    """Whether something accepts connections on 127.0.0.1:``port``."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def stop_on_sigterm() -> None:
    """SIGTERM (``kill``, a service manager) and SIGHUP (the terminal closed) stop the server
    like Ctrl-C does: it runs in its own session and would outlive this process otherwise."""

    def handler(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGHUP, handler)


def console() -> None:
    """Console-script entry point (``pip install`` puts ``bench-ui`` on PATH)."""
    run(main)


if __name__ == "__main__":
    console()
