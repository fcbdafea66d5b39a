"""Training: the only package that imports Keras and TensorFlow.

A job's configuration, seed and split go in; a plain :class:`TrialResult` comes out. Nothing here
knows Optuna, MLflow or the engine. Importing the package is cheap: Keras loads on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from bench.training.objective import COMPLETED, DIVERGED, PRUNED, TrialResult, train

if TYPE_CHECKING:
    from bench.data import Dataset


def configure_threads(intra_op: int | None, inter_op: int | None = None) -> None:
    """Pin TensorFlow's thread pools (see :func:`bench.training.model.configure_threads`)."""
    from bench.training.model import configure_threads as _configure

    _configure(intra_op, inter_op)


def download_dataset(name: str) -> None:
    """Let Keras fetch ``fashion-mnist`` or ``mnist`` into its cache (only works online).

    The downloader :func:`bench.data.load_dataset` takes: the files land where it looks
    (:func:`bench.data.keras_cache_dir`). TensorFlow is imported without its start-up chatter,
    and Keras' "Downloading data from" line and progress bar are hidden unless ``--verbose``
    (``BENCH_VERBOSE``): offline, a missing dataset is one line from bench, nothing else.
    """
    import contextlib
    import io
    import os

    from bench.training.model import import_keras

    keras = import_keras()
    loader = {"fashion-mnist": keras.datasets.fashion_mnist, "mnist": keras.datasets.mnist}[name]
    if os.environ.get("BENCH_VERBOSE"):
        loader.load_data()
        return
    with contextlib.redirect_stdout(io.StringIO()):
        loader.load_data()


def average_models(models: list):
    """The mean of several models' probabilities, as one model (see ``model.average_models``)."""
    from bench.training.model import average_models as _average

    return _average(models)


def evaluate(model, dataset: Dataset) -> tuple[float, float]:
    """Test loss and accuracy of a model on the dataset's test split."""
    if not getattr(model, "compiled", True):  # an ensemble is saved uncompiled
        model.compile(loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    loss, acc = model.evaluate(dataset.x_test, dataset.y_test, batch_size=2048, verbose=0)
    return float(loss), float(acc)


def confusion(model, dataset: Dataset) -> list[list[int]]:
    """Test-set confusion matrix (rows: true class, columns: predicted class)."""
    import numpy as np

    predicted = model.predict(dataset.x_test, batch_size=2048, verbose=0).argmax(axis=1)
    k = dataset.n_classes
    counts = np.bincount(dataset.y_test * k + predicted, minlength=k * k).reshape(k, k)
    return counts.tolist()


__all__ = [
    "COMPLETED",
    "DIVERGED",
    "PRUNED",
    "TrialResult",
    "average_models",
    "configure_threads",
    "confusion",
    "download_dataset",
    "evaluate",
    "train",
]
