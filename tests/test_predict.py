"""``bench.predict``: the image conversion (no TensorFlow), bad input, and the CLI on the champion.

The slow tests run ``python -m bench.predict`` as a subprocess against the shared Fashion-MNIST
search's store and compare what it prints with the registered pyfunc model's own predictions on
the raw test images.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from bench.data import FASHION_CLASSES, read_idx, write_idx
from bench.images import convert_image, fit, needs_inversion, read_gray
from tests.conftest import FASHION_DIR, cli_env, fashion_available, run_module

CHAMPION = "models:/fashion-mnist-mlp@champion"
QUIET_MLFLOW = {"MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true"}
NO_FASHION = "Fashion-MNIST files missing: apt-get install dataset-fashion-mnist"
needs_fashion = pytest.mark.skipif(not fashion_available(), reason=NO_FASHION)


@pytest.fixture(scope="module")
def test_images() -> np.ndarray:
    if not fashion_available():
        pytest.skip(NO_FASHION)
    return read_idx(FASHION_DIR / "t10k-images-idx3-ubyte.gz")


def _enlarge(image: np.ndarray, side: int, resample=Image.Resampling.NEAREST) -> Image.Image:
    return Image.fromarray(image).resize((side, side), resample)


# ---------------------------------------------------------------- conversion (no TensorFlow)


def test_polarity_rule_holds_on_every_fashion_mnist_test_image(test_images):
    # The module docstring promises this; a change to the rule must keep it true.
    originals = [i for i, img in enumerate(test_images) if needs_inversion(img)]
    negatives = [i for i, img in enumerate(test_images) if not needs_inversion(255 - img)]
    assert originals == [] and negatives == []


@pytest.mark.parametrize("side", [56, 64, 100])
def test_pixel_repeated_enlargement_comes_back_exactly(test_images, tmp_path, side):
    for k, image in enumerate(test_images[:20]):
        path = tmp_path / f"{k}.png"
        _enlarge(image, side).save(path)
        np.testing.assert_array_equal(convert_image(path), image)


def test_negated_image_is_inverted_back(test_images, tmp_path):
    for k, image in enumerate(test_images[:20]):
        path = tmp_path / f"neg-{k}.png"
        _enlarge(255 - image, 64).save(path)
        np.testing.assert_array_equal(convert_image(path), image)


def test_smooth_enlargement_and_jpeg_stay_close(test_images, tmp_path):
    for k, image in enumerate(test_images[:20]):
        png, jpg = tmp_path / f"{k}.png", tmp_path / f"{k}.jpg"
        _enlarge(image, 64, Image.Resampling.BICUBIC).save(png)
        _enlarge(image, 90, Image.Resampling.BICUBIC).convert("RGB").save(jpg, quality=90)
        for path in (png, jpg):
            diff = np.abs(convert_image(path).astype(int) - image).mean()
            assert diff < 12, f"{path.name}: mean pixel difference {diff:.1f}"


def test_wide_image_keeps_its_aspect_and_is_padded_with_background(test_images, tmp_path):
    image = test_images[0]
    wide = np.concatenate([image, np.zeros_like(image)], axis=1)  # 28 x 56, garment on the left
    path = tmp_path / "wide.png"
    Image.fromarray(wide).resize((112, 56), Image.Resampling.NEAREST).save(path)
    out = convert_image(path)
    assert out.shape == (28, 28)
    assert not out[:7].any() and not out[21:].any()  # 14 rows of picture, centred
    halved = image.reshape(14, 2, 14, 2).mean(axis=(1, 3))
    assert np.abs(out[7:21, :14] - halved).max() <= 1  # the garment, shrunk by area averaging
    assert not out[7:21, 14:].any()


def test_transparent_background_counts_as_white(test_images, tmp_path):
    # A dark garment whose background is transparent black: over white it is a dark garment on
    # white, which the polarity rule turns into the dataset's light garment on black.
    image = test_images[0]
    rgba = np.zeros((28, 28, 4), np.uint8)
    rgba[..., :3] = (255 - image)[..., None]
    rgba[..., 3] = np.where(image > 0, 255, 0)
    rgba[image == 0, :3] = 0
    path = tmp_path / "cutout.png"
    Image.fromarray(rgba).save(path)
    np.testing.assert_array_equal(convert_image(path), image)


def test_sixteen_bit_png_is_scaled_to_eight_bits(test_images, tmp_path):
    image = test_images[1]
    path = tmp_path / "deep.png"
    Image.fromarray(image.astype(np.uint16) * 257).save(path)
    np.testing.assert_array_equal(read_gray(path), image)
    np.testing.assert_array_equal(convert_image(path), image)


def test_fit_targets_the_models_input_size():
    gray = np.zeros((40, 40), np.uint8)
    gray[10:30, 15:25] = 200
    out = fit(gray, (8, 8))
    assert out.shape == (8, 8) and out.dtype == np.uint8
    assert out[0].max() == 0 and out[3:5, 3:5].min() > 100


# ---------------------------------------------------------------- bad input (no TensorFlow)


def _one_error_line(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "error: " in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stdout == ""
    return lines[0]


@pytest.fixture
def inputs(tmp_path):
    noise = np.random.default_rng(0).integers(0, 256, (30, 20), dtype=np.uint8)
    Image.fromarray(noise).save(tmp_path / "ok.png")
    (tmp_path / "notes.png").write_text("not a picture", encoding="utf-8")
    whole = (tmp_path / "ok.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(whole[: len(whole) // 2])  # a download that broke off
    write_idx(tmp_path / "labels-idx1-ubyte", np.arange(5, dtype=np.uint8))
    return tmp_path


@pytest.mark.component
@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["missing.png"], "missing.png: no such file"),
        (["ok.png", "notes.png"], "notes.png: not an image"),
        (["cut.png"], "cut.png: damaged image"),
        ([], "nothing to classify"),
        (["--idx", "labels-idx1-ubyte"], "not images (N, height, width)"),
        (["--idx", "notes.png"], "not an IDX file"),
        (["--idx", "nowhere-idx3-ubyte"], "--idx nowhere-idx3-ubyte: no such file"),
        (["ok.png", "--top", "0"], "--top: must be >= 1"),
        (["ok.png", "--tracking-uri", "sqlite:///absent.db"], "no tracking database at"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(inputs, args, expected):
    proc = run_module("bench.predict", *args, cwd=inputs, timeout=120, **QUIET_MLFLOW)
    line = _one_error_line(proc)
    assert expected in line
    assert not (inputs / "absent.db").exists()  # a typo must not leave an empty store behind


@pytest.mark.component
def test_no_store_in_the_current_folder_is_explained(inputs):
    line = _one_error_line(
        run_module("bench.predict", "ok.png", cwd=inputs, timeout=120, **QUIET_MLFLOW)
    )
    assert "no tracking database" in line and "mlflow.db" in line
    assert not (inputs / "mlflow.db").exists()


@pytest.mark.component
def test_password_in_tracking_uri_is_never_printed(inputs):
    with socket.socket() as s:  # a loopback port nobody listens on: refused at once
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    uri = f"http://alice:s3cret-pw@127.0.0.1:{port}"
    proc = run_module(
        "bench.predict",
        "ok.png",
        "--tracking-uri",
        uri,
        cwd=inputs,
        timeout=180,
        MLFLOW_HTTP_REQUEST_MAX_RETRIES="0",
        **QUIET_MLFLOW,
    )
    line = _one_error_line(proc)
    assert "s3cret-pw" not in proc.stderr + proc.stdout
    assert "alice:***@127.0.0.1" in line


# ---------------------------------------------------------------- untrusted flavours

_LOG_PYFUNC = """
import sys, mlflow, numpy as np
class Constant(mlflow.pyfunc.PythonModel):  # pickled by value: loading it runs this class
    def predict(self, context, model_input, params=None):
        return np.full((len(model_input), 10), 0.1)
mlflow.set_tracking_uri(sys.argv[1])
with mlflow.start_run():
    info = mlflow.pyfunc.log_model(name="model", python_model=Constant())
mlflow.register_model(info.model_uri, "pickled")
"""


@pytest.mark.component
def test_a_pickled_model_loads_only_with_trust_model(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    subprocess.run(
        [sys.executable, "-c", _LOG_PYFUNC, uri],
        cwd=tmp_path,
        env=cli_env(**QUIET_MLFLOW),
        check=True,
        capture_output=True,
        timeout=300,
    )
    write_idx(tmp_path / "images-idx3-ubyte", np.zeros((2, 28, 28), dtype=np.uint8))
    args = ("--idx", "images-idx3-ubyte", "--model", "models:/pickled/1", "--tracking-uri", uri)
    refused = run_module("bench.predict", *args, cwd=tmp_path, timeout=300, **QUIET_MLFLOW)
    line = _one_error_line(refused)
    assert "python_function" in line and "--trust-model" in line
    trusted = run_module(
        "bench.predict", *args, "--trust-model", cwd=tmp_path, timeout=300, **QUIET_MLFLOW
    )
    assert trusted.returncode == 0, trusted.stderr
    assert len(trusted.stdout.splitlines()) == 2


_LOG_KERAS = """
import sys, keras, mlflow, numpy as np
from mlflow.models import infer_signature
model = keras.Sequential([keras.Input((8, 8)), keras.layers.Flatten(),
                          keras.layers.Dense(3, activation="softmax")])
x = np.zeros((1, 8, 8), dtype=np.uint8)
mlflow.set_tracking_uri(sys.argv[1])
with mlflow.start_run():
    info = mlflow.keras.log_model(model, name="model",
                                  signature=infer_signature(x, model.predict(x, verbose=0)))
mlflow.register_model(info.model_uri, "tiny")
"""


@pytest.mark.component
def test_a_keras_model_loads_in_safe_mode_without_trust(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    subprocess.run(
        [sys.executable, "-c", _LOG_KERAS, uri],
        cwd=tmp_path,
        env=cli_env(**QUIET_MLFLOW),
        check=True,
        capture_output=True,
        timeout=300,
    )
    write_idx(tmp_path / "images-idx3-ubyte", np.zeros((2, 8, 8), dtype=np.uint8))
    proc = run_module(
        "bench.predict",
        "--idx",
        "images-idx3-ubyte",
        "--model",
        "models:/tiny/1",
        "--tracking-uri",
        uri,
        cwd=tmp_path,
        timeout=300,
        **QUIET_MLFLOW,
    )
    assert proc.returncode == 0, proc.stderr
    rows = [line.split("\t") for line in proc.stdout.splitlines()]
    assert len(rows) == 2 and all(row[1] in ("0", "1", "2") for row in rows), proc.stdout


# ---------------------------------------------------------------- the CLI on the champion (slow)


@contextlib.contextmanager
def _tracking(uri: str):
    import mlflow

    before = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    try:
        yield mlflow
    finally:
        mlflow.set_tracking_uri(before)


@pytest.fixture(scope="module")
def reference(fashion_search, test_images):
    """The champion's own class probabilities for the first 200 raw test images."""
    with _tracking(f"sqlite:///{fashion_search / 'mlflow.db'}") as mlflow:
        model = mlflow.pyfunc.load_model(CHAMPION)
        return np.asarray(model.predict(test_images[:200]), dtype=np.float64)


def _parse(stdout: str) -> list[list[str]]:
    return [line.split("\t") for line in stdout.strip().splitlines()]


def _confident(probs: np.ndarray, count: int) -> list[int]:
    """Indices of images the model is sure about, one per class as far as possible.

    Converting a PNG is lossy (resampling, JPEG); on an image the model hesitates over, a
    one-level pixel change may flip the answer, which would say nothing about the conversion.
    """
    ranked = np.sort(probs, axis=1)
    margin = ranked[:, -1] - ranked[:, -2]
    chosen, seen = [], set()
    for i in np.argsort(-margin, kind="stable"):
        cls = int(probs[i].argmax())
        if margin[i] > 0.5 and cls not in seen:
            chosen.append(int(i))
            seen.add(cls)
        if len(chosen) == count:
            break
    assert len(chosen) >= 3, "the fixture's champion is confident about too few classes"
    return chosen


@pytest.mark.slow
@needs_fashion
def test_pngs_and_idx_are_classified_like_the_pyfunc_model(
    fashion_search, test_images, reference, tmp_path
):
    picks = _confident(reference, 5)
    files = []
    for n, i in enumerate(picks):
        image = test_images[i]
        if n % 3 == 0:
            img, name = _enlarge(image, 64, Image.Resampling.BICUBIC), f"big-{i}.png"
        elif n % 3 == 1:
            img, name = _enlarge(255 - image, 64, Image.Resampling.NEAREST), f"negative-{i}.png"
        else:
            img = _enlarge(image, 90, Image.Resampling.BICUBIC).convert("RGB")
            name = f"photo-{i}.jpg"
        img.save(tmp_path / name)
        files.append(name)
    idx_file = tmp_path / "first-30-idx3-ubyte.gz"
    write_idx(idx_file, test_images[:30])

    proc = run_module(
        "bench.predict",
        *(str(tmp_path / f) for f in files),
        "--idx",
        str(idx_file),
        cwd=fashion_search,
        timeout=300,
        **QUIET_MLFLOW,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = _parse(proc.stdout)
    assert len(rows) == len(files) + 30
    for row, name, i in zip(rows, files, picks, strict=False):
        assert row[0] == str(tmp_path / name)
        assert row[1] == FASHION_CLASSES[int(reference[i].argmax())], (name, row)
    for k, row in enumerate(rows[len(files) :]):
        assert row[0] == f"{idx_file}[{k}]"
        best = int(reference[k].argmax())
        assert row[1] == FASHION_CLASSES[best]
        assert abs(float(row[2]) - reference[k, best]) <= 1e-4  # raw pixels: the same numbers


@pytest.mark.slow
@needs_fashion
def test_top_k_lists_the_most_probable_classes_in_order(
    fashion_search, test_images, reference, tmp_path
):
    idx_file = tmp_path / "three-idx3-ubyte"
    write_idx(idx_file, test_images[:3])
    proc = run_module(
        "bench.predict",
        "--idx",
        str(idx_file),
        "--top",
        "3",
        "--tracking-uri",
        f"sqlite:///{fashion_search / 'mlflow.db'}",
        cwd=tmp_path,
        timeout=300,
        **QUIET_MLFLOW,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    for k, row in enumerate(_parse(proc.stdout)):
        assert len(row) == 1 + 2 * 3
        expected = np.argsort(-reference[k], kind="stable")[:3]
        assert row[1::2] == [FASHION_CLASSES[c] for c in expected]
        probs = [float(p) for p in row[2::2]]
        assert probs == sorted(probs, reverse=True)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("model", "expected"),
    [
        ("models:/no-such-model@champion", "Registered Model with name=no-such-model not found"),
        ("models:/fashion-mnist-mlp@no-such-alias", "alias no-such-alias not found"),
        ("runs:/0123456789abcdef/model", "Run with id=0123456789abcdef not found"),
    ],
)
def test_unknown_model_uri_is_one_line_and_exit_2(fashion_search, tmp_path, model, expected):
    Image.fromarray(np.zeros((28, 28), np.uint8)).save(tmp_path / "blank.png")
    proc = run_module(
        "bench.predict",
        str(tmp_path / "blank.png"),
        "--model",
        model,
        cwd=fashion_search,
        timeout=300,
        **QUIET_MLFLOW,
    )
    line = _one_error_line(proc)
    assert expected in line and model in line


@pytest.mark.slow
@needs_fashion
def test_reader_closing_the_pipe_early_is_not_an_error(fashion_search):
    # 10,000 lines are more than a pipe holds, so the write meets the closed pipe.
    env = cli_env(**QUIET_MLFLOW)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "bench.predict",
            "--idx",
            str(FASHION_DIR / "t10k-images-idx3-ubyte.gz"),
        ],
        cwd=fashion_search,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    first = proc.stdout.readline()  # like `| head -n 1`
    proc.stdout.close()
    _, err = proc.communicate(timeout=300)
    assert first.split("\t")[0].endswith("t10k-images-idx3-ubyte.gz[0]")
    assert proc.returncode == 0 and err == "", err


# ---------------------------------------------------------------- safe mode's edges (in process)


@pytest.fixture(scope="module")
def saved_keras(tmp_path_factory):
    """A tiny keras-flavour model folder saved by MLflow, and a copy of its .keras file outside."""
    import keras
    import mlflow

    root = tmp_path_factory.mktemp("keras-model")
    model = keras.Sequential([keras.Input((8, 8)), keras.layers.Flatten(), keras.layers.Dense(3)])
    mlflow.keras.save_model(model, str(root / "model"))
    outside = root / "outside"
    outside.mkdir()
    (outside / "model.keras").write_bytes((root / "model/data/model.keras").read_bytes())
    return root


def _tampered(saved_keras, tmp_path, **flavor):
    import shutil

    import yaml

    folder = tmp_path / "model"
    shutil.copytree(saved_keras / "model", folder)
    conf = yaml.safe_load((folder / "MLmodel").read_text())
    conf["flavors"]["keras"].update(flavor)
    (folder / "MLmodel").write_text(yaml.safe_dump(conf))
    return folder


def _load(folder, trust_model=False):
    from bench.tracking.models import load_checked_model

    return load_checked_model(str(folder), f"sqlite:///{folder.parent / 'mlflow.db'}", trust_model)


@pytest.mark.component
def test_a_plain_keras_folder_loads_in_safe_mode(saved_keras, tmp_path):
    loaded = _load(_tampered(saved_keras, tmp_path))
    assert loaded.model.predict(np.zeros((2, 8, 8), np.uint8)).shape == (2, 3)


@pytest.mark.component
def test_an_exported_keras_model_needs_trust_model(saved_keras, tmp_path):
    from bench.errors import BenchError

    folder = _tampered(saved_keras, tmp_path, save_exported_model=True)
    with pytest.raises(BenchError, match="exported Keras model.*--trust-model"):
        _load(folder)


@pytest.mark.component
@pytest.mark.parametrize("data", ["../../outside", "ABSOLUTE"])
def test_a_data_path_outside_the_model_folder_is_refused(saved_keras, tmp_path, data):
    from bench.errors import BenchError

    if data == "ABSOLUTE":
        data = str(saved_keras / "outside")
    folder = _tampered(saved_keras, tmp_path, data=data)
    (tmp_path.parent / "outside").mkdir(exist_ok=True)  # where ../../outside would point
    (tmp_path.parent / "outside" / "model.keras").write_bytes(
        (saved_keras / "outside" / "model.keras").read_bytes()
    )
    with pytest.raises(BenchError, match="outside the model's folder.*--trust-model"):
        _load(folder)


@pytest.mark.component
def test_a_keras_file_linked_from_outside_the_folder_is_refused(saved_keras, tmp_path):
    # MLflow's local download already refuses such a link; the check holds for any store
    from bench.errors import BenchError
    from bench.tracking.models import keras_file

    folder = _tampered(saved_keras, tmp_path)
    target = folder / "data" / "model.keras"
    target.unlink()
    target.symlink_to(saved_keras / "outside" / "model.keras")
    with pytest.raises(BenchError, match="not a plain file inside"):
        keras_file(folder)
