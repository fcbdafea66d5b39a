"""Keras models: the input normalization and the MLP. One of the few modules that import Keras.

The normalization is a layer inside the model, built from Keras' own layers (``Rescaling``,
``Normalization``), so a saved model takes raw uint8 pixels and loads in Keras' safe mode without
custom objects.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

_EPS = 1e-7


def import_tensorflow():
    """Import TensorFlow without its C++ start-up chatter on the terminal.

    TensorFlow's native code writes to file descriptor 2 before its logging is configured
    (``absl::InitializeLog``, oneDNN, CUDA stubs), past ``TF_CPP_MIN_LOG_LEVEL``. The import runs
    with descriptor 2 pointed at /dev/null, unless ``BENCH_VERBOSE`` is set (``--verbose``);
    Python-level warnings and errors after the import reach the terminal as usual.
    """
    import sys

    if "tensorflow" in sys.modules or os.environ.get("BENCH_VERBOSE"):
        import tensorflow as tf

        return tf
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        import tensorflow as tf
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)
    return tf


def import_keras():
    """Import Keras (and TensorFlow, its backend) without TensorFlow's start-up chatter."""
    import_tensorflow()
    import keras

    return keras


def configure_threads(intra_op: int | None, inter_op: int | None = None) -> None:
    """Pin TensorFlow's thread pools; must run before TensorFlow executes anything.

    Args:
        intra_op: Threads one op may use (1 when several workers share the cores).
        inter_op: Ops run concurrently (defaults to ``intra_op``).
    """
    tf = import_tensorflow()

    if intra_op:
        try:
            tf.config.threading.set_intra_op_parallelism_threads(intra_op)
            tf.config.threading.set_inter_op_parallelism_threads(inter_op or intra_op)
        except RuntimeError:
            pass  # already initialised in this process; the earlier setting stands


def normalization_stats(
    mode: str, x_train: np.ndarray
) -> tuple[np.ndarray | float, np.ndarray | float]:
    """Mean and variance for ``standard``/``per_pixel`` from the training split only.

    ``standard`` uses one mean/std over all pixels (StandardScaler on ``reshape(-1, 1)``);
    ``per_pixel`` one per feature, with zero-variance pixels given variance 1 so they map to 0.
    """
    flat = x_train.reshape(len(x_train), -1).astype(np.float64)
    if mode == "standard":
        return float(flat.mean()), max(float(flat.var()), _EPS)
    if mode == "per_pixel":
        var = flat.var(axis=0)
        return flat.mean(axis=0), np.where(var < _EPS, 1.0, var)
    raise ValueError(f"mode {mode!r} has no statistics")


def normalization_layer(mode: str, x_train: np.ndarray):
    """The Keras layer that maps flattened raw pixels to the model's input scale."""
    import keras

    if mode == "none":
        return keras.layers.Rescaling(1.0, name="to_float")  # a cast: raw 0..255 values
    if mode == "minmax":
        return keras.layers.Rescaling(1.0 / 255.0, name="minmax")
    if mode == "symmetric":
        return keras.layers.Rescaling(1.0 / 127.5, offset=-1.0, name="symmetric")
    if mode in ("standard", "per_pixel"):
        mean, var = normalization_stats(mode, x_train)
        return keras.layers.Normalization(mean=mean, variance=var, name=mode)
    raise ValueError(f"unknown normalization {mode!r}")


def build_mlp(
    config: dict[str, Any], input_shape: tuple[int, ...], n_classes: int, x_train: np.ndarray
):
    """Build the (uncompiled) MLP for one configuration.

    Args:
        config: The model configuration from :func:`bench.space.suggest`: normalization,
            n_layers, per-layer units/activation/dropout lists, l2.
        input_shape: One image's shape, e.g. ``(28, 28)``.
        n_classes: Size of the softmax output.
        x_train: Training images, for the normalization statistics.

    Returns:
        A ``keras.Model`` from uint8 images to class probabilities.
    """
    import keras

    inputs = keras.Input(shape=input_shape, dtype="uint8", name="pixels")
    x = keras.layers.Flatten(name="flatten")(inputs)
    x = normalization_layer(config["normalization"], x_train)(x)
    l2 = float(config.get("l2", 0.0))
    for i in range(config["n_layers"]):
        x = keras.layers.Dense(
            int(config["units"][i]),
            activation=config["activation"][i],
            kernel_regularizer=keras.regularizers.L2(l2) if l2 > 0 else None,
            name=f"dense_{i}",
        )(x)
        rate = float(config["dropout"][i])
        if rate > 0:
            x = keras.layers.Dropout(rate, name=f"dropout_{i}")(x)
    outputs = keras.layers.Dense(n_classes, activation="softmax", name="probabilities")(x)
    return keras.Model(inputs, outputs, name="mlp")


def average_models(models: list):
    """One model whose output is the mean of the members' class probabilities.

    Each member keeps its own input scaling, so the ensemble takes the same raw uint8 images.
    Returned uncompiled: it is saved and served as it is (no optimizer to store).
    """
    import keras

    first = models[0]
    inputs = keras.Input(shape=first.input_shape[1:], dtype=first.inputs[0].dtype, name="pixels")
    outputs = []
    for i, member in enumerate(models):
        member.name = f"member_{i}"  # loaded members all carry the name "mlp"
        outputs.append(member(inputs))
    mean = keras.layers.Average(name="probabilities")(outputs)
    return keras.Model(inputs, mean, name=f"mean_of_{len(models)}_mlps")


def make_optimizer(name: str, learning_rate: float, schedule: str, decay_steps: int):
    """An optimizer with an optional learning-rate decay over ``decay_steps`` steps."""
    import keras

    lr: Any = learning_rate
    if schedule == "cosine":
        lr = keras.optimizers.schedules.CosineDecay(learning_rate, decay_steps)
    elif schedule == "linear":
        lr = keras.optimizers.schedules.PolynomialDecay(learning_rate, decay_steps, 0.0, power=1.0)
    if name == "sgd":
        return keras.optimizers.SGD(lr)
    if name == "momentum":
        return keras.optimizers.SGD(lr, momentum=0.9, nesterov=True)
    if name == "adam":
        return keras.optimizers.Adam(lr)
    if name == "adamw":
        return keras.optimizers.AdamW(lr)
    if name == "rmsprop":
        return keras.optimizers.RMSprop(lr)
    raise ValueError(f"unknown optimizer {name!r}")


def dense_flops(model) -> int:
    """Multiply-add FLOPs of one forward pass of one sample through the Dense layers."""
    total = 0
    for layer in model.layers:
        if layer.__class__.__name__ == "Dense":
            fan_in, fan_out = layer.kernel.shape
            total += 2 * int(fan_in) * int(fan_out)
    return total
