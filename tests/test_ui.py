"""``python -m bench.ui``: the MLflow UI on the folder's store, in one step, stopped by Ctrl-C.

The server is started the way a user starts it (a subprocess in the folder a search ran in); what
it serves is checked through MLflow's REST API against the store the search wrote.
"""

from __future__ import annotations

import json
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import urllib.request

import pytest

from tests.conftest import cli_env, run_module
from tests.servers import free_port

START_TIMEOUT = 300  # `mlflow ui` on a busy 2-core machine; a bound, not a measurement


def _one_line_exit_2(proc) -> str:
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert proc.stdout == ""
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    return lines[0]


@pytest.mark.component
def test_a_folder_without_a_store_is_one_line_and_nothing_is_written(tmp_path):
    line = _one_line_exit_2(run_module("bench.ui", "--no-open", cwd=tmp_path))
    assert "no MLflow store here" in line and str(tmp_path / "mlflow.db") in line
    assert "python -m bench.search" in line
    assert list(tmp_path.iterdir()) == []


@pytest.mark.component
@pytest.mark.parametrize("port", ["0", "65536", "http"])
def test_a_bad_port_is_one_line(tmp_path, port):
    line = _one_line_exit_2(run_module("bench.ui", "--port", port, cwd=tmp_path))
    assert "--port" in line


@pytest.mark.component
def test_an_unreachable_tracking_server_is_one_line_without_its_password(tmp_path):
    uri = f"http://user:s3cret@127.0.0.1:{free_port()}"
    line = _one_line_exit_2(run_module("bench.ui", "--tracking-uri", uri, cwd=tmp_path))
    assert "does not answer" in line and "s3cret" not in line


@pytest.mark.slow
def test_a_port_in_use_is_one_line(digits_search):
    folder, _ = digits_search
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        line = _one_line_exit_2(run_module("bench.ui", "--port", str(port), cwd=folder))
    assert f"127.0.0.1:{port} is in use" in line


def _lines(stream, into: queue.Queue) -> None:
    for line in stream:
        into.put(line)
    into.put(None)


def _get_json(url: str, body: dict | None = None) -> dict:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as resp:
        return json.loads(resp.read())


@pytest.mark.slow
def test_it_serves_the_folders_store_at_the_latest_batch_and_stops_on_ctrl_c(digits_search):
    folder, _ = digits_search
    port = free_port()
    env = cli_env()
    for var in ("DISPLAY", "WAYLAND_DISPLAY"):
        env.pop(var, None)  # never open a browser in a test
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.ui", "--port", str(port)],
        cwd=folder,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    out: queue.Queue = queue.Queue()
    threading.Thread(target=_lines, args=(proc.stdout, out), daemon=True).start()
    try:
        printed = []
        while not any(line.startswith("model:") for line in printed):
            line = out.get(timeout=START_TIMEOUT)
            assert line is not None, f"bench.ui exited: {printed} {proc.stderr.read()}"
            printed.append(line)
        runs = next(line for line in printed if line.startswith("runs:"))
        match = re.search(rf"http://127\.0\.0\.1:{port}/#/experiments/(\d+)/runs", runs)
        assert match, printed
        assert "search batch 1 of study digits-smoke" in runs
        base = f"http://127.0.0.1:{port}"

        # the page the link opens is served
        with urllib.request.urlopen(f"{base}/", timeout=60) as resp:
            assert resp.status == 200 and b"<html" in resp.read().lower()
        # by a server on this folder's store: the printed id is its digits-mlp experiment,
        # which holds the search's trial runs, and the champion is registered there
        found = _get_json(f"{base}/api/2.0/mlflow/experiments/search?max_results=100")
        names = {e["experiment_id"]: e["name"] for e in found["experiments"]}
        assert names[match.group(1)] == "digits-mlp"
        runs_found = _get_json(
            f"{base}/api/2.0/mlflow/runs/search",
            {"experiment_ids": [match.group(1)], "max_results": 100},
        )
        run_names = {r["info"]["run_name"] for r in runs_found["runs"]}
        assert {"trial-0", "trial-1", "digits-smoke-batch-1"} <= run_names
        # the latest batch's own run, in that experiment: the parent of its jobs' runs
        batch = next((line for line in printed if line.startswith("batch:")), None)
        assert batch is not None, f"no batch: line in {printed}"
        page = rf"{re.escape(base)}/#/experiments/{match.group(1)}/runs/([0-9a-f]{{32}})$"
        found = re.search(page, batch)
        assert found, batch
        parent = _get_json(f"{base}/api/2.0/mlflow/runs/get?run_id={found.group(1)}")["run"]
        assert parent["info"]["run_name"] == "digits-smoke-batch-1"
        assert parent["info"]["experiment_id"] == match.group(1)
        assert printed.index(batch) == printed.index(runs) + 1  # under the runs page
        model = next(line for line in printed if line.startswith("model:"))
        assert model.strip().endswith(f"{base}/#/models/digits-mlp")
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    assert proc.returncode == 0
    assert proc.stderr.read().strip().splitlines()[-1] == "stopped the MLflow UI"
    # the server went with it: nothing listens on its port any more. SO_REUSEADDR lets the bind
    # past the closed connections' TIME_WAIT entries, but never past a listening socket
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))
        s.listen()
