"""``python -m bench.predict``: classify images with the registered champion (or any MLflow model).

How a PNG or JPEG becomes model input, following the way Fashion-MNIST's 28x28 images were made
from product photos (light garment on a black background):

1. EXIF orientation is applied; transparent pixels are laid over white, like a studio backdrop.
2. The image becomes 8-bit grayscale (Pillow's ``L`` mode: ITU-R 601-2 luma).
3. Polarity: the image is inverted when its border is lighter than its centre, i.e. when the median
   of the outermost ring of pixels (one output pixel wide, about 1/28 of the shorter side) exceeds
   the mean of the central half. A dark garment photographed on white becomes a light garment on
   black. On the 10,000 Fashion-MNIST test images the rule never inverts an original and always
   inverts a negated copy.
4. Fit: scaled, keeping the aspect ratio, until the longer side equals the model's input size
   (28 pixels for Fashion-MNIST); area averaging when shrinking (an image enlarged by repeating
   pixels comes back exactly), bicubic when enlarging. The shorter side is padded evenly with the
   background (the border's median after step 3). Nothing is cropped: crop a photo to the garment
   first, as Fashion-MNIST's photos were.
5. The pixels stay uint8 0..255: the model normalizes inside itself.

``--idx FILE`` passes an IDX image file's pixels unchanged. Output: one tab-separated line per
image: the file (or ``FILE[index]``), the class name and its probability, then the next ``--top``
classes. Class names come from the registered version's ``class_names`` tag (a JSON list), else
from its ``dataset`` tag, else Fashion-MNIST's names when the model has 10 classes.

TensorFlow and MLflow are imported only once the inputs are read, so ``--help`` and bad input
answer at once.
"""

from __future__ import annotations

import argparse
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

from bench.cli import Parser, positive_int
from bench.errors import EXIT_OK, EXIT_USAGE, BenchError, redact

if TYPE_CHECKING:
    import numpy as np

DEFAULT_MODEL = "models:/fashion-mnist-mlp@champion"
DEFAULT_SIZE = (28, 28)  # when a model carries no input signature


# ---------------------------------------------------------------- images


def read_gray(path: str | Path) -> np.ndarray:
    """Decode an image file into an 8-bit grayscale array (steps 1-2 of the module docstring).

    Raises:
        BenchError: missing, unreadable, not an image, or damaged.
    """
    import numpy as np
    from PIL import Image, ImageOps, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise BenchError(f"{path}: no such file" if not path.exists() else f"{path}: not a file")
    try:
        with Image.open(path) as img:
            img = ImageOps.exif_transpose(img)
            if img.mode.startswith("I"):  # 16/32-bit grayscale PNG: scale to 0..255
                wide = np.asarray(img, dtype=np.float64)
                return np.clip(np.rint(wide / 257.0), 0, 255).astype(np.uint8)
            if img.mode in ("RGBA", "LA", "PA") or "transparency" in img.info:
                white = Image.new("RGBA", img.size, (255, 255, 255, 255))
                img = Image.alpha_composite(white, img.convert("RGBA"))
            return np.asarray(img.convert("L"), dtype=np.uint8).copy()
    except UnidentifiedImageError:
        raise BenchError(f"{path}: not an image (expected PNG or JPEG)") from None
    except Image.DecompressionBombError as exc:
        raise BenchError(f"{path}: image too large ({exc})") from None
    except (OSError, SyntaxError, ValueError) as exc:
        reason = str(exc).strip() or type(exc).__name__
        raise BenchError(f"{path}: damaged image ({reason})") from None


def _ring_width(gray: np.ndarray, size: tuple[int, int]) -> int:
    return max(1, round(min(gray.shape) / min(size)))


def border_median(gray: np.ndarray, width: int = 1) -> float:
    """Median of the outermost ``width`` pixels on all four sides."""
    import numpy as np

    w = max(1, min(width, min(gray.shape) // 2 or 1))
    ring = np.concatenate(
        [gray[:w].ravel(), gray[-w:].ravel(), gray[w:-w, :w].ravel(), gray[w:-w, -w:].ravel()]
    )
    return float(np.median(ring))


def needs_inversion(gray: np.ndarray, width: int = 1) -> bool:
    """True when the border is lighter than the centre (step 3 of the module docstring)."""
    h, w = gray.shape
    centre = gray[h // 4 : h - h // 4, w // 4 : w - w // 4]
    return border_median(gray, width) > float(centre.mean())


def fit(gray: np.ndarray, size: tuple[int, int] = DEFAULT_SIZE) -> np.ndarray:
    """Turn any grayscale image into a ``size`` uint8 array, light garment on dark (steps 3-5).

    Args:
        gray: (H, W) uint8 pixels, any size.
        size: (height, width) the model takes.

    Returns:
        (height, width) uint8 array.
    """
    import numpy as np
    from PIL import Image

    if gray.ndim != 2 or gray.size == 0:
        raise BenchError(f"expected a 2-D grayscale image, got shape {gray.shape}")
    width = _ring_width(gray, size)
    if needs_inversion(gray, width):
        gray = 255 - gray
    background = int(round(border_median(gray, width)))
    out_h, out_w = size
    h, w = gray.shape
    scale = min(out_h / h, out_w / w)
    new_h, new_w = max(1, round(h * scale)), max(1, round(w * scale))
    resample = Image.Resampling.BOX if scale < 1 else Image.Resampling.BICUBIC
    img = Image.fromarray(np.ascontiguousarray(gray, dtype=np.uint8))
    if (new_h, new_w) != (h, w):
        img = img.resize((new_w, new_h), resample=resample)
    canvas = Image.new("L", (out_w, out_h), background)
    canvas.paste(img, ((out_w - new_w) // 2, (out_h - new_h) // 2))
    return np.asarray(canvas, dtype=np.uint8).copy()


def convert_image(path: str | Path, size: tuple[int, int] = DEFAULT_SIZE) -> np.ndarray:
    """Read an image file and convert it the way Fashion-MNIST was made (module docstring)."""
    return fit(read_gray(path), size)


# ---------------------------------------------------------------- model


@dataclass
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
def _quiet() -> Iterator[None]:
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


def read_idx_images(path: str) -> np.ndarray:
    """An IDX file's images as (N, height, width) uint8.

    Raises:
        BenchError: missing or damaged file, labels instead of images, pixels other than uint8.
    """
    from bench.data import read_idx

    if not Path(path).is_file():
        raise BenchError(f"--idx {path}: no such file")
    images = read_idx(path)
    if images.ndim == 2 and images.shape[0] > 1:
        images = images[None]  # one image stored without the count dimension
    if images.ndim != 3:
        raise BenchError(
            f"--idx {path}: holds an array of shape {images.shape}, not images "
            "(N, height, width); is it a labels file?"
        )
    if images.dtype.name != "uint8":
        raise BenchError(f"--idx {path}: pixels are {images.dtype}; the model takes uint8")
    return images


def _check_size(path: str, images: np.ndarray, size: tuple[int, int]) -> None:
    if images.shape[1:] != size:
        raise BenchError(
            f"--idx {path}: images are {images.shape[1]}x{images.shape[2]} but the "
            f"model takes {size[0]}x{size[1]}"
        )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return _run(args)
    except BenchError as exc:
        print(f"error: {redact(exc)}", file=sys.stderr)
        return EXIT_USAGE


def _run(args: argparse.Namespace) -> int:
    import numpy as np

    from bench.tracking import resolve_uri

    if not args.images and not args.idx:
        raise BenchError("nothing to classify: give IMAGE files and/or --idx FILE")
    # Every input is read and checked before the model (and TensorFlow) loads.
    grays = [read_gray(p) for p in args.images]
    idx_sets = [(p, read_idx_images(p)) for p in args.idx]
    tracking_uri = resolve_uri(args.tracking_uri)
    with _quiet():
        champion = load_champion(args.model, tracking_uri, args.trust_model)
        labels = list(args.images)
        batches = [np.stack([fit(g, champion.size) for g in grays])] if grays else []
        for path, images in idx_sets:
            _check_size(path, images, champion.size)
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
    from bench.cli import run

    run(main)


if __name__ == "__main__":
    console()
