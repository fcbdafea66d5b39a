"""Loading a registered model to predict with it: its input size and class names from the
registered version's tags, TensorFlow's native log lines kept off the terminal.

Only the ``keras`` flavour loads unless the caller trusts the model (other flavours unpickle).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys
import tempfile
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from bench.errors import BenchError, redact
from bench.images import DEFAULT_SIZE

if TYPE_CHECKING:
    import numpy as np


@dataclass(frozen=True)
class Champion:
    """A loaded model (anything with ``predict(images)``), its input size and class names."""

    model: object
    size: tuple[int, int]
    classes: tuple[str, ...] | None  # None: decide from the number of outputs


def _first_line(exc: BaseException) -> str:
    """The first line of an exception's message, secrets masked before it is shortened."""
    text = getattr(exc, "message", None) or str(exc)
    lines = [ln for ln in str(text).strip().splitlines() if ln.strip()]
    return redact(lines[0])[:300] if lines else type(exc).__name__


def _check_store(model_uri: str, tracking_uri: str) -> None:
    """Registry and run URIs need the store; MLflow would create a missing sqlite file empty."""
    if not model_uri.startswith(("models:/", "runs:/")) or not tracking_uri.startswith(
        "sqlite:///"
    ):
        return
    db = Path(tracking_uri[len("sqlite:///") :])
    if not db.is_file():
        raise BenchError(
            f"--tracking-uri {redact(tracking_uri)}: no tracking database at "
            f"{db.resolve()}; run python -m bench.search here first, or point "
            "--tracking-uri (or MLFLOW_TRACKING_URI) at the store holding the model"
        )


@contextlib.contextmanager
def quiet_model() -> Iterator[None]:
    """Silence TensorFlow's native log lines and Keras' progress bars while the model works.

    Native code writes to file descriptor 2 directly, so that descriptor is pointed at a temporary
    file; if something other than a user error escapes, what was written there is replayed.
    """
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        replay = False
        try:
            with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                yield
        except BenchError:
            raise
        except BaseException:
            replay = True
            raise
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            if replay:
                sink.seek(0)
                sys.stderr.write(sink.read().decode("utf-8", "replace"))


def _tag_classes(tags: dict[str, str]) -> tuple[str, ...] | None:
    from bench.data import DIGIT_CLASSES, FASHION_CLASSES

    raw = tags.get("class_names")
    if raw:
        try:
            names = json.loads(raw)
        except ValueError:
            names = None
        if isinstance(names, list) and names and all(isinstance(n, str) for n in names):
            return tuple(names)
    return {"fashion-mnist": FASHION_CLASSES, "mnist": DIGIT_CLASSES, "digits": DIGIT_CLASSES}.get(
        tags.get("dataset", "")
    )


def _input_size(shape: tuple[int, ...] | None) -> tuple[int, int]:
    if shape is None:
        return DEFAULT_SIZE
    if len(shape) != 3 or any(int(d) < 1 for d in shape[1:]):
        raise BenchError(
            f"the model takes input of shape {shape}; bench.predict feeds (N, height, width) images"
        )
    return int(shape[1]), int(shape[2])


def load_champion(model_uri: str, tracking_uri: str, trust_model: bool = False) -> Champion:
    """Load a model and find its input size and class names.

    Args:
        model_uri: An MLflow model URI (``models:/NAME@ALIAS``, ``runs:/ID/model``, ...).
        tracking_uri: The tracking store holding it.
        trust_model: Allow flavours other than keras, which load by unpickling.

    Raises:
        BenchError: the store is missing or unreachable, the URI names nothing, or the model is
            not a Keras model and ``trust_model`` is false.
    """
    _check_store(model_uri, tracking_uri)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "ERROR")  # read when mlflow is first imported
    import logging

    from bench.tracking.models import load_checked_model, version_tags

    for noisy in ("mlflow", "alembic", "absl", "tensorflow", "keras"):
        logging.getLogger(noisy).setLevel(logging.CRITICAL)
    try:
        loaded = load_checked_model(model_uri, tracking_uri, trust_model)
        size = _input_size(loaded.input_shape)
        classes = _tag_classes(version_tags(model_uri, tracking_uri))
    except BenchError:
        raise
    except Exception as exc:  # noqa: BLE001 - MLflow, SQLAlchemy, HTTP and IO errors alike
        raise BenchError(
            f"--model {redact(model_uri)} (tracking {redact(tracking_uri)}): "
            f"cannot load it ({_first_line(exc)})"
        ) from None
    return Champion(loaded.model, size, classes)


def class_names(champion: Champion, n_classes: int) -> tuple[str, ...]:
    """The tags' names when they fit, Fashion-MNIST's for 10 classes, else the class numbers."""
    from bench.data import FASHION_CLASSES

    if champion.classes is not None and len(champion.classes) == n_classes:
        return champion.classes
    if n_classes == len(FASHION_CLASSES):
        return FASHION_CLASSES
    return tuple(str(i) for i in range(n_classes))


def predict(champion: Champion, images: np.ndarray) -> np.ndarray:
    """Class probabilities, shape (N, classes), for uint8 images of the model's input size."""
    import numpy as np

    probs = np.asarray(champion.model.predict(images), dtype=np.float64)
    if probs.ndim != 2 or len(probs) != len(images):
        raise BenchError(
            f"the model returned shape {probs.shape} for {len(images)} images; "
            "expected one row of class probabilities per image"
        )
    return probs
