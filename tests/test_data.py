"""IDX reading, checksums, dataset lookup and the validation split (NumPy only, no TensorFlow)."""

from __future__ import annotations

import gzip
import re

import numpy as np
import pytest

from bench import data
from bench.errors import DataError


def _write_set(folder, n_train=60, n_test=20, shape=(6, 5), classes=3):
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {
        "x_train": rng.integers(0, 256, (n_train, *shape), dtype=np.uint8),
        "y_train": (np.arange(n_train) % classes).astype(np.uint8),
        "x_test": rng.integers(0, 256, (n_test, *shape), dtype=np.uint8),
        "y_test": (np.arange(n_test) % classes).astype(np.uint8),
    }
    for key, fname in data.IDX_FILES.items():
        data.write_idx(folder / fname, arrays[key])
    return arrays


@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.int32, np.float32, np.float64])
@pytest.mark.parametrize("suffix", [".gz", ""])
def test_idx_round_trip(tmp_path, dtype, suffix):
    array = (np.arange(2 * 3 * 4) - 7).astype(dtype).reshape(2, 3, 4)
    if dtype == np.uint8:
        array = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    path = tmp_path / f"a.idx{suffix}"
    data.write_idx(path, array)
    back = data.read_idx(path)
    assert back.dtype == array.dtype and back.shape == array.shape
    np.testing.assert_array_equal(back, array)


def test_idx_header_is_big_endian_like_the_published_files(tmp_path):
    path = tmp_path / "labels.idx"
    data.write_idx(path, np.array([1, 2, 3], dtype=np.uint8))
    assert path.read_bytes() == b"\x00\x00\x08\x01\x00\x00\x00\x03\x01\x02\x03"


@pytest.mark.parametrize(
    ("blob", "message"),
    [
        (b"\x00\x00\x08\x01\x00\x00\x00\x05\x01\x02", "declares shape (5,)"),
        (b"\x12\x34\x08\x01\x00\x00\x00\x01\x01", "not an IDX file (magic number 0x12340801"),
        (b"\x00\x00\x07\x01\x00\x00\x00\x01\x01", "not an IDX file"),
        (b"", "the file is empty"),
        (b"\x00\x00\x08\x03\x00\x00", "truncated IDX header"),
    ],
)
def test_broken_idx_files_are_one_clear_error(tmp_path, blob, message):
    path = tmp_path / "broken.idx"
    path.write_bytes(blob)
    with pytest.raises(DataError, match="broken.idx: ") as err:
        data.read_idx(path)
    assert message in str(err.value)


def test_corrupt_gzip(tmp_path):
    path = tmp_path / "x.gz"
    path.write_bytes(gzip.compress(b"\x00\x00\x08\x01\x00\x00\x00\x01\x07")[:-6])
    with pytest.raises(DataError, match="corrupt gzip file"):
        data.read_idx(path)
    path.write_bytes(b"not gzip at all")
    with pytest.raises(DataError, match="corrupt gzip file"):
        data.read_idx(path)


def test_idx_dataset_reads_shape_from_the_files(tmp_path):
    arrays = _write_set(tmp_path / "set", shape=(6, 5), classes=3)
    ds = data.load_dataset("idx", str(tmp_path / "set"))
    assert ds.image_shape == (6, 5) and ds.n_classes == 3
    np.testing.assert_array_equal(ds.x_test, arrays["x_test"])
    assert ds.y_train.dtype == np.int64 and len(ds.digest) == 16


def test_env_var_names_the_data_dir(tmp_path, monkeypatch):
    _write_set(tmp_path / "env")
    monkeypatch.setenv("BENCH_DATA_DIR", str(tmp_path / "env"))
    assert data.load_dataset("idx").source == str(tmp_path / "env")


def test_mismatched_counts_and_shapes(tmp_path):
    folder = tmp_path / "bad"
    _write_set(folder, n_train=60)
    data.write_idx(folder / data.IDX_FILES["y_train"], np.zeros(59, dtype=np.uint8))
    with pytest.raises(DataError, match="60 train images but 59 train labels"):
        data.load_dataset("idx", str(folder))
    _write_set(folder)
    data.write_idx(folder / data.IDX_FILES["x_test"], np.zeros((20, 7, 7), dtype=np.uint8))
    with pytest.raises(DataError, match="both must have one shape"):
        data.load_dataset("idx", str(folder))
    _write_set(folder)
    data.write_idx(folder / data.IDX_FILES["x_train"], np.zeros(60, dtype=np.uint8))
    with pytest.raises(DataError, match=r"expected \(N, H\[, W\]\) images"):
        data.load_dataset("idx", str(folder))


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda f: (f / data.IDX_FILES["y_test"]).write_bytes(b""), "the file is empty"),
        (
            lambda f: (
                data.write_idx(f / data.IDX_FILES["x_train"], np.zeros((0, 6, 5), np.uint8)),
                data.write_idx(f / data.IDX_FILES["y_train"], np.zeros(0, np.uint8)),
            ),
            "hold no images",
        ),
        (
            lambda f: data.write_idx(
                f / data.IDX_FILES["y_train"], (np.arange(60) % 3).astype(np.float32)
            ),
            "train labels are float32",
        ),
        (
            lambda f: data.write_idx(
                f / data.IDX_FILES["y_test"], (np.arange(20) % 3).astype(np.int32)
            ),
            "test labels are int32",
        ),
        (
            lambda f: data.write_idx(
                f / data.IDX_FILES["y_train"], np.r_[np.arange(59) % 3, 250].astype(np.uint8)
            ),
            "class(es) 3, 4, 5, 6, 7 ... never occur",
        ),
    ],
    ids=["empty file", "no images", "float labels", "int32 labels", "label gap"],
)
def test_damaged_label_and_image_files(tmp_path, mutate, message):
    folder = tmp_path / "bad"
    _write_set(folder)
    mutate(folder)
    with pytest.raises(DataError, match=re.escape(message)):
        data.load_dataset("idx", str(folder))


def test_label_beyond_a_named_datasets_classes(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    folder = tmp_path / "mnist"
    _write_set(folder, classes=10)
    data.write_idx(
        folder / data.IDX_FILES["y_test"], np.r_[np.arange(19) % 10, 10].astype(np.uint8)
    )
    with pytest.raises(DataError, match="found label 10, but mnist has 10 classes"):
        data.load_dataset("mnist", str(folder))


def test_validation_size_must_hold_every_class():
    ds = data.load_dataset("digits")
    data.check_validation_size(ds, 10, "s.yaml")
    with pytest.raises(DataError, match="use a value from 10 to"):
        data.check_validation_size(ds, 9, "s.yaml")
    with pytest.raises(DataError, match="use a value from 10 to"):
        data.check_validation_size(ds, len(ds.x_train), "s.yaml")


def test_fashion_checksums_are_verified(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "SYSTEM_DIR", tmp_path / "none")
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    _write_set(tmp_path / "fake")
    with pytest.raises(DataError, match="does not match the published"):
        data.load_dataset("fashion-mnist", str(tmp_path / "fake"))


def test_missing_dataset_says_where_it_looked_and_how_to_fix(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "SYSTEM_DIR", tmp_path / "system")
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    monkeypatch.delenv("BENCH_DATA_DIR", raising=False)
    with pytest.raises(DataError) as err:
        data.load_dataset("fashion-mnist", str(tmp_path / "given"))
    text = str(err.value)
    for place in ("given", "keras/datasets/fashion-mnist", "system/fashion-mnist"):
        assert place in text
    assert "dataset-fashion-mnist" in text and "--data-dir" in text and "\n" not in text
    with pytest.raises(DataError, match="unknown dataset 'cifar'"):
        data.load_dataset("cifar")


def test_an_injected_download_fills_the_keras_cache_or_is_named_when_it_fails(
    tmp_path, monkeypatch
):
    monkeypatch.setattr(data, "SYSTEM_DIR", tmp_path / "system")
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    monkeypatch.delenv("BENCH_DATA_DIR", raising=False)
    asked = []

    def fetch(name):
        asked.append(name)
        _write_set(data.keras_cache_dir() / name, classes=10)

    assert data.load_dataset("mnist", download=fetch).n_classes == 10
    assert asked == ["mnist"]

    def offline(name):
        raise OSError("no network")

    with pytest.raises(DataError, match="the Keras download failed"):
        data.load_dataset("fashion-mnist", download=offline)


def test_validation_split_is_stratified_seeded_and_disjoint(tmp_path):
    _write_set(tmp_path / "s", n_train=90, classes=3)
    ds = data.load_dataset("idx", str(tmp_path / "s"))
    a = data.validation_split(ds, 30, seed=0)
    b = data.validation_split(ds, 30, seed=0)
    np.testing.assert_array_equal(a.y_val, b.y_val)
    np.testing.assert_array_equal(a.x_val, b.x_val)
    assert len(a.x_train) == 60 and len(a.x_val) == 30
    assert np.bincount(a.y_val).tolist() == [10, 10, 10]
    with pytest.raises(DataError, match="does not fit"):
        data.validation_split(ds, 80, seed=0)


def test_digits_is_uint8_images():
    ds = data.load_dataset("digits")
    assert ds.x_train.dtype == np.uint8 and ds.image_shape == (8, 8) and ds.n_classes == 10
    assert ds.x_train.max() == 255


@pytest.mark.skipif(
    not (data.SYSTEM_DIR / "fashion-mnist").is_dir(), reason="dataset-fashion-mnist not installed"
)
def test_real_fashion_mnist_from_the_debian_package(monkeypatch, tmp_path):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    monkeypatch.delenv("BENCH_DATA_DIR", raising=False)
    ds = data.load_dataset("fashion-mnist")
    assert ds.x_train.shape == (60000, 28, 28) and ds.x_test.shape == (10000, 28, 28)
    assert ds.class_names[9] == "Ankle boot"
    assert np.bincount(ds.y_train).tolist() == [6000] * 10


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_idx_dimensions_whose_product_overflows_are_one_clear_error(tmp_path, suffix):
    path = tmp_path / f"huge.idx{suffix}"
    blob = b"\x00\x00\x0e\x04" + b"\xff\xff\xff\xff" * 4 + b"\x00" * 64  # 2**128 doubles
    path.write_bytes(gzip.compress(blob) if suffix else blob)
    with pytest.raises(DataError, match=r"huge.idx(.gz)?: the IDX header declares shape") as err:
        data.read_idx(path)
    assert "more than the" in str(err.value) and len(str(err.value)) < 300


def test_a_gzip_bomb_is_not_decompressed_past_what_the_header_declares(tmp_path):
    import tracemalloc

    path = tmp_path / "bomb.idx.gz"
    # 64 MiB of zeros after a header that declares 10 bytes: 64 KiB on disk
    path.write_bytes(gzip.compress(b"\x00\x00\x08\x01\x00\x00\x00\x0a" + bytes(64 << 20)))
    assert path.stat().st_size < 1 << 17
    tracemalloc.start()
    try:
        with pytest.raises(DataError, match="more than the 10 bytes its header declares"):
            data.read_idx(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 << 20, f"{peak:,} bytes allocated"


def test_a_header_declaring_more_than_the_cap_is_refused_before_reading(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "MAX_IDX_BYTES", 1000)
    path = tmp_path / "big.idx"
    data.write_idx(path, np.zeros((11, 10, 10), np.uint8))
    with pytest.raises(DataError, match=r"declares shape \(11, 10, 10\) \(1,100 bytes\)"):
        data.read_idx(path)


@pytest.mark.parametrize("shape", [(5, 0, 4), (5, 4, 0)])
def test_images_with_a_zero_dimension_are_refused_naming_the_file(tmp_path, shape):
    path = tmp_path / "train-images-idx3-ubyte.gz"
    data.write_idx(path, np.zeros(shape, np.uint8))
    with pytest.raises(
        DataError, match=re.escape(f"{path}: the IDX header declares shape {shape}")
    ):
        data.read_idx(path)
