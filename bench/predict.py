"""``python -m bench.predict``: classify images with the registered champion (or any MLflow model).

Photos are fitted the way Fashion-MNIST's images were made (:mod:`bench.images` says how); ``--idx
FILE`` passes an IDX image file's pixels unchanged. Output: one tab-separated line per image: the
file (or ``FILE[index]``), the class name and its probability, then the next ``--top`` classes.
Class names come from the registered version's ``class_names`` tag (a JSON list), else from its
``dataset`` tag, else Fashion-MNIST's names when the model has 10 classes.

TensorFlow and MLflow are imported only once the inputs are read, so ``--help`` and bad input
answer at once.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import TYPE_CHECKING

from bench.cli import Parser, positive_int, run
from bench.errors import EXIT_OK, EXIT_USAGE, BenchError, redact

if TYPE_CHECKING:
    pass

DEFAULT_MODEL = "models:/fashion-mnist-mlp@champion"


# ---------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    p = Parser(
        prog="python -m bench.predict",
        description="Classify images with a model from the MLflow registry (by default "
        "the champion). PNG/JPEG files of any size are converted the way "
        "Fashion-MNIST was made: grayscale, inverted when the border is "
        "lighter than the centre, fitted into the model's input size.",
    )
    p.add_argument("images", nargs="*", metavar="IMAGE", help="PNG or JPEG files")
    p.add_argument(
        "--idx",
        action="append",
        default=[],
        metavar="FILE",
        help="IDX image file (e.g. t10k-images-idx3-ubyte.gz), pixels used as they are; "
        "may be repeated",
    )
    p.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        metavar="URI",
        help=f"MLflow model URI (default {DEFAULT_MODEL})",
    )
    p.add_argument(
        "--tracking-uri",
        metavar="URI",
        help="MLflow tracking URI (default MLFLOW_TRACKING_URI or sqlite:///mlflow.db)",
    )
    p.add_argument(
        "--trust-model",
        action="store_true",
        help="also load models that are not Keras models (MLflow's python_function and "
        "others): they are unpickled, which runs code from the store",
    )
    p.add_argument(
        "--top",
        type=positive_int,
        default=1,
        metavar="K",
        help="print the K most probable classes per image (default 1)",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return _run(args)
    except BenchError as exc:
        print(f"error: {redact(exc)}", file=sys.stderr)
        return EXIT_USAGE


def _run(args: argparse.Namespace) -> int:
    import numpy as np

    from bench.images import check_size, fit, read_gray, read_idx_images
    from bench.tracking import resolve_uri
    from bench.tracking.predictor import class_names, load_champion, predict, quiet_model

    if not args.images and not args.idx:
        raise BenchError("nothing to classify: give IMAGE files and/or --idx FILE")
    # Every input is read and checked before the model (and TensorFlow) loads.
    grays = [read_gray(p) for p in args.images]
    idx_sets = [(p, read_idx_images(p)) for p in args.idx]
    tracking_uri = resolve_uri(args.tracking_uri)
    with quiet_model():
        champion = load_champion(args.model, tracking_uri, args.trust_model)
        labels = list(args.images)
        batches = [np.stack([fit(g, champion.size) for g in grays])] if grays else []
        for path, images in idx_sets:
            check_size(path, images, champion.size)
            labels += [f"{path}[{i}]" for i in range(len(images))]
            batches.append(images)
        probs = predict(champion, np.concatenate(batches))
    names = class_names(champion, probs.shape[1])
    if args.top > len(names):
        raise BenchError(f"--top {args.top}: the model has only {len(names)} classes")
    lines = []
    for label, row in zip(labels, probs, strict=True):
        best = np.argsort(-row, kind="stable")[: args.top]
        lines.append("\t".join([label, *(f"{names[k]}\t{row[k]:.4f}" for k in best)]))
    try:
        sys.stdout.write("".join(line + "\n" for line in lines))
        sys.stdout.flush()
    except BrokenPipeError:  # the reader stopped early (e.g. `| head`): not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # quiet exit flush
    return EXIT_OK


def console() -> None:
    """Console-script entry point (``pip install`` puts it on PATH)."""
    run(main)


if __name__ == "__main__":
    console()
