"""A controlled comparison run by hand, outside bench: the check on ``bench.ablate --cross``.

Trains a 2 x 3 corner of the normalization x optimizer crossing around
``benchmarks/ablate_base.yaml`` (a 784-256-256-10 ReLU MLP, learning rate 1e-3, batch 256, at
most 20 epochs, early stopping with patience 5 and the best epoch restored) with plain Keras and
NumPy only: its own IDX reader, its own split (the last 5,000 training images, not bench's
stratified one), its own seeds. Then it prints each cell's mean validation accuracy over the
seeds and the interaction contrast with a paired t interval, as JSON, for the closing note to
set beside the tool's numbers.

    python benchmarks/crossed_by_hand.py --seeds 3 --out /tmp/by-hand.json
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
from pathlib import Path

import numpy as np

ROOT = Path("/usr/share/datasets/fashion-mnist")


def idx(name: str) -> np.ndarray:
    with gzip.open(ROOT / name, "rb") as f:
        raw = f.read()
    ndim = raw[3]
    shape = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim).reshape(shape)


def train_one(x_tr, y_tr, x_va, y_va, normalization: str, optimizer: str, seed: int) -> float:
    import keras

    keras.utils.set_random_seed(seed)
    scale = {"none": 1.0, "minmax": 1 / 255.0}[normalization]
    model = keras.Sequential(
        [
            keras.Input((784,)),
            keras.layers.Rescaling(scale),
            keras.layers.Dense(256, activation="relu"),
            keras.layers.Dense(256, activation="relu"),
            keras.layers.Dense(10, activation="softmax"),
        ]
    )
    opt = {
        "sgd": lambda: keras.optimizers.SGD(1e-3),
        "momentum": lambda: keras.optimizers.SGD(1e-3, momentum=0.9, nesterov=True),
        "adam": lambda: keras.optimizers.Adam(1e-3),
    }[optimizer]()
    model.compile(opt, "sparse_categorical_crossentropy", metrics=["accuracy"])
    stop = keras.callbacks.EarlyStopping(
        "val_accuracy", patience=5, mode="max", restore_best_weights=True
    )
    hist = model.fit(
        x_tr, y_tr, batch_size=256, epochs=20, validation_data=(x_va, y_va),
        callbacks=[stop], verbose=0,
    )  # fmt: skip
    return float(max(hist.history["val_accuracy"]))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--out")
    args = p.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from scipy import stats

    x = idx("train-images-idx3-ubyte.gz").reshape(-1, 784).astype("float32")
    y = idx("train-labels-idx1-ubyte.gz").astype("int64")
    x_tr, y_tr, x_va, y_va = x[:-5000], y[:-5000], x[-5000:], y[-5000:]
    cells: dict[str, list[float]] = {}
    for seed in range(args.seeds):
        for norm in ("minmax", "none"):
            for opt in ("adam", "sgd", "momentum"):
                acc = train_one(x_tr, y_tr, x_va, y_va, norm, opt, seed)
                cells.setdefault(f"{norm},{opt}", []).append(acc)
                print(f"seed {seed} {norm:>6} {opt:>4}: {acc:.4f}", flush=True)
    a = {k: np.array(v) for k, v in cells.items()}
    out: dict = {"cells": {k: round(float(v.mean()), 4) for k, v in a.items()}}
    under_adam = a["none,adam"] - a["minmax,adam"]
    out["none_minus_minmax_under_adam"] = round(float(under_adam.mean()), 4)
    for opt in ("sgd", "momentum"):
        under = a[f"none,{opt}"] - a[f"minmax,{opt}"]
        contrast = under - under_adam
        n = len(contrast)
        half = stats.t.ppf(0.975, n - 1) * contrast.std(ddof=1) / np.sqrt(n)
        out[f"none_minus_minmax_under_{opt}"] = round(float(under.mean()), 4)
        out[f"interaction_{opt}_vs_adam"] = [
            round(float(x), 4) for x in (contrast.mean(), contrast.mean() - half,
                                         contrast.mean() + half)
        ]  # fmt: skip
    print(json.dumps(out))
    if args.out:
        Path(args.out).write_text(json.dumps(out) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
