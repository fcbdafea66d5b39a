"""Component tests of the Keras side: normalization layers, the MLP builder, one training run."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest

pytestmark = pytest.mark.component  # trains Keras in this process
keras = pytest.importorskip("keras")

from bench.data import Split  # noqa: E402
from bench.space import TrainSpec  # noqa: E402
from bench.training.model import build_mlp, dense_flops, normalization_layer  # noqa: E402
from bench.training.objective import COMPLETED, DIVERGED, PRUNED, train  # noqa: E402


@pytest.fixture
def pixels():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (64, 4, 5), dtype=np.uint8)
    x[:, 0, 0] = 7  # a constant pixel: zero variance
    return x


def _apply(mode, x_train, x):
    layer = normalization_layer(mode, x_train)
    flat = x.reshape(len(x), -1)
    return keras.ops.convert_to_numpy(layer(flat.astype("float32")))


def test_standard_matches_scikit_learn_standard_scaler_over_all_pixels(pixels):
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(pixels.reshape(-1, 1).astype(np.float64))
    expected = scaler.transform(pixels.reshape(-1, 1).astype(np.float64)).reshape(len(pixels), -1)
    np.testing.assert_allclose(_apply("standard", pixels, pixels), expected, rtol=1e-4, atol=1e-4)


def test_per_pixel_matches_standard_scaler_per_feature_and_guards_zero_variance(pixels):
    from sklearn.preprocessing import StandardScaler

    flat = pixels.reshape(len(pixels), -1).astype(np.float64)
    expected = StandardScaler().fit_transform(flat)  # sklearn maps constant features to 0 too
    got = _apply("per_pixel", pixels, pixels)
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
    assert np.allclose(got[:, 0], 0.0)


@pytest.mark.parametrize(
    ("mode", "lo", "hi"), [("none", 0, 255), ("minmax", 0, 1), ("symmetric", -1, 1)]
)
def test_scaling_modes(mode, lo, hi):
    x = np.array([[[0, 255]]], dtype=np.uint8)
    np.testing.assert_allclose(_apply(mode, x, x), [[lo, hi]], atol=1e-6)


def test_statistics_come_from_the_training_split_only(pixels):
    other = np.full_like(pixels, 200)
    out = _apply("standard", pixels, other)
    assert abs(out.mean() - (200 - pixels.mean()) / pixels.std()) < 1e-3


def _config(**overrides):
    config = {
        "normalization": "minmax",
        "n_layers": 2,
        "units": [16, 8],
        "activation": ["relu", "relu"],
        "dropout": [0.1, 0.0],
        "l2": 1e-4,
        "optimizer": "adam",
        "learning_rate": 1e-2,
        "batch_size": 16,
        "lr_schedule": "constant",
    }
    config.update(overrides)
    return config


def test_build_mlp_takes_uint8_and_outputs_probabilities(pixels):
    model = build_mlp(_config(), (4, 5), 3, pixels)
    assert model.inputs[0].dtype == "uint8"
    probs = model.predict(pixels[:5], verbose=0)
    assert probs.shape == (5, 3)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
    names = [layer.name for layer in model.layers]
    assert names.count("dropout_0") == 1 and "dropout_1" not in names  # rate 0: no layer
    assert model.get_layer("dense_0").kernel_regularizer is not None
    assert dense_flops(model) == 2 * (20 * 16 + 16 * 8 + 8 * 3)


def _split():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 256)
    x = np.where(y[:, None, None] == 1, 200, 30).astype(np.uint8) + rng.integers(
        0, 40, (256, 4, 4)
    ).astype(np.uint8)
    return Split(x[:192], y[:192], x[192:], y[192:])


SPEC = TrainSpec(
    max_epochs=4,
    patience=2,
    min_delta=0.0,
    validation_size=64,
    steps_per_execution=4,
    jit_compile=False,
    eval_batch_size=64,
)


def test_training_reports_every_epoch_and_learns():
    seen = []
    result = train(
        _config(), SPEC, _split(), 2, seed=3, on_epoch=lambda e, m: seen.append((e, m)) or False
    )
    assert result.status == COMPLETED
    assert [e for e, _ in seen] == list(range(result.epochs_run))
    assert set(seen[0][1]) >= {"loss", "accuracy", "val_loss", "val_accuracy", "learning_rate"}
    assert result.value > 0.9 and result.value == result.history["val_accuracy"][result.best_epoch]
    assert result.samples_trained == 192 * result.epochs_run and result.param_count > 0


def test_hook_returning_true_prunes_after_that_epoch():
    result = train(_config(), SPEC, _split(), 2, seed=3, on_epoch=lambda e, m: e == 1)
    assert result.status == PRUNED and result.epochs_run == 2 and "epoch 1" in result.reason


def test_divergence_stops_within_the_epoch():
    config = _config(
        normalization="none", optimizer="sgd", learning_rate=1e6, l2=0.0, dropout=[0.0, 0.0]
    )
    result = train(config, SPEC, _split(), 2, seed=0)
    assert result.status == DIVERGED and math.isnan(result.value)
    assert result.epochs_run <= 1 and (
        "loss became" in result.reason or "non-finite" in result.reason
    )


def test_same_seed_same_result():
    a = train(_config(), SPEC, _split(), 2, seed=5)
    b = train(_config(), SPEC, _split(), 2, seed=5)
    assert a.history["loss"] == pytest.approx(b.history["loss"], rel=1e-5)


def test_refit_without_validation_trains_the_fixed_epoch_count():
    # a refit: every training image, no validation split, so no early stopping and no score;
    # the learning-rate schedule may span the validation run's longer budget
    s = _split()
    full = Split(
        np.concatenate([s.x_train, s.x_val]), np.concatenate([s.y_train, s.y_val]), None, None
    )
    spec = TrainSpec(
        max_epochs=3,
        patience=1,
        min_delta=0.5,
        validation_size=300,
        steps_per_execution=4,
        jit_compile=False,
    )
    result = train(_config(lr_schedule="cosine"), spec, full, 2, seed=0, schedule_epochs=9)
    assert result.status == COMPLETED
    assert result.epochs_run == 3 and result.best_epoch == 2  # min_delta 0.5 would stop a val run
    assert math.isnan(result.value)
    assert "val_loss" not in result.history
    lr = result.history["learning_rate"]
    assert lr[-1] < lr[0] and lr[-1] > 0.5 * lr[0]  # a third of a 9-epoch cosine: barely decayed


@pytest.mark.parametrize(
    ("schedule", "early_stop_decaying", "epochs"),
    [("constant", False, 2), ("cosine", False, 5), ("cosine", True, 2), ("linear", False, 5)],
)
def test_early_stopping_spares_decaying_schedules_unless_asked(
    schedule, early_stop_decaying, epochs
):
    # min_delta 0.5: no epoch counts as an improvement, so patience 1 ends a run after 2 epochs;
    # a decaying learning rate trains to its schedule's end (5) unless the space asks otherwise
    spec = TrainSpec(
        max_epochs=5,
        patience=1,
        min_delta=0.5,
        early_stop_decaying=early_stop_decaying,
        validation_size=300,
        steps_per_execution=4,
        jit_compile=False,
    )
    result = train(_config(lr_schedule=schedule), spec, _split(), 2, seed=0)
    assert result.status == COMPLETED and result.epochs_run == epochs
    assert len(result.history["val_accuracy"]) == epochs


def test_a_smoothed_score_ranks_epochs_by_the_mean_of_the_last_k():
    # labels half noise, so validation accuracy moves from epoch to epoch
    rng = np.random.default_rng(3)
    split = _split()
    y_val = np.where(rng.random(len(split.y_val)) < 0.4, 1 - split.y_val, split.y_val)
    split = Split(split.x_train, split.y_train, split.x_val, y_val)
    spec = replace(SPEC, max_epochs=7, patience=7, smooth_epochs=3)
    result = train(_config(learning_rate=3e-2), spec, split, 2, seed=0)
    val = result.history["val_accuracy"]
    smooth = result.history["smoothed_val_accuracy"]
    assert len(val) == len(smooth) == 7
    for i, s in enumerate(smooth):
        window = val[max(0, i - 2) : i + 1]
        assert s == pytest.approx(sum(window) / len(window))
    # the score and the kept weights are those of the best 3-epoch mean, not the best epoch
    assert result.value == pytest.approx(max(smooth))
    assert result.best_epoch == smooth.index(max(smooth))
    _, acc = result.model.evaluate(split.x_val, split.y_val, verbose=0)
    assert acc == pytest.approx(val[result.best_epoch], abs=1e-6)


@pytest.mark.parametrize(("min_epochs", "epochs"), [(0, 2), (4, 4), (9, 6)])
def test_min_epochs_holds_early_stopping_back_but_keeps_the_best_epoch(min_epochs, epochs):
    # min_delta 0.5: no epoch improves on the first, so patience 1 would stop after 2 epochs
    spec = replace(SPEC, max_epochs=6, patience=1, min_delta=0.5, min_epochs=min_epochs)
    result = train(_config(), spec, _split(), 2, seed=0)
    assert result.status == COMPLETED and result.epochs_run == epochs
    assert result.best_epoch == 0  # the best epoch is tracked from the first, as before
    assert result.value == pytest.approx(result.history["val_accuracy"][0])


def test_min_epochs_does_not_hold_back_pruning():
    spec = replace(SPEC, max_epochs=6, patience=1, min_epochs=6)
    result = train(_config(), spec, _split(), 2, seed=0, on_epoch=lambda epoch, m: epoch == 1)
    assert result.status == PRUNED and result.epochs_run == 2
