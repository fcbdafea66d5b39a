"""Datasets: the IDX reader, checksums, where files are looked for, and the validation split.

NumPy only at import time. scikit-learn is imported by the functions that need it (the ``digits``
set and the stratified split). The last-resort download is Keras' own; this layer cannot import
Keras, so the CLIs pass it in (:func:`bench.training.download_dataset`).
"""

from __future__ import annotations

import gzip
import hashlib
import math
import os
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bench.errors import DataError

FASHION_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
DIGIT_CLASSES = tuple(str(i) for i in range(10))
IDX_FILES = {
    "x_train": "train-images-idx3-ubyte.gz",
    "y_train": "train-labels-idx1-ubyte.gz",
    "x_test": "t10k-images-idx3-ubyte.gz",
    "y_test": "t10k-labels-idx1-ubyte.gz",
}
# SHA-256 of the published Fashion-MNIST files (identical in the Keras cache and Debian's package).
FASHION_SHA256 = {
    "train-images-idx3-ubyte.gz": "b0564c3eedabfbf835052cff8503ea422014ce006caf5b757f851416ee8300c7",  # noqa: E501
    "train-labels-idx1-ubyte.gz": "0ae29f65d86684f32d1b9c85147786c547b9c6aebcaf235f0400a0cce308b056",  # noqa: E501
    "t10k-images-idx3-ubyte.gz": "cc1d090a38ace84dfa1aa66e3ada7c336ef481a96936906477e6dd344da56eaa",
    "t10k-labels-idx1-ubyte.gz": "8d3605d196f4be44669e46906da9733c8131fef761fdbfec72c424d5222f1a05",
}
MNIST_NPZ_SHA256 = "731c5ac602752760c8e48fbffcf8c3b850d9dc2a2aedcf2cc48468fc17b673d1"
DATASETS = ("fashion-mnist", "mnist", "digits", "idx")
SYSTEM_DIR = Path("/usr/share/datasets")

# The largest IDX file bench will decode: Fashion-MNIST's largest is 47 MB and EMNIST's 0.6 GB;
# a damaged or hostile header cannot make it allocate more.
MAX_IDX_BYTES = 4 << 30
_CHUNK = 16 << 20  # read this much at a time: memory follows the data actually present
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


@dataclass(frozen=True)
class Dataset:
    """Train and test arrays of one image-classification dataset, as raw uint8 pixels."""

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    class_names: tuple[str, ...]
    source: str
    digest: str

    @property
    def image_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])

    @property
    def n_classes(self) -> int:
        return len(self.class_names)


@dataclass(frozen=True)
class Split:
    """The training split a job fits on and the validation split it is judged by (None: none)."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray | None
    y_val: np.ndarray | None


# ---------------------------------------------------------------- IDX


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (optionally gzip-compressed) into an array.

    The header is read first and the data never past what it declares: the declared size is
    computed with Python integers (no overflow), must stay under :data:`MAX_IDX_BYTES`, and is
    read in chunks, so a short file allocates what it holds and a gzip bomb stops one byte past
    the declared size.

    Args:
        path: The ``.gz`` or uncompressed IDX file.

    Returns:
        The array, with the shape and element type the header declares.

    Raises:
        DataError: unreadable, corrupt gzip, wrong magic number, a zero or oversized dimension,
            or truncated data.
    """
    path = Path(path)
    try:
        with gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb") as f:
            return _read_idx_stream(path, f)
    except OSError as exc:
        if isinstance(exc, gzip.BadGzipFile):
            raise DataError(
                f"{path}: corrupt gzip file ({exc}); delete it and fetch it again"
            ) from None
        raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from None
    except (EOFError, zlib.error) as exc:
        raise DataError(
            f"{path}: corrupt gzip file ({exc}); delete it and fetch it again"
        ) from None


def _read_idx_stream(path: Path, f) -> np.ndarray:
    magic = f.read(4)
    if not magic:
        raise DataError(f"{path}: the file is empty; delete it and fetch it again")
    if (
        len(magic) < 4
        or magic[0] != 0
        or magic[1] != 0
        or magic[2] not in _IDX_DTYPES
        or not magic[3]
    ):
        raise DataError(
            f"{path}: not an IDX file (magic number 0x{magic.hex()}, expected "
            "0x0000TTNN with a known type TT and NN dimensions)"
        )
    ndim = magic[3]
    dims = f.read(4 * ndim)
    if len(dims) < 4 * ndim:
        raise DataError(f"{path}: truncated IDX header")
    shape = struct.unpack(f">{ndim}I", dims)
    dtype = np.dtype(_IDX_DTYPES[magic[2]])
    expected = math.prod(shape) * dtype.itemsize  # Python ints: 2**32-1 per dimension is fine
    if 0 in shape[1:]:  # no items (a zero first dimension) is reported with the whole dataset
        raise DataError(
            f"{path}: the IDX header declares shape {shape}, with a zero dimension; an image "
            "needs every side >= 1: the file is damaged or not images"
        )
    if expected > MAX_IDX_BYTES:
        raise DataError(
            f"{path}: the IDX header declares shape {_cut(shape)} ({expected:,} bytes), more "
            f"than the {MAX_IDX_BYTES:,} bytes bench reads; the header is damaged"
        )
    buf = bytearray()
    while len(buf) <= expected and (chunk := f.read(min(_CHUNK, expected + 1 - len(buf)))):
        buf += chunk
    if len(buf) != expected:
        held = (
            f"more than the {expected:,} bytes its header declares"
            if len(buf) > expected
            else (f"{len(buf)} bytes of data")
        )
        raise DataError(
            f"{path}: IDX header declares shape {shape} ({expected} bytes) but the "
            f"file holds {held}; the file is damaged"
        )
    return np.frombuffer(buf, dtype=dtype).reshape(shape).astype(dtype.newbyteorder("="))


def _cut(shape: tuple[int, ...]) -> str:
    text = str(shape)
    return text if len(text) <= 80 else text[:79] + "…"


def write_idx(path: str | Path, array: np.ndarray) -> None:
    """Write ``array`` as an IDX file (gzip-compressed when the name ends in ``.gz``)."""
    codes = {np.dtype(v).newbyteorder("="): k for k, v in _IDX_DTYPES.items()}
    code = codes[array.dtype]
    blob = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    blob += array.astype(np.dtype(_IDX_DTYPES[code])).tobytes()
    path = Path(path)
    path.write_bytes(gzip.compress(blob, mtime=0) if path.suffix == ".gz" else blob)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# ---------------------------------------------------------------- locating files


def keras_cache_dir() -> Path:
    """Where Keras keeps downloaded datasets (``$KERAS_HOME/datasets``, default ``~/.keras``)."""
    return Path(os.environ.get("KERAS_HOME", Path.home() / ".keras")) / "datasets"


def candidate_dirs(name: str, data_dir: str | None) -> list[Path]:
    """Directories searched for ``name``'s IDX files, in order."""
    explicit = data_dir or os.environ.get("BENCH_DATA_DIR")
    dirs = [Path(explicit)] if explicit else []
    if name != "idx":
        dirs += [keras_cache_dir() / name, SYSTEM_DIR / name]
    return dirs


def _has_idx(directory: Path) -> bool:
    return all(
        (directory / f).is_file() or (directory / f[:-3]).is_file() for f in IDX_FILES.values()
    )


def _idx_path(directory: Path, fname: str) -> Path:
    return directory / fname if (directory / fname).is_file() else directory / fname[:-3]


def _load_idx_dir(name: str, directory: Path, pinned: dict[str, str] | None) -> Dataset:
    arrays, h = {}, hashlib.sha256()
    for key, fname in IDX_FILES.items():
        path = _idx_path(directory, fname)
        digest = sha256_file(path)
        if pinned and path.name in pinned and digest != pinned[path.name]:
            raise DataError(
                f"{path}: SHA-256 {digest[:12]}… does not match the published "
                f"{pinned[path.name][:12]}…; the file is corrupt or not {name}; "
                "delete it and fetch it again"
            )
        h.update(digest.encode())
        arrays[key] = read_idx(path)
    return _assemble(name, arrays, str(directory), h.hexdigest()[:16])


def _assemble(name: str, arrays: dict[str, np.ndarray], source: str, digest: str) -> Dataset:
    for part in ("train", "test"):
        x, y = arrays[f"x_{part}"], arrays[f"y_{part}"]
        if x.ndim < 2:
            raise DataError(
                f"{source}: {part} images have shape {x.shape}; expected (N, H[, W]) images"
            )
        if y.ndim != 1:
            raise DataError(
                f"{source}: {part} labels have shape {y.shape}; expected one label per image"
            )
        if len(x) != len(y):
            raise DataError(
                f"{source}: {len(x)} {part} images but {len(y)} {part} labels; "
                "the image and label files do not belong together"
            )
        if len(x) == 0:
            raise DataError(
                f"{source}: the {part} files hold no images; fetch the dataset again or point "
                "--data-dir at complete files"
            )
        if x.dtype != np.uint8:
            raise DataError(f"{source}: {part} images are {x.dtype}; the models take uint8 pixels")
        if y.dtype != np.uint8:  # IDX labels are unsigned bytes (type 0x08)
            raise DataError(
                f"{source}: {part} labels are {y.dtype}; IDX label files hold unsigned bytes "
                "(type 0x08): write the class numbers as uint8"
            )
    if arrays["x_train"].shape[1:] != arrays["x_test"].shape[1:]:
        raise DataError(
            f"{source}: train images are {arrays['x_train'].shape[1:]} but test images "
            f"are {arrays['x_test'].shape[1:]}; both must have one shape"
        )
    labels = np.concatenate([arrays["y_train"], arrays["y_test"]]).astype(np.int64)
    if labels.min() < 0:
        raise DataError(f"{source}: labels must be >= 0, found {labels.min()}")
    n_classes = int(labels.max()) + 1
    classes = {"fashion-mnist": FASHION_CLASSES, "mnist": DIGIT_CLASSES}.get(name)
    if classes is not None and n_classes > len(classes):
        raise DataError(
            f"{source}: found label {n_classes - 1}, but {name} has {len(classes)} classes "
            f"(labels 0 to {len(classes) - 1}); the label files are not {name}'s"
        )
    if classes is None or len(classes) != n_classes:
        missing = sorted(set(range(n_classes)) - set(np.unique(labels).tolist()))
        if missing:
            raise DataError(
                f"{source}: labels run to {n_classes - 1} but class(es) "
                f"{', '.join(map(str, missing[:5]))}{' ...' if len(missing) > 5 else ''} never "
                "occur; number the classes 0 to K-1 without gaps"
            )
        classes = tuple(str(i) for i in range(n_classes))
    return Dataset(
        name,
        arrays["x_train"],
        arrays["y_train"].astype(np.int64),
        arrays["x_test"],
        arrays["y_test"].astype(np.int64),
        classes,
        source,
        digest,
    )


def _load_npz(path: Path) -> Dataset:
    digest = sha256_file(path)
    if digest != MNIST_NPZ_SHA256:
        raise DataError(f"{path}: SHA-256 does not match Keras' published mnist.npz; delete it")
    with np.load(path, allow_pickle=False) as f:
        arrays = {k: f[k] for k in IDX_FILES}
    return _assemble("mnist", arrays, str(path), digest[:16])


def _digits() -> Dataset:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    images = np.round(bunch.images * (255.0 / 16.0)).astype(np.uint8)  # 0..16 -> 0..255 like MNIST
    x_tr, x_te, y_tr, y_te = train_test_split(
        images, bunch.target, test_size=0.2, stratify=bunch.target, random_state=0
    )
    digest = hashlib.sha256(images.tobytes() + bunch.target.tobytes()).hexdigest()[:16]
    return Dataset(
        "digits",
        x_tr,
        y_tr.astype(np.int64),
        x_te,
        y_te.astype(np.int64),
        DIGIT_CLASSES,
        "sklearn.datasets.load_digits",
        digest,
    )


def load_dataset(
    name: str, data_dir: str | None = None, *, download: Callable[[str], None] | None = None
) -> Dataset:
    """Find, verify and decode a dataset.

    Args:
        name: ``fashion-mnist``, ``mnist``, ``digits`` or ``idx`` (any four IDX files in
            ``data_dir``).
        data_dir: Checked first; ``BENCH_DATA_DIR`` when not given.
        download: Called with ``name`` when no local copy is found, to fetch one into the Keras
            cache (:func:`bench.training.download_dataset`); None: never download.

    Returns:
        The decoded dataset.

    Raises:
        DataError: one line saying where it looked and how to get the data.
    """
    if name not in DATASETS:
        raise DataError(f"--dataset: unknown dataset {name!r}; choose one of {list(DATASETS)}")
    if name == "digits":
        return _digits()
    dirs = candidate_dirs(name, data_dir)
    if name == "idx" and not dirs:
        raise DataError(
            "--dataset idx needs --data-dir DIR (or BENCH_DATA_DIR) holding the four "
            f"IDX files {list(IDX_FILES.values())}"
        )
    pinned = FASHION_SHA256 if name == "fashion-mnist" else None

    def local() -> Dataset | None:
        for d in dirs:
            if _has_idx(d):
                return _load_idx_dir(name, d, pinned)
        npz = keras_cache_dir() / "mnist.npz"
        if name == "mnist" and npz.is_file():
            return _load_npz(npz)
        return None

    found = local()
    if found is None and download is not None and name != "idx":
        try:
            download(name)
        except Exception:  # noqa: BLE001 - offline, proxy, disk: all mean "not available"
            pass
        found = local()
    if found is None:
        looked = ", ".join(str(d) for d in dirs)
        how = (
            "install Debian's package dataset-fashion-mnist, or " if name == "fashion-mnist" else ""
        )
        raise DataError(
            f"{name}: dataset files not found (looked in {looked}"
            f"{'; the Keras download failed' if download is not None and name != 'idx' else ''}); "
            f"{how}pass --data-dir DIR holding {', '.join(IDX_FILES.values())}"
        )
    return found


def validation_split(ds: Dataset, size: int, seed: int) -> Split:
    """Carve a stratified, seeded validation split out of the training set.

    Raises:
        DataError: when ``size`` leaves too little to train on.
    """
    n = len(ds.x_train)
    if not 0 < size <= n // 2:
        raise DataError(
            f"train.validation_size: {size} does not fit {ds.name}'s {n} training "
            f"images; use a value from {ds.n_classes} to {n // 2}"
        )
    from sklearn.model_selection import train_test_split

    idx_tr, idx_val = train_test_split(
        np.arange(n), test_size=size, stratify=ds.y_train, random_state=seed
    )
    idx_tr.sort()
    idx_val.sort()
    return Split(ds.x_train[idx_tr], ds.y_train[idx_tr], ds.x_train[idx_val], ds.y_train[idx_val])


def full_split(ds: Dataset) -> Split:
    """Every training image and no validation split: what a refit trains on."""
    return Split(ds.x_train, ds.y_train, None, None)


def check_validation_size(ds: Dataset, size: int, where: str) -> None:
    """A validation split must hold every class and leave at least half the images to train on.

    Raises:
        DataError: in one line, with the range that works for this dataset.
    """
    n = len(ds.x_train)
    counts = np.bincount(ds.y_train, minlength=ds.n_classes)
    smallest = int(counts.min()) if len(counts) else 0
    if smallest < 2:
        raise DataError(
            f"{ds.name}: class {int(counts.argmin())} has {smallest} training image(s); a "
            "stratified validation split needs at least 2 per class"
        )
    if not ds.n_classes <= size <= n // 2:
        raise DataError(
            f"{where}: train.validation_size: {size} does not fit {ds.name}'s {n} training "
            f"images and {ds.n_classes} classes; use a value from {ds.n_classes} to {n // 2}"
        )


def fold_splits(ds: Dataset, k: int, seed: int) -> list[Split]:
    """K stratified, seeded folds of the training images: each fold validates once.

    Raises:
        DataError: a class with fewer images than folds.
    """
    counts = np.bincount(ds.y_train, minlength=ds.n_classes)
    if counts.min() < k:
        raise DataError(
            f"train.cv_folds: {k} folds need at least {k} images of every class; "
            f"{ds.name}'s class {int(counts.argmin())} has {int(counts.min())}; use fewer folds"
        )
    from sklearn.model_selection import StratifiedKFold

    folds = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
    return [
        Split(ds.x_train[tr], ds.y_train[tr], ds.x_train[va], ds.y_train[va])
        for tr, va in folds.split(np.zeros(len(ds.y_train)), ds.y_train)
    ]
