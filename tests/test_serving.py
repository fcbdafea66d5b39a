"""The champion served over HTTP by ``mlflow models serve``, fed raw uint8 test images as JSON."""

from __future__ import annotations

import json
import subprocess
import urllib.error
import urllib.request

import numpy as np
import pytest

from bench.data import read_idx
from tests.conftest import FASHION_DIR, cli_env
from tests.servers import free_port, mlflow_command, stop, wait_until_up

CHAMPION = "models:/fashion-mnist-mlp@champion"
STARTUP_SECONDS = 120  # loading TensorFlow and the model on a busy 2-core machine


def post_json(url: str, body: dict) -> tuple[int, dict]:
    request = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        method="POST",
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}")


@pytest.mark.slow
def test_served_champion_answers_like_the_pyfunc_model(fashion_search, tmp_path):
    images = read_idx(FASHION_DIR / "t10k-images-idx3-ubyte.gz")[:6]
    store = f"sqlite:///{fashion_search / 'mlflow.db'}"
    import mlflow

    before = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(store)
    try:
        expected = np.asarray(mlflow.pyfunc.load_model(CHAMPION).predict(images))
    finally:
        mlflow.set_tracking_uri(before)

    port = free_port()
    log = tmp_path / "serve.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [
                *mlflow_command(),
                "models",
                "serve",
                "-m",
                CHAMPION,
                "--env-manager",
                "local",
                "--host",
                "127.0.0.1",
                "-p",
                str(port),
            ],
            cwd=fashion_search,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=cli_env(
                MLFLOW_TRACKING_URI=store, MLFLOW_DISABLE_TELEMETRY="true", DO_NOT_TRACK="true"
            ),
        )
    try:
        base = f"http://127.0.0.1:{port}"
        wait_until_up(proc, f"{base}/ping", log, STARTUP_SECONDS)

        status, answer = post_json(f"{base}/invocations", {"inputs": images.tolist()})
        assert status == 200, answer
        probs = np.asarray(answer["predictions"], dtype=np.float64)
        assert probs.shape == (len(images), 10)
        np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-4)
        np.testing.assert_array_equal(probs.argmax(axis=1), expected.argmax(axis=1))
        np.testing.assert_allclose(probs, expected, atol=1e-5)

        # The signature is enforced: a flattened image is refused, not silently reshaped.
        flat = images[:1].reshape(1, -1).tolist()
        status, answer = post_json(f"{base}/invocations", {"inputs": flat})
        assert status == 400
        assert "does not match expected shape (-1, 28, 28)" in answer["message"]
    finally:
        stop(proc)
    assert proc.poll() is not None
