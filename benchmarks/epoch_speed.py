"""Seconds per epoch of one MLP under different Keras settings, on real Fashion-MNIST.

    python benchmarks/epoch_speed.py [--units 300 100] [--epochs 3] [--threads 1]

Each setting trains a fresh model for ``--epochs`` epochs; the first epoch (which pays tracing
and XLA compilation) is reported apart from the steady-state mean of the others. Run it on a
quiet machine; absolute numbers hold only for the machine kind they were taken on.
"""

from __future__ import annotations

import argparse
import itertools
import os
import time


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--units", type=int, nargs="+", default=[300, 100])
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--batches", type=int, nargs="+", default=[32, 128, 256, 512])
    p.add_argument("--jit", nargs="+", default=["false", "auto", "true"])
    p.add_argument("--spe", type=int, nargs="+", default=[1, 32])
    args = p.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

    from bench.data import load_dataset, validation_split
    from bench.model import configure_threads

    configure_threads(args.threads)
    import keras

    from bench.model import build_mlp, make_optimizer

    ds = load_dataset("fashion-mnist")
    split = validation_split(ds, 5000, 0)
    n = len(split.x_train)
    config = {"normalization": "standard", "n_layers": len(args.units), "units": args.units,
              "activation": ["relu"] * len(args.units), "dropout": [0.0] * len(args.units),
              "l2": 0.0, "optimizer": "adam", "learning_rate": 1e-3, "lr_schedule": "constant"}
    print(f"model 784-{'-'.join(map(str, args.units))}-10, {n} images, {args.threads} thread(s)")
    print(f"{'batch':>5} {'jit':>5} {'spe':>4} {'first s':>8} {'s/epoch':>8} {'samples/s':>10}")
    for batch, jit, spe in itertools.product(args.batches, args.jit, args.spe):
        jit_value = {"true": True, "false": False}.get(jit, "auto")
        keras.utils.set_random_seed(0)
        model = build_mlp(config, (28, 28), 10, split.x_train)
        model.compile(make_optimizer("adam", 1e-3, "constant", 1), "sparse_categorical_crossentropy",
                      metrics=["accuracy"], jit_compile=jit_value, steps_per_execution=spe)
        times = []

        class Clock(keras.callbacks.Callback):
            def on_epoch_begin(self, epoch, logs=None):
                self.t = time.perf_counter()

            def on_epoch_end(self, epoch, logs=None):
                times.append(time.perf_counter() - self.t)

        model.fit(split.x_train, split.y_train, batch_size=batch, epochs=args.epochs, verbose=0,
                  validation_data=(split.x_val, split.y_val), validation_batch_size=2048,
                  callbacks=[Clock()])
        steady = sum(times[1:]) / max(1, len(times) - 1)
        print(f"{batch:>5} {jit:>5} {spe:>4} {times[0]:>8.2f} {steady:>8.2f} {n / steady:>10.0f}",
              flush=True)


if __name__ == "__main__":
    main()
