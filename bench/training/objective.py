"""One trial's training: configuration in, plain :class:`TrialResult` out.

Knows neither Optuna nor MLflow. The caller passes an ``on_epoch`` hook that receives each
epoch's metrics and answers whether to stop (that is how pruning and tracking hang on it).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from bench.records import COMPLETED, DIVERGED, PRUNED  # the one status vocabulary

if TYPE_CHECKING:
    from bench.data import Split
    from bench.space import TrainSpec

EpochHook = Callable[[int, dict[str, float]], bool]


@dataclass
class TrialResult:
    """What one training run produced."""

    status: str  # completed | pruned | diverged
    value: float  # validation metric of the returned weights (nan when diverged)
    best_epoch: int
    epochs_run: int
    train_seconds: float
    param_count: int
    flops_per_sample: int  # forward pass, Dense layers
    samples_trained: int
    history: dict[str, list[float]] = field(default_factory=dict)
    model: Any = None
    reason: str = ""

    @property
    def training_flops(self) -> float:
        """Forward + backward FLOPs actually spent (backward ~ 2x forward)."""
        return 3.0 * self.flops_per_sample * self.samples_trained


def _finite(x: Any) -> bool:
    try:
        return math.isfinite(float(x))
    except (TypeError, ValueError):
        return False


def train(
    config: dict[str, Any],
    spec: TrainSpec,
    split: Split,
    n_classes: int,
    seed: int,
    on_epoch: EpochHook | None = None,
    metric: str = "val_accuracy",
    tensorboard_dir: str | None = None,
    schedule_epochs: int | None = None,
    on_batch: Callable[[], None] | None = None,
) -> TrialResult:
    """Build and fit one MLP with early stopping; stop early when ``on_epoch`` says so.

    Args:
        config: Model configuration (see :func:`bench.space.suggest`).
        spec: Epoch budget, early stopping and performance settings.
        split: Training and validation arrays (raw uint8 pixels).
        n_classes: Number of classes.
        seed: Seeds Python, NumPy and the backend for this trial.
        on_epoch: Called after each epoch with (epoch, metrics); returning True stops the trial
            as pruned.
        metric: ``val_accuracy`` (maximised) or ``val_loss`` (minimised).
        tensorboard_dir: When given, Keras' TensorBoard callback writes there.
        schedule_epochs: Epochs the learning-rate schedule spans (default ``spec.max_epochs``);
            a refit trains fewer epochs on the schedule its validation run followed.
        on_batch: Called after every training batch; an exception it raises ends training and
            propagates (the engine raises KeyboardInterrupt there after Ctrl-C, so a signal
            never lands inside Keras or a tracking call).

    A split without validation images (``split.x_val is None``, a refit on all training images)
    trains exactly ``spec.max_epochs`` epochs with no early stopping and keeps the last weights.

    Returns:
        The result, with the model holding the best epoch's weights.
    """
    import keras

    from bench.training.model import build_mlp, make_optimizer

    keras.utils.set_random_seed(seed)
    mode = "max" if metric == "val_accuracy" else "min"
    n = len(split.x_train)
    batch = int(config["batch_size"])
    steps_per_epoch = max(1, math.ceil(n / batch))
    model = build_mlp(config, split.x_train.shape[1:], n_classes, split.x_train)
    model.compile(
        optimizer=make_optimizer(
            config["optimizer"],
            float(config["learning_rate"]),
            config["lr_schedule"],
            steps_per_epoch * (schedule_epochs or spec.max_epochs),
        ),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
        jit_compile=spec.jit_compile,
        steps_per_execution=min(spec.steps_per_execution, steps_per_epoch),
    )
    validate = split.x_val is not None
    # A decaying learning rate gains most in its last epochs; a plateau half-way is no reason
    # to stop it (measured: patience 5 ended 2 of 9 cosine runs 8-20 epochs early, 0.2-0.7
    # points short). Such runs keep only the best-epoch restore unless the space asks otherwise.
    decaying = config.get("lr_schedule", "constant") != "constant"
    patience = spec.max_epochs if decaying and not spec.early_stop_decaying else spec.patience
    # with ``smooth_epochs: K`` the score, early stopping and the kept weights follow the mean of
    # the last K epochs' metric (written into each epoch's logs by Watch, which runs first)
    smooth = spec.smooth_epochs if validate else 1  # the space file checks it is >= 1
    scored = smoothed_name(metric) if smooth > 1 else metric
    watch = _watch_class()(on_epoch, on_batch, metric, smooth)
    # ``min_epochs``: early stopping may not end a run before it has trained that many epochs,
    # so a run cannot stop itself short of a pruning rung and count as completed (the best
    # epoch is still tracked from the first; pruning and divergence still stop it at once)
    stopper = _stopper_class()(
        not_before=spec.min_epochs,
        stopped_by_watch=lambda: watch.pruned or watch.diverged,
        monitor=scored,
        mode=mode,
        patience=patience,
        min_delta=spec.min_delta,
        restore_best_weights=True,
    )
    callbacks = [watch, stopper] if validate else [watch]
    if tensorboard_dir:
        callbacks.append(keras.callbacks.TensorBoard(log_dir=tensorboard_dir))
    start = time.perf_counter()
    model.fit(
        split.x_train,
        split.y_train,
        batch_size=batch,
        epochs=spec.max_epochs,
        validation_data=(split.x_val, split.y_val) if validate else None,
        validation_batch_size=spec.eval_batch_size,
        callbacks=callbacks,
        verbose=0,
    )
    seconds = time.perf_counter() - start
    history = watch.history
    epochs = len(history.get("loss", []))
    best = (stopper.best_epoch if validate else epochs - 1) if epochs else 0
    if watch.diverged:
        status, value, reason = DIVERGED, float("nan"), watch.reason
    else:
        value = float(history[scored][best]) if epochs and validate else float("nan")
        status = PRUNED if watch.pruned else COMPLETED
        reason = f"pruned at epoch {epochs - 1}" if watch.pruned else ""
    return TrialResult(
        status,
        value,
        best,
        epochs,
        seconds,
        int(model.count_params()),
        _flops(model),
        watch.samples(n),
        history,
        model,
        reason,
    )


def smoothed_name(metric: str) -> str:
    """The history key of a metric's trailing mean (``smoothed_val_accuracy``)."""
    return f"smoothed_{metric}"


def trailing_mean(values: list[float], k: int) -> float:
    """The mean of the last ``k`` values (of all of them while fewer than ``k`` exist)."""
    tail = values[-k:]
    return sum(tail) / len(tail)


def _flops(model) -> int:
    from bench.training.model import dense_flops

    return dense_flops(model)


def _stopper_class():
    """Keras' EarlyStopping that does not stop a run before ``not_before`` epochs."""
    import keras

    class Stopper(keras.callbacks.EarlyStopping):
        def __init__(self, not_before: int, stopped_by_watch: Callable[[], bool], **kwargs):
            super().__init__(**kwargs)
            self.not_before = not_before
            self.stopped_by_watch = stopped_by_watch

        def on_epoch_end(self, epoch, logs=None):
            super().on_epoch_end(epoch, logs)
            too_soon = epoch + 1 < self.not_before and self.stopped_epoch == epoch
            if too_soon and self.model.stop_training and not self.stopped_by_watch():
                self.model.stop_training = False  # patience ran out early: train on, best kept
                self.stopped_epoch = 0

    return Stopper


def _watch_class():
    """The Keras callback class, built on first use so importing this module stays cheap."""
    import keras

    class Watch(keras.callbacks.Callback):
        """Collects per-epoch metrics, stops on divergence, relays epochs to the hook."""

        def __init__(
            self,
            hook: EpochHook | None,
            on_batch: Callable[[], None] | None,
            metric: str = "val_accuracy",
            smooth: int = 1,
        ):
            super().__init__()
            self.metric = metric
            self.smooth = smooth
            self.hook = hook
            self.on_batch = on_batch
            self.history: dict[str, list[float]] = {}
            self.pruned = False
            self.diverged = False
            self.reason = ""

        def samples(self, n: int) -> int:
            return len(self.history.get("loss", [])) * n

        def on_train_batch_end(self, batch, logs=None):
            loss = (logs or {}).get("loss")
            if loss is not None and not _finite(loss):
                self.diverged = True
                self.reason = (
                    f"loss became {float(loss)} during epoch {len(self.history.get('loss', []))}"
                )
                self.model.stop_training = True
            if self.on_batch is not None:
                self.on_batch()

        def on_epoch_end(self, epoch, logs=None):
            if self.smooth > 1 and logs is not None and self.metric in logs:
                past = [*self.history.get(self.metric, []), float(logs[self.metric])]
                logs[smoothed_name(self.metric)] = trailing_mean(past, self.smooth)
            metrics = {k: float(v) for k, v in (logs or {}).items()}
            metrics["learning_rate"] = float(
                keras.ops.convert_to_numpy(self.model.optimizer.learning_rate)
            )
            for k, v in metrics.items():
                self.history.setdefault(k, []).append(v)
            if not all(_finite(metrics.get(k)) for k in ("loss", "val_loss") if k in metrics):
                self.diverged = True
                self.reason = self.reason or f"non-finite loss at epoch {epoch}"
                self.model.stop_training = True
                return
            if self.hook is not None and self.hook(epoch, metrics):
                self.pruned = True
                self.model.stop_training = True

    return Watch
