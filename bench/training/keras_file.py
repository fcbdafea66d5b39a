"""Loading a plain ``.keras`` file in Keras' safe mode (for ``bench.predict``)."""

from __future__ import annotations


def load_keras_file(path: str):
    """Load a ``.keras`` file with ``safe_mode=True``: its config is read, no lambda or pickled
    Python code is deserialized, and it is not compiled (prediction needs no optimizer)."""
    from bench.training.model import import_keras

    keras = import_keras()
    return keras.saving.load_model(path, compile=False, safe_mode=True)
