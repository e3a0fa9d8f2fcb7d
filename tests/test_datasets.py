"""Tests of curvebench.problems.datasets: readers, loaders, downloads and generators."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import pickle
import random
import shutil
import struct
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from curvebench.problems import datasets as ds
from curvebench.problems.datasets import (
    REMOTE_SOURCES,
    Dataset,
    DatasetError,
    RemoteFile,
    cifar10,
    digits,
    download_file,
    fashion_mnist,
    mnist,
    mnist1d,
    read_idx,
    resolve_data_dir,
    synthetic_classification,
    synthetic_regression,
)

SHARED_MNIST = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"
MNIST_TEST_LABEL_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
IDX_CODES = {np.uint8: 0x08, np.int8: 0x09, np.int16: 0x0B, np.int32: 0x0C}
IDX_CODES.update({np.float32: 0x0D, np.float64: 0x0E})


# ------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------


def idx_bytes(array: np.ndarray, code: int | None = None) -> bytes:
    """Serialise ``array`` as an IDX file (big-endian header and payload)."""
    code = IDX_CODES[array.dtype.type] if code is None else code
    header = struct.pack(">BBBB", 0, 0, code, array.ndim)
    header += struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


def write_idx(path: Path, array: np.ndarray, *, compress: bool) -> Path:
    data = idx_bytes(array)
    path.write_bytes(gzip.compress(data) if compress else data)
    return path


def assert_one_line(err: pytest.ExceptionInfo[DatasetError]) -> str:
    message = str(err.value)
    assert message
    assert "\n" not in message and "\r" not in message
    return message


def tiny_idx_set(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    images[0, 0, 0], images[0, 0, 1] = 0, 255
    labels = (np.arange(n) % 10).astype(np.uint8)
    return images, labels


def write_tiny_mnist_dir(directory: Path, *, n_train: int = 6, n_test: int = 4) -> dict:
    """Write a complete, tiny four-file IDX set (train files uncompressed, test gzipped)."""
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    train = tiny_idx_set(rng, n_train)
    test = tiny_idx_set(rng, n_test)
    write_idx(directory / "train-images-idx3-ubyte", train[0], compress=False)
    write_idx(directory / "train-labels-idx1-ubyte", train[1], compress=False)
    write_idx(directory / "t10k-images-idx3-ubyte.gz", test[0], compress=True)
    write_idx(directory / "t10k-labels-idx1-ubyte.gz", test[1], compress=True)
    return {"train": train, "test": test}


def listing(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def sha256_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ------------------------------------------------------------------------------------------
# DatasetError, resolve_data_dir, source table
# ------------------------------------------------------------------------------------------


def test_dataset_error_is_always_one_line() -> None:
    err = DatasetError("first line\nsecond line\r\nthird")
    assert str(err) == "first line second line third"


def test_dataset_rejects_mismatched_lengths() -> None:
    with pytest.raises(ValueError, match="rows"):
        Dataset("bad", np.zeros((3, 2)), np.zeros(2), np.zeros((1, 2)), np.zeros(1), 2)


def test_resolve_data_dir_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CURVEBENCH_DATA", str(tmp_path / "env"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert resolve_data_dir(tmp_path / "explicit") == tmp_path / "explicit"
    assert resolve_data_dir(str(tmp_path / "s")) == tmp_path / "s"
    assert resolve_data_dir(None) == tmp_path / "env"
    monkeypatch.setenv("CURVEBENCH_DATA", "")
    assert resolve_data_dir(None) == tmp_path / "xdg" / "curvebench"
    monkeypatch.delenv("CURVEBENCH_DATA")
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert resolve_data_dir("") == tmp_path / "home" / ".cache" / "curvebench"
    assert resolve_data_dir("~/d") == tmp_path / "home" / "d"


def test_remote_source_table_is_well_formed() -> None:
    assert set(REMOTE_SOURCES) == {"mnist", "fashion-mnist", "cifar10"}
    expected_names = {f"{stem}.gz" for stem in ds._IDX_STEMS}
    assert {r.filename for r in REMOTE_SOURCES["mnist"]} == expected_names
    assert {r.filename for r in REMOTE_SOURCES["fashion-mnist"]} == expected_names
    assert [r.filename for r in REMOTE_SOURCES["cifar10"]] == ["cifar-10-python.tar.gz"]
    all_sha = []
    for remotes in REMOTE_SOURCES.values():
        for remote in remotes:
            assert remote.sha256 is not None and len(remote.sha256) == 64
            int(remote.sha256, 16)
            assert remote.md5 is not None and len(remote.md5) == 32
            assert remote.urls and all(u.endswith("/" + remote.filename) for u in remote.urls)
            assert all(u.startswith(("https://", "http://")) for u in remote.urls)
            all_sha.append(remote.sha256)
    assert len(set(all_sha)) == len(all_sha) == 9
    assert REMOTE_SOURCES["mnist"][0].urls[0].startswith("https://ossci-datasets.s3.amazonaws")
    assert "yann.lecun.com" in REMOTE_SOURCES["mnist"][0].urls[1]
    assert REMOTE_SOURCES["cifar10"][0].urls == (
        "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
    )


# ------------------------------------------------------------------------------------------
# read_idx
# ------------------------------------------------------------------------------------------


@pytest.mark.skipif(
    not (SHARED_MNIST / "t10k-labels-idx1-ubyte.gz").is_file(),
    reason="real MNIST test files not found in shared/data/mnist next to the repository",
)
def test_read_idx_real_mnist_test_files() -> None:
    images = read_idx(SHARED_MNIST / "t10k-images-idx3-ubyte.gz")
    labels = read_idx(SHARED_MNIST / "t10k-labels-idx1-ubyte.gz")
    assert images.shape == (10000, 28, 28) and images.dtype == np.uint8
    assert labels.shape == (10000,) and labels.dtype == np.uint8
    assert images.flags.writeable and labels.flags.writeable
    assert set(np.unique(labels).tolist()) == set(range(10))
    assert np.bincount(labels, minlength=10).tolist() == MNIST_TEST_LABEL_COUNTS
    assert int(labels[0]) == 7
    assert images.min() == 0 and images.max() == 255
    # The border of every digit image is blank; the centre of the first one (a 7) is not.
    assert images[:, 0, :].max() == 0 and images[0].sum() > 0


@pytest.mark.parametrize("dtype", list(IDX_CODES))
@pytest.mark.parametrize("compress", [False, True])
def test_read_idx_round_trips_every_dtype(tmp_path: Path, dtype: type, compress: bool) -> None:
    array = (np.arange(24).reshape(2, 3, 4) - 5).astype(dtype)
    if dtype is np.uint8:
        array = np.arange(24, dtype=np.uint8).reshape(2, 3, 4) + 200
    # Compression is detected from the content, not the name: swap the usual extensions.
    path = write_idx(tmp_path / ("data.idx" if compress else "data.gz"), array, compress=compress)
    out = read_idx(path)
    assert out.dtype == np.dtype(dtype) and out.dtype.isnative
    assert out.shape == (2, 3, 4)
    np.testing.assert_array_equal(out, array)


def test_read_idx_one_dimensional_and_empty(tmp_path: Path) -> None:
    out = read_idx(write_idx(tmp_path / "a", np.array([3, 1, 2], np.int32), compress=False))
    assert out.tolist() == [3, 1, 2]
    empty = read_idx(write_idx(tmp_path / "b", np.zeros((0, 28, 28), np.uint8), compress=True))
    assert empty.shape == (0, 28, 28)


def _malformed_cases() -> dict[str, bytes]:
    good = idx_bytes(np.arange(12, dtype=np.uint8).reshape(3, 4))
    return {
        "bad_magic": b"\x08\x03" + good[2:],
        "truncated_payload": good[:-1],
        "trailing_bytes": good + b"\x00",
        "unknown_dtype_code": good[:2] + b"\x07" + good[3:],
        "truncated_header": good[:9],
        "too_short": b"\x00\x00",
        "zero_dims": b"\x00\x00\x08\x00",
        "corrupt_gzip": gzip.compress(good)[:-6],
        "empty": b"",
    }


@pytest.mark.parametrize("case", list(_malformed_cases()))
def test_read_idx_rejects_malformed_files(tmp_path: Path, case: str) -> None:
    path = tmp_path / f"{case}-idx3-ubyte"
    path.write_bytes(_malformed_cases()[case])
    with pytest.raises(DatasetError) as err:
        read_idx(path)
    message = assert_one_line(err)
    assert path.name in message


def test_read_idx_error_messages_say_what_is_wrong(tmp_path: Path) -> None:
    cases = _malformed_cases()
    expectations = {
        "bad_magic": "magic",
        "truncated_payload": "truncated",
        "unknown_dtype_code": "0x07",
        "corrupt_gzip": "gzip",
    }
    for case, needle in expectations.items():
        path = tmp_path / case
        path.write_bytes(cases[case])
        with pytest.raises(DatasetError, match=needle):
            read_idx(path)
    with pytest.raises(DatasetError, match="missing-file"):
        read_idx(tmp_path / "missing-file")


# ------------------------------------------------------------------------------------------
# MNIST / Fashion-MNIST loaders
# ------------------------------------------------------------------------------------------


def _put_test_files(directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    if (SHARED_MNIST / "t10k-labels-idx1-ubyte.gz").is_file():
        for name in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
            shutil.copyfile(SHARED_MNIST / name, directory / name)
    else:
        images, labels = tiny_idx_set(np.random.default_rng(1), 5)
        write_idx(directory / "t10k-images-idx3-ubyte.gz", images, compress=True)
        write_idx(directory / "t10k-labels-idx1-ubyte.gz", labels, compress=True)


def test_mnist_offline_with_only_test_files_names_the_missing_ones(tmp_path: Path) -> None:
    _put_test_files(tmp_path / "mnist")
    before = listing(tmp_path / "mnist")
    with pytest.raises(DatasetError) as err:
        mnist(data_dir=tmp_path, download=False)
    message = assert_one_line(err)
    assert "train-images-idx3-ubyte" in message and "train-labels-idx1-ubyte" in message
    assert "t10k" not in message
    assert str(tmp_path / "mnist") in message
    assert "--data-dir" in message and "CURVEBENCH_DATA" in message
    assert listing(tmp_path / "mnist") == before


def test_mnist_unreachable_download_gives_the_same_guidance(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _put_test_files(tmp_path / "mnist")
    dead = tmp_path / "no-such-server"
    remotes = tuple(
        RemoteFile(r.filename, r.sha256, r.md5, ((dead / r.filename).as_uri(),))
        for r in REMOTE_SOURCES["mnist"]
    )
    monkeypatch.setitem(REMOTE_SOURCES, "mnist", remotes)
    with pytest.raises(DatasetError) as err:
        mnist(data_dir=tmp_path, download=True)
    message = assert_one_line(err)
    assert "download failed" in message
    assert "train-images-idx3-ubyte.gz" in message and "train-labels-idx1-ubyte.gz" in message
    assert "--data-dir" in message and "CURVEBENCH_DATA" in message
    assert listing(tmp_path / "mnist") == ["t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"]


@pytest.mark.parametrize(
    ("loader", "folder", "name"),
    [(mnist, "mnist", "mnist"), (fashion_mnist, "fashion-mnist", "fashion_mnist")],
)
def test_idx_loaders_read_all_four_files(tmp_path: Path, loader, folder: str, name: str) -> None:
    arrays = write_tiny_mnist_dir(tmp_path / folder, n_train=6, n_test=4)
    data = loader(data_dir=tmp_path, download=False)
    assert data.name == name and data.num_classes == 10 and data.is_classification
    assert data.x_train.shape == (6, 1, 28, 28) and data.x_test.shape == (4, 1, 28, 28)
    assert data.x_train.dtype == np.float32 and data.y_train.dtype == np.int64
    assert data.y_train.shape == (6,) and data.y_test.shape == (4,)
    assert float(data.x_train.min()) >= 0.0 and float(data.x_train.max()) <= 1.0
    assert data.x_train[0, 0, 0, 0] == 0.0 and data.x_train[0, 0, 0, 1] == 1.0
    images, labels = arrays["train"]
    expected = (images.astype(np.float32) / np.float32(255.0))[:, None]
    np.testing.assert_array_equal(data.x_train, expected)
    assert data.y_train.tolist() == labels.tolist()
    assert data.y_test.tolist() == arrays["test"][1].tolist()


def test_mnist_uses_curvebench_data_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_tiny_mnist_dir(tmp_path / "mnist")
    monkeypatch.setenv("CURVEBENCH_DATA", str(tmp_path))
    assert mnist(download=False).x_train.shape[0] == 6


def test_mnist_rejects_inconsistent_files(tmp_path: Path) -> None:
    root = tmp_path / "mnist"
    write_tiny_mnist_dir(root, n_train=6)
    write_idx(root / "train-labels-idx1-ubyte", np.zeros(5, np.uint8), compress=False)
    with pytest.raises(DatasetError, match="5 labels for 6 images"):
        mnist(data_dir=tmp_path, download=False)
    write_idx(root / "train-labels-idx1-ubyte", np.full(6, 10, np.uint8), compress=False)
    with pytest.raises(DatasetError, match="outside 0..9"):
        mnist(data_dir=tmp_path, download=False)
    write_idx(root / "train-images-idx3-ubyte", np.zeros((6, 8, 8), np.uint8), compress=False)
    with pytest.raises(DatasetError, match=r"\(N, 28, 28\)"):
        mnist(data_dir=tmp_path, download=False)


# ------------------------------------------------------------------------------------------
# downloads (file:// sources stand in for the network)
# ------------------------------------------------------------------------------------------


def test_download_file_verifies_and_renames_atomically(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    payload = os.urandom(3 * (1 << 20) + 17)  # several streaming chunks
    source = tmp_path / "server" / "blob.bin"
    source.parent.mkdir()
    source.write_bytes(payload)
    dest_dir = tmp_path / "data" / "deeper"  # created on demand
    dest = dest_dir / "blob.bin"

    renames: list[tuple[Path, Path]] = []
    real_replace = os.replace

    def spy(src, dst):
        renames.append((Path(src), Path(dst)))
        assert not Path(dst).exists()  # the final name only appears at the rename
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", spy)
    out = download_file([source.as_uri()], dest, sha256=sha256_of(payload))
    assert out == dest and dest.read_bytes() == payload
    assert len(renames) == 1
    tmp_src, final = renames[0]
    assert final == dest and tmp_src.parent == dest_dir and tmp_src != dest
    assert listing(dest_dir) == ["blob.bin"]


def test_download_file_checksum_mismatch_leaves_nothing(tmp_path: Path) -> None:
    source = tmp_path / "blob.bin"
    source.write_bytes(b"not the real file")
    dest_dir = tmp_path / "data"
    dest_dir.mkdir()
    with pytest.raises(DatasetError) as err:
        download_file([source.as_uri()], dest_dir / "blob.bin", sha256="0" * 64)
    message = assert_one_line(err)
    assert "checksum mismatch" in message and "blob.bin" in message
    assert listing(dest_dir) == []


def test_download_file_tries_the_next_mirror(tmp_path: Path) -> None:
    payload = b"payload"
    good = tmp_path / "good.bin"
    good.write_bytes(payload)
    dest = tmp_path / "out" / "f.bin"
    urls = [(tmp_path / "missing.bin").as_uri(), good.as_uri()]
    download_file(urls, dest, sha256=sha256_of(payload))
    assert dest.read_bytes() == payload
    assert listing(dest.parent) == ["f.bin"]


def test_download_file_md5_fallback_and_argument_checks(tmp_path: Path) -> None:
    payload = b"md5 only"
    src = tmp_path / "src.bin"
    src.write_bytes(payload)
    md5 = hashlib.md5(payload).hexdigest()
    download_file([src.as_uri()], tmp_path / "a" / "x", sha256=None, md5=md5)
    assert (tmp_path / "a" / "x").read_bytes() == payload
    with pytest.raises(DatasetError, match="md5"):
        download_file([src.as_uri()], tmp_path / "b" / "x", sha256=None, md5="f" * 32)
    assert listing(tmp_path / "b") == []
    with pytest.raises(ValueError):
        download_file([src.as_uri()], tmp_path / "c" / "x", sha256=None, md5=None)
    with pytest.raises(ValueError):
        download_file([], tmp_path / "c" / "x", sha256="0" * 64)


def test_download_file_unreachable_raises_dataset_error(tmp_path: Path) -> None:
    with pytest.raises(DatasetError) as err:
        download_file([(tmp_path / "nope").as_uri()], tmp_path / "d" / "x", sha256="0" * 64)
    assert "could not download x" in assert_one_line(err)
    assert listing(tmp_path / "d") == []


def _serve_idx_set(tmp_path: Path, *, corrupt: str | None = None) -> dict:
    """Write a tiny gzipped IDX set to a fake server folder and describe it as RemoteFiles."""
    server = tmp_path / "server"
    server.mkdir()
    rng = np.random.default_rng(2)
    train, test = tiny_idx_set(rng, 3), tiny_idx_set(rng, 2)
    arrays = dict(zip(ds._IDX_STEMS, (*train, *test), strict=True))
    remotes = []
    for stem, array in arrays.items():
        blob = gzip.compress(idx_bytes(array))
        (server / f"{stem}.gz").write_bytes(blob)
        digest = "0" * 64 if stem == corrupt else sha256_of(blob)
        url = (server / f"{stem}.gz").as_uri()
        remotes.append(RemoteFile(f"{stem}.gz", digest, None, (url,)))
    return {"remotes": tuple(remotes), "train": train, "test": test}


def test_mnist_downloads_missing_files_from_a_local_source(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    served = _serve_idx_set(tmp_path)
    monkeypatch.setitem(REMOTE_SOURCES, "mnist", served["remotes"])
    data = mnist(data_dir=tmp_path / "data", download=True)
    assert data.x_train.shape == (3, 1, 28, 28) and data.x_test.shape == (2, 1, 28, 28)
    assert data.y_train.tolist() == served["train"][1].tolist()
    assert listing(tmp_path / "data" / "mnist") == sorted(f"{s}.gz" for s in ds._IDX_STEMS)


def test_fashion_mnist_download_with_wrong_checksum_fails_cleanly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    served = _serve_idx_set(tmp_path, corrupt="train-labels-idx1-ubyte")
    monkeypatch.setitem(REMOTE_SOURCES, "fashion-mnist", served["remotes"])
    with pytest.raises(DatasetError) as err:
        fashion_mnist(data_dir=tmp_path / "data", download=True)
    message = assert_one_line(err)
    assert "checksum mismatch" in message and "train-labels-idx1-ubyte.gz" in message
    # Files verified before the bad one stay; no partial or temporary file is left behind.
    left = listing(tmp_path / "data" / "fashion-mnist")
    assert "train-labels-idx1-ubyte.gz" not in left
    assert all(not name.startswith(".") and not name.endswith(".part") for name in left)


# ------------------------------------------------------------------------------------------
# CIFAR-10
# ------------------------------------------------------------------------------------------


def _cifar_batch(rng: np.random.Generator, n: int, offset: int) -> dict:
    data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
    labels = [int((offset + i) % 10) for i in range(n)]
    return {b"batch_label": b"fake", b"labels": labels, b"data": data, b"filenames": [b"x"] * n}


def _write_cifar_batches(folder: Path, *, per_batch: int = 2, n_test: int = 3) -> dict:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    batches = {}
    for i in range(1, 6):
        batches[f"data_batch_{i}"] = _cifar_batch(rng, per_batch, i)
    batches["test_batch"] = _cifar_batch(rng, n_test, 0)
    for name, batch in batches.items():
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f, protocol=2)
    return batches


def _check_cifar(data: Dataset, batches: dict) -> None:
    assert data.name == "cifar10" and data.num_classes == 10
    assert data.x_train.shape == (10, 3, 32, 32) and data.x_test.shape == (3, 3, 32, 32)
    assert data.x_train.dtype == np.float32 and data.y_train.dtype == np.int64
    assert float(data.x_train.min()) >= 0.0 and float(data.x_train.max()) <= 1.0
    first = batches["data_batch_1"][b"data"][0].reshape(3, 32, 32).astype(np.float32) / 255
    np.testing.assert_allclose(data.x_train[0], first, rtol=1e-6)
    expected_train = sum((batches[f"data_batch_{i}"][b"labels"] for i in range(1, 6)), [])
    assert data.y_train.tolist() == expected_train
    assert data.y_test.tolist() == batches["test_batch"][b"labels"]


def test_cifar10_reads_pickle_batches(tmp_path: Path) -> None:
    batches = _write_cifar_batches(tmp_path / "cifar10" / "cifar-10-batches-py")
    _check_cifar(cifar10(data_dir=tmp_path, download=False), batches)


def test_cifar10_extracts_the_tarball(tmp_path: Path) -> None:
    staging = tmp_path / "staging"
    batches = _write_cifar_batches(staging / "cifar-10-batches-py")
    root = tmp_path / "data" / "cifar10"
    root.mkdir(parents=True)
    with tarfile.open(root / "cifar-10-python.tar.gz", "w:gz") as tar:
        tar.add(staging / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    _check_cifar(cifar10(data_dir=tmp_path / "data", download=False), batches)
    assert (root / "cifar-10-batches-py" / "test_batch").is_file()


def _tar_with(path: Path, name: str, *, symlink_to: str | None = None) -> None:
    with tarfile.open(path, "w:gz") as tar:
        ok = tarfile.TarInfo("cifar-10-batches-py/readme.html")
        ok.size = 2
        tar.addfile(ok, io.BytesIO(b"ok"))
        info = tarfile.TarInfo(name)
        if symlink_to is not None:
            info.type, info.linkname = tarfile.SYMTYPE, symlink_to
            tar.addfile(info)
        else:
            info.size = 4
            tar.addfile(info, io.BytesIO(b"evil"))


@pytest.mark.parametrize(
    "name", ["../evil.txt", "cifar-10-batches-py/../../evil.txt", "/evil-absolute.txt"]
)
def test_cifar10_tar_refuses_path_traversal(tmp_path: Path, name: str) -> None:
    root = tmp_path / "data" / "cifar10"
    root.mkdir(parents=True)
    _tar_with(root / "cifar-10-python.tar.gz", name)
    with pytest.raises(DatasetError) as err:
        cifar10(data_dir=tmp_path / "data", download=False)
    message = assert_one_line(err)
    assert "unsafe" in message and repr(name) in message
    assert not (tmp_path / "data" / "evil.txt").exists()
    assert not (tmp_path / "evil.txt").exists()
    assert listing(root) == ["cifar-10-python.tar.gz"]  # nothing extracted at all


def test_cifar10_tar_refuses_links(tmp_path: Path) -> None:
    root = tmp_path / "data" / "cifar10"
    root.mkdir(parents=True)
    _tar_with(root / "cifar-10-python.tar.gz", "cifar-10-batches-py/test_batch", symlink_to="/")
    with pytest.raises(DatasetError, match="not a regular file"):
        cifar10(data_dir=tmp_path / "data", download=False)


def test_cifar10_missing_offline(tmp_path: Path) -> None:
    with pytest.raises(DatasetError) as err:
        cifar10(data_dir=tmp_path, download=False)
    message = assert_one_line(err)
    assert "cifar-10-python.tar.gz" in message and str(tmp_path / "cifar10") in message
    assert "--data-dir" in message and "CURVEBENCH_DATA" in message


def test_cifar10_refuses_pickles_with_arbitrary_globals(tmp_path: Path) -> None:
    folder = tmp_path / "cifar10" / "cifar-10-batches-py"
    _write_cifar_batches(folder)
    with open(folder / "data_batch_3", "wb") as f:
        pickle.dump({b"data": random.Random, b"labels": []}, f)
    with pytest.raises(DatasetError, match="data_batch_3.*refusing to load global"):
        cifar10(data_dir=tmp_path, download=False)


def test_cifar10_rejects_a_wrongly_shaped_batch(tmp_path: Path) -> None:
    folder = tmp_path / "cifar10" / "cifar-10-batches-py"
    _write_cifar_batches(folder)
    with open(folder / "test_batch", "wb") as f:
        pickle.dump({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}, f)
    with pytest.raises(DatasetError, match=r"test_batch.*\(N, 3072\)"):
        cifar10(data_dir=tmp_path, download=False)


# ------------------------------------------------------------------------------------------
# digits, mnist1d
# ------------------------------------------------------------------------------------------


def test_digits_split_and_scaling() -> None:
    data = digits()
    assert data.name == "digits" and data.num_classes == 10
    assert data.x_train.shape == (1437, 64) and data.x_test.shape == (360, 64)
    assert data.x_train.dtype == np.float32 and data.y_train.dtype == np.int64
    assert float(data.x_train.min()) == 0.0 and float(data.x_train.max()) == 1.0
    assert np.all(data.x_train * 16 == np.round(data.x_train * 16))
    # Stratified: every class has 35-37 test images (1797 images, ~180 per class).
    counts = np.bincount(data.y_test, minlength=10)
    assert counts.min() >= 35 and counts.max() <= 37
    again = digits(seed=0)
    assert np.array_equal(again.x_train, data.x_train) and np.array_equal(again.y_test, data.y_test)
    other = digits(seed=1)
    assert not np.array_equal(other.x_train, data.x_train)
    assert digits(test_fraction=0.5).x_test.shape[0] == 899
    with pytest.raises(ValueError):
        digits(test_fraction=1.0)


def test_mnist1d_is_generated_offline_and_cached() -> None:
    py_state, np_state = random.getstate(), np.random.get_state()
    data = mnist1d(seed=0)
    assert random.getstate() == py_state
    assert np.array_equal(np.random.get_state()[1], np_state[1])
    assert data.name == "mnist1d" and data.num_classes == 10
    assert data.x_train.shape == (4000, 40) and data.x_test.shape == (1000, 40)
    assert data.x_train.dtype == np.float32 and data.y_train.dtype == np.int64
    assert data.y_train.shape == (4000,) and data.y_test.shape == (1000,)
    assert set(np.unique(data.y_train).tolist()) == set(range(10))
    assert mnist1d(seed=0) is data
    other = mnist1d(seed=1)
    assert other is not data and not np.array_equal(other.x_train, data.x_train)


# ------------------------------------------------------------------------------------------
# synthetic teachers
# ------------------------------------------------------------------------------------------


def _residual_std(data: Dataset) -> float:
    x = np.concatenate([data.x_train, np.ones((data.x_train.shape[0], 1))], axis=1,
                       dtype=np.float64)
    sol = np.linalg.lstsq(x, data.y_train.astype(np.float64), rcond=None)[0]
    return float((x @ sol - data.y_train).std())


@pytest.mark.parametrize("teacher", ["linear", "mlp"])
def test_synthetic_regression_shapes_and_determinism(teacher: str) -> None:
    kwargs = dict(n_train=200, n_test=50, d_in=5, d_out=3, noise=0.1, teacher=teacher)
    torch_state = torch.get_rng_state()
    data = synthetic_regression(**kwargs, seed=0)
    assert torch.equal(torch.get_rng_state(), torch_state)  # global RNG untouched
    assert data.num_classes is None and not data.is_classification
    assert data.x_train.shape == (200, 5) and data.y_train.shape == (200, 3)
    assert data.x_test.shape == (50, 5) and data.y_test.shape == (50, 3)
    for t in (data.x_train, data.y_train, data.x_test, data.y_test):
        assert isinstance(t, np.ndarray) and t.dtype == np.float32
    same = synthetic_regression(**kwargs, seed=0)
    assert np.array_equal(same.x_train, data.x_train) and np.array_equal(same.y_test, data.y_test)
    other = synthetic_regression(**kwargs, seed=1)
    assert not np.array_equal(other.x_train, data.x_train)
    assert not np.array_equal(other.y_train, data.y_train)
    # The training set does not depend on the test-set size.
    bigger_test = synthetic_regression(**{**kwargs, "n_test": 7}, seed=0)
    assert np.array_equal(bigger_test.y_train, data.y_train)


def test_synthetic_linreg_data_is_unchanged() -> None:
    """The values the problem's target was calibrated on (its closed-form optimum)."""
    from curvebench.problems.offline_problems import linreg_optimum

    assert linreg_optimum() == pytest.approx(0.0096269, abs=1e-7)


def test_synthetic_regression_teachers_differ_in_kind() -> None:
    common = dict(n_train=2000, n_test=10, d_in=4, d_out=2, seed=3)
    assert _residual_std(synthetic_regression(**common, noise=0.0, teacher="linear")) < 1e-4
    noisy = _residual_std(synthetic_regression(**common, noise=0.5, teacher="linear"))
    assert 0.45 < noisy < 0.55
    assert _residual_std(synthetic_regression(**common, noise=0.0, teacher="mlp")) > 0.05


def test_synthetic_regression_validates_arguments() -> None:
    ok = dict(n_train=4, n_test=2, d_in=2, d_out=1, noise=0.0, teacher="linear", seed=0)
    for bad in (
        {"n_train": 0},
        {"d_in": 0},
        {"n_test": -1},
        {"noise": -1.0},
        {"teacher": "cubic"},
        {"seed": -3},
    ):
        with pytest.raises(ValueError):
            synthetic_regression(**{**ok, **bad})


def test_synthetic_classification_labels_and_determinism() -> None:
    kwargs = dict(n_train=3000, n_test=500, d_in=8, num_classes=5)
    data = synthetic_classification(**kwargs, seed=0)
    assert data.num_classes == 5 and data.is_classification
    assert data.x_train.shape == (3000, 8) and data.x_train.dtype == np.float32
    assert data.y_train.shape == (3000,) and data.y_train.dtype == np.int64
    assert data.y_test.shape == (500,)
    assert int(data.y_train.min()) >= 0 and int(data.y_train.max()) < 5
    # Every class occurs, none dominates (the teacher is balanced on a reference sample).
    freq = np.bincount(data.y_train, minlength=5) / 3000
    assert float(freq.min()) > 0.12 and float(freq.max()) < 0.28
    same = synthetic_classification(**kwargs, seed=0)
    assert np.array_equal(same.x_train, data.x_train) and np.array_equal(same.y_train, data.y_train)
    other = synthetic_classification(**kwargs, seed=1)
    assert not np.array_equal(other.y_train, data.y_train)
    wide = synthetic_classification(**kwargs, seed=0, teacher_width=64)
    assert np.array_equal(wide.x_train, data.x_train)
    assert not np.array_equal(wide.y_train, data.y_train)
    with pytest.raises(ValueError):
        synthetic_classification(**{**kwargs, "num_classes": 1}, seed=0)
