"""Data sources of the benchmark: synthetic teachers, bundled sets and the classic image sets.

Every loader returns a :class:`Dataset` of NumPy arrays (each backend converts them to its own
arrays). Synthetic data, ``digits`` and
``mnist1d`` are generated or read offline; MNIST, Fashion-MNIST and CIFAR-10 are read from a
data directory (see :func:`resolve_data_dir`) and, when allowed, downloaded into it first with
SHA-256 verification.
"""

from __future__ import annotations

import codecs
import functools
import gzip
import hashlib
import http.client
import math
import os
import pickle
import random
import shutil
import struct
import tarfile
import tempfile
import urllib.request
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO, Literal

import numpy as np

__all__ = [
    "DOWNLOAD_TIMEOUT_S",
    "REMOTE_SOURCES",
    "Dataset",
    "DatasetError",
    "RemoteFile",
    "cifar10",
    "digits",
    "download_file",
    "fashion_mnist",
    "mnist",
    "mnist1d",
    "read_idx",
    "resolve_data_dir",
    "synthetic_classification",
    "synthetic_regression",
]

DOWNLOAD_TIMEOUT_S = 30.0
"""Socket timeout, in seconds, of every download request."""

_ENV_DATA_DIR = "CURVEBENCH_DATA"
_CHUNK = 1 << 20


class DatasetError(Exception):
    """A dataset could not be found, fetched or parsed.

    The message is always a single line, fit to print to a user as is.
    """

    def __init__(self, message: str) -> None:
        super().__init__(_one_line(message))


def _one_line(text: object) -> str:
    """Collapse any line breaks in ``str(text)`` into single spaces."""
    return " ".join(part.strip() for part in str(text).splitlines() if part.strip())


@dataclass(frozen=True)
class Dataset:
    """A train/test split of one data source, as C-contiguous NumPy arrays.

    Inputs are float32: images ``(N, C, H, W)`` in [0, 1], ``digits`` flat ``(N, 64)`` in
    [0, 1], ``mnist1d`` ``(N, 40)``, synthetic sets ``(N, d_in)``. Targets are int64 class
    labels for classification and float32 ``(N, d_out)`` for regression.

    Attributes:
        name: Short identifier of the source, e.g. ``"mnist"``.
        x_train: Training inputs.
        y_train: Training targets.
        x_test: Test inputs.
        y_test: Test targets.
        num_classes: Number of classes, or ``None`` for regression.
    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int | None

    def __post_init__(self) -> None:
        for split, x, y in (
            ("train", self.x_train, self.y_train),
            ("test", self.x_test, self.y_test),
        ):
            if x.shape[0] != y.shape[0]:
                raise ValueError(
                    f"{self.name}: {split} inputs have {x.shape[0]} rows but targets have "
                    f"{y.shape[0]}"
                )

    @property
    def is_classification(self) -> bool:
        """Whether the targets are class labels (``num_classes`` is set)."""
        return self.num_classes is not None


# --------------------------------------------------------------------------------------------
# Synthetic teacher-student problems
# --------------------------------------------------------------------------------------------

_REGRESSION_TEACHER_WIDTH = 32
_BALANCE_SAMPLES = 8192
_BALANCE_STEPS = 200


def _generator(seed: int, stream: int) -> Any:
    """Return a fresh torch generator for one independent stream derived from ``seed``.

    The synthetic sets keep drawing with torch's generator (imported here only), so their
    values, and the targets calibrated on them, are those of earlier releases.
    """
    import torch

    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    state = np.random.SeedSequence([seed, stream]).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator().manual_seed(int(state) & ((1 << 63) - 1))


def _numpy(tensor: Any, dtype: type) -> np.ndarray:
    return np.ascontiguousarray(tensor.numpy(), dtype=dtype)


def _check_positive(**values: int) -> None:
    for key, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{key} must be a positive int, got {value!r}")


def _check_non_negative(**values: int) -> None:
    for key, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{key} must be a non-negative int, got {value!r}")


def synthetic_regression(
    *,
    n_train: int,
    n_test: int,
    d_in: int,
    d_out: int,
    noise: float,
    teacher: Literal["linear", "mlp"],
    seed: int,
) -> Dataset:
    """Seeded teacher-student regression with Gaussian inputs and additive Gaussian noise.

    Inputs are ``x ~ N(0, I_{d_in})``. The ``"linear"`` teacher is ``y = W x + b`` with
    ``W ~ N(0, 1/d_in)`` and ``b ~ N(0, 0.25)``; the ``"mlp"`` teacher is the fixed random
    network ``y = W2 tanh(W1 x + b1) + b2`` with one hidden layer of width 32
    (``W1 ~ N(0, 2.25/d_in)``, ``b1 ~ N(0, 0.25)``, ``W2 ~ N(0, 1/32)``, ``b2 ~ N(0, 0.25)``).
    Each target then gets ``noise * N(0, 1)`` added. The teacher, the training set and the test
    set come from separate generators derived from ``seed``, so the teacher does not depend on
    the sizes and the training set does not depend on ``n_test``. The global RNGs are untouched.

    Args:
        n_train: Number of training examples (>= 1).
        n_test: Number of test examples (>= 0).
        d_in: Input dimension (>= 1).
        d_out: Output dimension (>= 1).
        noise: Standard deviation of the additive label noise (>= 0).
        teacher: ``"linear"`` or ``"mlp"``.
        seed: Non-negative seed; the same seed gives identical tensors.

    Returns:
        A regression :class:`Dataset` with float32 ``x`` of shape ``(N, d_in)``, float32 ``y`` of
        shape ``(N, d_out)`` and ``num_classes=None``.

    Raises:
        ValueError: On a non-positive size, negative noise, negative seed or unknown teacher.
    """
    _check_positive(n_train=n_train, d_in=d_in, d_out=d_out)
    _check_non_negative(n_test=n_test)
    if not math.isfinite(noise) or noise < 0:
        raise ValueError(f"noise must be a finite number >= 0, got {noise!r}")
    if teacher not in ("linear", "mlp"):
        raise ValueError(f"teacher must be 'linear' or 'mlp', got {teacher!r}")
    import torch

    g = _generator(seed, 0)
    if teacher == "linear":
        w = torch.randn(d_out, d_in, generator=g) / math.sqrt(d_in)
        b = 0.5 * torch.randn(d_out, generator=g)

        def f(x: torch.Tensor) -> torch.Tensor:
            return x @ w.T + b

    else:
        width = _REGRESSION_TEACHER_WIDTH
        w1 = 1.5 * torch.randn(width, d_in, generator=g) / math.sqrt(d_in)
        b1 = 0.5 * torch.randn(width, generator=g)
        w2 = torch.randn(d_out, width, generator=g) / math.sqrt(width)
        b2 = 0.5 * torch.randn(d_out, generator=g)

        def f(x: torch.Tensor) -> torch.Tensor:
            return torch.tanh(x @ w1.T + b1) @ w2.T + b2

    def sample(n: int, stream: int) -> tuple[np.ndarray, np.ndarray]:
        gs = _generator(seed, stream)
        x = torch.randn(n, d_in, generator=gs)
        y = f(x) + noise * torch.randn(n, d_out, generator=gs)
        return _numpy(x, np.float32), _numpy(y, np.float32)

    x_train, y_train = sample(n_train, 1)
    x_test, y_test = sample(n_test, 2)
    return Dataset(f"synthetic_regression_{teacher}", x_train, y_train, x_test, y_test, None)


def synthetic_classification(
    *,
    n_train: int,
    n_test: int,
    d_in: int,
    num_classes: int,
    seed: int,
    teacher_width: int = 32,
) -> Dataset:
    """Seeded teacher-student classification: labels are the argmax of a random tanh MLP.

    Inputs are ``x ~ N(0, I_{d_in})``. The teacher computes
    ``logits = W2 tanh(W1 x + b1)`` with ``W1 ~ N(0, 4/d_in)``, ``b1 ~ N(0, 0.25)`` and
    ``W2 ~ N(0, 1/teacher_width)``. A per-class offset, fitted on a fixed reference sample of
    the input distribution, is added so that the classes are about equally frequent, and the
    label is the argmax. Labels are thus a deterministic, nonlinear function of ``x`` (a wide
    enough student can fit them). The teacher, training set and test set use separate
    generators derived from ``seed``; the global RNGs are untouched.

    Args:
        n_train: Number of training examples (>= 1).
        n_test: Number of test examples (>= 0).
        d_in: Input dimension (>= 1).
        num_classes: Number of classes (>= 2).
        seed: Non-negative seed; the same seed gives identical tensors.
        teacher_width: Hidden width of the teacher (>= 1).

    Returns:
        A classification :class:`Dataset` with float32 ``x`` of shape ``(N, d_in)`` and int64
        labels ``y`` of shape ``(N,)`` in ``[0, num_classes)``.

    Raises:
        ValueError: On a non-positive size, fewer than two classes or a negative seed.
    """
    _check_positive(n_train=n_train, d_in=d_in, teacher_width=teacher_width)
    _check_non_negative(n_test=n_test)
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"num_classes must be an int >= 2, got {num_classes!r}")
    import torch

    g = _generator(seed, 0)
    w1 = 2.0 * torch.randn(teacher_width, d_in, generator=g) / math.sqrt(d_in)
    b1 = 0.5 * torch.randn(teacher_width, generator=g)
    w2 = torch.randn(num_classes, teacher_width, generator=g) / math.sqrt(teacher_width)

    def raw_logits(x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x @ w1.T + b1) @ w2.T

    # Per-class offsets that equalise the label frequencies on a fixed reference sample.
    # (NumPy, single-threaded: many tiny ops, which a thread pool only slows down.)
    reference = raw_logits(torch.randn(_BALANCE_SAMPLES, d_in, generator=g)).double().numpy()
    shift = -reference.mean(axis=0)
    step = 0.5 * float(reference.std())
    for _ in range(_BALANCE_STEPS):
        labels = (reference + shift).argmax(axis=1)
        freq = np.bincount(labels, minlength=num_classes) / _BALANCE_SAMPLES
        shift += step * (1.0 / num_classes - freq)
    offset = torch.from_numpy(shift.astype(np.float32))

    def sample(n: int, stream: int) -> tuple[np.ndarray, np.ndarray]:
        x = torch.randn(n, d_in, generator=_generator(seed, stream))
        y = (raw_logits(x) + offset).argmax(dim=1)
        return _numpy(x, np.float32), _numpy(y, np.int64)

    x_train, y_train = sample(n_train, 1)
    x_test, y_test = sample(n_test, 2)
    return Dataset("synthetic_classification", x_train, y_train, x_test, y_test, num_classes)


# --------------------------------------------------------------------------------------------
# Bundled / generated sets
# --------------------------------------------------------------------------------------------


def digits(*, seed: int = 0, test_fraction: float = 0.2) -> Dataset:
    """The scikit-learn 8x8 digits (bundled, offline) with a seeded stratified split.

    Pixels (0..16) are divided by 16 and kept flat; models reshape to ``(N, 1, 8, 8)``
    themselves. The split is ``sklearn.model_selection.train_test_split`` with
    ``random_state=seed`` and ``stratify=y``.

    Args:
        seed: Random state of the split.
        test_fraction: Fraction of the 1797 images held out for testing, in (0, 1).

    Returns:
        A 10-class :class:`Dataset` with float32 ``x`` of shape ``(N, 64)`` in [0, 1] and int64
        labels.

    Raises:
        ValueError: If ``test_fraction`` is not strictly between 0 and 1.
    """
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction!r}")
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    x_tr, x_te, y_tr, y_te = train_test_split(
        x, y, test_size=test_fraction, random_state=seed, stratify=y
    )

    def as_x(a: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(a, dtype=np.float32) / np.float32(16.0)

    def as_y(a: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(a, dtype=np.int64)

    return Dataset("digits", as_x(x_tr), as_y(y_tr), as_x(x_te), as_y(y_te), 10)


def mnist1d(*, seed: int = 0) -> Dataset:
    """MNIST-1D generated offline with ``mnist1d.data.make_dataset`` (4000 train / 1000 test).

    The generator's default arguments are used with ``args.seed = seed`` (the library's own
    default seed is 42). Nothing is downloaded. Generation takes about a second and a half, so
    results are cached per seed in-process: repeated calls return the same object, whose
    arrays must therefore not be modified in place. The library seeds Python's and NumPy's
    global RNGs; their previous states are restored afterwards.

    Args:
        seed: Seed of the generator.

    Returns:
        A 10-class :class:`Dataset` with float32 ``x`` of shape ``(N, 40)`` (standardised by the
        generator) and int64 labels.

    Raises:
        ValueError: If ``seed`` is not a non-negative int.
    """
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    return _mnist1d_cached(seed)


@functools.cache
def _mnist1d_cached(seed: int) -> Dataset:
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.seed = seed
    py_state, np_state = random.getstate(), np.random.get_state()
    try:
        data = make_dataset(args)
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)

    def as_x(a: Any) -> np.ndarray:
        return np.ascontiguousarray(a, dtype=np.float32)

    def as_y(a: Any) -> np.ndarray:
        return np.ascontiguousarray(a, dtype=np.int64)

    return Dataset(
        "mnist1d", as_x(data["x"]), as_y(data["y"]), as_x(data["x_test"]), as_y(data["y_test"]), 10
    )


# --------------------------------------------------------------------------------------------
# Data directory and downloads
# --------------------------------------------------------------------------------------------


def resolve_data_dir(data_dir: Path | str | None) -> Path:
    """Return the root directory that holds the downloadable data sets.

    Precedence: the explicit argument, then the ``CURVEBENCH_DATA`` environment variable,
    then ``$XDG_CACHE_HOME/curvebench`` (``~/.cache/curvebench`` when that is unset). Each
    data set lives in a subdirectory (``mnist``, ``fashion-mnist``, ``cifar10``). The directory
    is not created here.

    Args:
        data_dir: Explicit directory, or ``None`` (an empty string counts as ``None``).

    Returns:
        The data root, with ``~`` expanded.
    """
    if data_dir is not None and str(data_dir) != "":
        return Path(data_dir).expanduser()
    env = os.environ.get(_ENV_DATA_DIR, "")
    if env:
        return Path(env).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME", "")
    base = Path(cache).expanduser() if cache else Path.home() / ".cache"
    return base / "curvebench"


@dataclass(frozen=True)
class RemoteFile:
    """One downloadable file: its name, digests and the URLs to try in order.

    Attributes:
        filename: Name of the file in the data set's directory.
        sha256: Expected SHA-256 hex digest, or ``None`` if unknown.
        md5: Expected MD5 hex digest, used only when ``sha256`` is ``None``.
        urls: Candidate URLs, tried in order until one succeeds.
    """

    filename: str
    sha256: str | None
    md5: str | None
    urls: tuple[str, ...]


def _remote_set(
    mirrors: Sequence[str], digests: Sequence[tuple[str, str | None, str | None]]
) -> tuple[RemoteFile, ...]:
    return tuple(
        RemoteFile(name, sha, md5, tuple(m + name for m in mirrors)) for name, sha, md5 in digests
    )


# SHA-256 digests as published in public checksum tables (TensorFlow Datasets' url_checksums
# for MNIST and Fashion-MNIST, the Keras CIFAR-10 loader for the python tarball); the MD5
# values are the ones torchvision checks. All mirrors of a file serve identical bytes.
REMOTE_SOURCES: dict[str, tuple[RemoteFile, ...]] = {
    "mnist": _remote_set(
        ("https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/"),
        (
            (
                "train-images-idx3-ubyte.gz",
                "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
                "f68b3c2dcbeaaa9fbdd348bbdeb94873",
            ),
            (
                "train-labels-idx1-ubyte.gz",
                "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
                "d53e105ee54ea40749a09fcbcd1e9432",
            ),
            (
                "t10k-images-idx3-ubyte.gz",
                "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
                "9fb629c4189551a2d022fa330f9573f3",
            ),
            (
                "t10k-labels-idx1-ubyte.gz",
                "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
                "ec29112dd5afa0611ce80d1b7f02629c",
            ),
        ),
    ),
    "fashion-mnist": _remote_set(
        ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
        (
            (
                "train-images-idx3-ubyte.gz",
                "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
                "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
            ),
            (
                "train-labels-idx1-ubyte.gz",
                "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
                "25c81989df183df01b3e8a0aad5dffbe",
            ),
            (
                "t10k-images-idx3-ubyte.gz",
                "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
                "bef4ecab320f06d8554ea6380940ec79",
            ),
            (
                "t10k-labels-idx1-ubyte.gz",
                "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
                "bb300cfdad3c16e7a12a480ee83cd310",
            ),
        ),
    ),
    "cifar10": _remote_set(
        ("https://www.cs.toronto.edu/~kriz/",),
        (
            (
                "cifar-10-python.tar.gz",
                "6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce",
                "c58f30108f718f92721af3b95e74349a",
            ),
        ),
    ),
}


class _DownloadUnavailableError(DatasetError):
    """No candidate URL of a file could be fetched (network or I/O failure)."""


def download_file(
    urls: Sequence[str],
    dest: Path,
    *,
    sha256: str | None,
    md5: str | None = None,
    timeout: float = DOWNLOAD_TIMEOUT_S,
) -> Path:
    """Download one file with checksum verification and an atomic rename into place.

    Each URL is tried in order with ``urllib.request``. The body is streamed into a temporary
    file in ``dest``'s directory while it is hashed; on a digest match the temporary file is
    renamed onto ``dest`` with :func:`os.replace`, so ``dest`` never holds a partial download.
    On a failure or a mismatch the temporary file is deleted and the next URL is tried.

    Args:
        urls: Candidate URLs, tried in order.
        dest: Final path of the file; its directory is created if needed.
        sha256: Expected SHA-256 hex digest (preferred).
        md5: Expected MD5 hex digest, checked only when ``sha256`` is ``None``.
        timeout: Socket timeout of each request, in seconds.

    Returns:
        ``dest``.

    Raises:
        ValueError: If neither digest is given or ``urls`` is empty.
        DatasetError: On a checksum mismatch, or when no URL could be fetched.
    """
    if sha256 is None and md5 is None:
        raise ValueError("download_file needs an expected sha256 or md5 digest")
    if not urls:
        raise ValueError("download_file needs at least one URL")
    algo, expected = ("sha256", sha256) if sha256 is not None else ("md5", md5)
    assert expected is not None
    dest = Path(dest)
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DatasetError(f"cannot create directory {dest.parent}: {e.strerror or e}") from e

    failures: list[str] = []
    mismatches: list[str] = []
    for url in urls:
        fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
        tmp = Path(tmp_name)
        try:
            hasher = hashlib.new(algo, usedforsecurity=False)
            request = urllib.request.Request(url, headers={"User-Agent": "curvebench"})
            with (
                os.fdopen(fd, "wb") as out,
                urllib.request.urlopen(request, timeout=timeout) as response,
            ):
                while chunk := response.read(_CHUNK):
                    hasher.update(chunk)
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
        except (OSError, http.client.HTTPException, ValueError) as e:
            tmp.unlink(missing_ok=True)
            failures.append(f"{url}: {_one_line(e) or type(e).__name__}")
            continue
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        if hasher.hexdigest() != expected.lower():
            tmp.unlink(missing_ok=True)
            mismatches.append(f"{url} ({algo} {hasher.hexdigest()})")
            continue
        os.replace(tmp, dest)
        return dest

    if mismatches:
        raise DatasetError(
            f"checksum mismatch for {dest.name}: expected {algo} {expected}, got "
            f"{'; '.join(mismatches)}; the download was discarded"
        )
    raise _DownloadUnavailableError(f"could not download {dest.name} ({'; '.join(failures)})")


def _fetch_missing(
    title: str,
    key: str,
    root: Path,
    missing: Sequence[str],
    download: bool,
    what: str | None = None,
) -> None:
    """Download the ``missing`` files of ``REMOTE_SOURCES[key]`` into ``root`` or fail clearly."""

    def missing_error(reason: str) -> DatasetError:
        files = what or ", ".join(missing)
        return DatasetError(
            f"{title} data not found ({reason}): put {files} in {root}, or pass --data-dir / set "
            f"{_ENV_DATA_DIR} to a directory that contains a '{key}' folder with them"
        )

    if not download:
        raise missing_error("download disabled")
    by_name = {remote.filename: remote for remote in REMOTE_SOURCES[key]}
    for name in missing:
        remote = by_name[name]
        try:
            download_file(remote.urls, root / name, sha256=remote.sha256, md5=remote.md5)
        except _DownloadUnavailableError as e:
            raise missing_error(f"download failed: {e}") from e


# --------------------------------------------------------------------------------------------
# IDX files: MNIST and Fashion-MNIST
# --------------------------------------------------------------------------------------------

_GZIP_MAGIC = b"\x1f\x8b"
_IDX_DTYPES: Mapping[int, np.dtype] = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (the MNIST format), gzipped or not.

    The header is two zero bytes, a data-type code (0x08 uint8, 0x09 int8, 0x0B int16,
    0x0C int32, 0x0D float32, 0x0E float64), the number of dimensions and one big-endian
    uint32 per dimension; the big-endian payload follows. Gzip compression is detected from
    the content's magic bytes, not from the file name. The payload must match the declared
    shape exactly.

    Args:
        path: File to read.

    Returns:
        A writable array in native byte order with the declared dtype and shape.

    Raises:
        DatasetError: If the file cannot be read or is not a well-formed IDX file; the message
            names the file.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise DatasetError(f"cannot read IDX file {path}: {e.strerror or e}") from e
    if raw[:2] == _GZIP_MAGIC:
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as e:
            raise DatasetError(f"{path}: corrupt gzip data ({_one_line(e)})") from e
    if len(raw) < 4:
        raise DatasetError(f"{path}: not an IDX file (only {len(raw)} bytes)")
    if raw[0] != 0 or raw[1] != 0:
        raise DatasetError(f"{path}: not an IDX file (bad magic number 0x{raw[:4].hex()})")
    code, ndim = raw[2], raw[3]
    dtype = _IDX_DTYPES.get(code)
    if dtype is None:
        raise DatasetError(f"{path}: not an IDX file (unknown data type code 0x{code:02x})")
    if ndim == 0:
        raise DatasetError(f"{path}: IDX header declares zero dimensions")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DatasetError(f"{path}: IDX header truncated ({len(raw)} of {header} bytes)")
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    expected = math.prod(shape) * dtype.itemsize
    actual = len(raw) - header
    if actual != expected:
        problem = "truncated" if actual < expected else "has trailing bytes"
        raise DatasetError(
            f"{path}: IDX payload {problem}: shape {shape} of {dtype.name} needs {expected} bytes, "
            f"found {actual}"
        )
    array = np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)
    return array.astype(dtype.newbyteorder("="))


_IDX_STEMS = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


def _find_idx(root: Path, stem: str) -> Path | None:
    for candidate in (root / f"{stem}.gz", root / stem):
        if candidate.is_file():
            return candidate
    return None


def _load_idx_split(images_path: Path, labels_path: Path) -> tuple[np.ndarray, np.ndarray]:
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != (28, 28):
        raise DatasetError(
            f"{images_path}: expected uint8 images of shape (N, 28, 28), found {images.dtype} "
            f"{images.shape}"
        )
    if labels.dtype != np.uint8 or labels.ndim != 1:
        raise DatasetError(
            f"{labels_path}: expected uint8 labels of shape (N,), found {labels.dtype} "
            f"{labels.shape}"
        )
    if labels.shape[0] != images.shape[0]:
        raise DatasetError(
            f"{labels_path}: {labels.shape[0]} labels for {images.shape[0]} images in "
            f"{images_path.name}"
        )
    if labels.size and int(labels.max()) > 9:
        raise DatasetError(f"{labels_path}: label {int(labels.max())} is outside 0..9")
    return _unit_interval(images[:, None]), labels.astype(np.int64)


def _unit_interval(pixels: np.ndarray) -> np.ndarray:
    """uint8 pixels as float32 in [0, 1] (division in float32, as earlier releases did)."""
    return np.ascontiguousarray(pixels, dtype=np.float32) / np.float32(255.0)


def _idx_dataset(
    name: str, title: str, key: str, data_dir: Path | str | None, download: bool
) -> Dataset:
    root = resolve_data_dir(data_dir) / key
    missing = [f"{stem}.gz" for stem in _IDX_STEMS if _find_idx(root, stem) is None]
    if missing:
        _fetch_missing(title, key, root, missing, download)
    paths = [_find_idx(root, stem) for stem in _IDX_STEMS]
    if any(p is None for p in paths):  # pragma: no cover - the fetch either succeeds or raises
        raise DatasetError(f"{title} files are still missing from {root}")
    train_images, train_labels, test_images, test_labels = (p for p in paths if p is not None)
    x_train, y_train = _load_idx_split(train_images, train_labels)
    x_test, y_test = _load_idx_split(test_images, test_labels)
    return Dataset(name, x_train, y_train, x_test, y_test, 10)


def mnist(*, data_dir: Path | None = None, download: bool = True) -> Dataset:
    """MNIST (60000 train / 10000 test handwritten digits) from the four IDX files.

    Reads ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte``
    and ``t10k-labels-idx1-ubyte`` (each ``.gz`` or not) from ``<data root>/mnist``. Missing
    files are downloaded when ``download`` is true (PyTorch's mirror first, then the original
    site) and verified against their SHA-256; files already present are used as they are.

    Args:
        data_dir: Data root (see :func:`resolve_data_dir`); ``None`` uses the default.
        download: Whether missing files may be downloaded.

    Returns:
        A 10-class :class:`Dataset` with float32 images ``(N, 1, 28, 28)`` in [0, 1] and int64
        labels.

    Raises:
        DatasetError: If files are missing and cannot be downloaded, a download fails its
            checksum, or a file is malformed.
    """
    return _idx_dataset("mnist", "MNIST", "mnist", data_dir, download)


def fashion_mnist(*, data_dir: Path | None = None, download: bool = True) -> Dataset:
    """Fashion-MNIST (60000 train / 10000 test clothing images) from the four IDX files.

    Same file names and layout as :func:`mnist`, read from ``<data root>/fashion-mnist``;
    missing files are downloaded from the data set's public bucket when ``download`` is true
    and verified against their SHA-256.

    Args:
        data_dir: Data root (see :func:`resolve_data_dir`); ``None`` uses the default.
        download: Whether missing files may be downloaded.

    Returns:
        A 10-class :class:`Dataset` with float32 images ``(N, 1, 28, 28)`` in [0, 1] and int64
        labels.

    Raises:
        DatasetError: If files are missing and cannot be downloaded, a download fails its
            checksum, or a file is malformed.
    """
    return _idx_dataset("fashion_mnist", "Fashion-MNIST", "fashion-mnist", data_dir, download)


# --------------------------------------------------------------------------------------------
# CIFAR-10 (python pickle batches)
# --------------------------------------------------------------------------------------------

_CIFAR_TARBALL = "cifar-10-python.tar.gz"
_CIFAR_FOLDER = "cifar-10-batches-py"
_CIFAR_TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))
_CIFAR_TEST = "test_batch"


def _safe_extract(tarball: Path, dest: Path) -> None:
    """Extract ``tarball`` into ``dest`` after checking every member is a plain, contained path.

    All members are validated before anything is written: absolute names, ``..`` components,
    backslashes, links and special files are refused. Files are written through a temporary
    name and renamed into place.
    """
    dest_resolved = dest.resolve()
    try:
        with tarfile.open(tarball, "r:*") as tar:
            members = tar.getmembers()
            for member in members:
                name = member.name
                parts = PurePosixPath(name).parts
                target = (dest_resolved / name).resolve()
                if (
                    not name
                    or name.startswith("/")
                    or "\\" in name
                    or ".." in parts
                    or (parts and ":" in parts[0])
                    or not target.is_relative_to(dest_resolved)
                ):
                    raise DatasetError(
                        f"{tarball}: refusing to extract unsafe member name {name!r}"
                    )
                if not (member.isfile() or member.isdir()):
                    raise DatasetError(
                        f"{tarball}: refusing to extract {name!r}, which is not a regular file "
                        "or directory"
                    )
            for member in members:
                target = dest / member.name
                if member.isdir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                source = tar.extractfile(member)
                if source is None:  # pragma: no cover - regular files always have data
                    raise DatasetError(f"{tarball}: cannot read member {member.name!r}")
                _write_atomically(source, target)
    except (tarfile.TarError, EOFError, zlib.error) as e:
        raise DatasetError(f"{tarball}: not a readable tar archive ({_one_line(e)})") from e
    except OSError as e:
        raise DatasetError(f"cannot extract {tarball}: {_one_line(e)}") from e


def _write_atomically(source: BinaryIO, target: Path) -> None:
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out:
            shutil.copyfileobj(source, out, _CHUNK)
        os.replace(tmp_name, target)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickler that can only rebuild NumPy arrays and builtin containers."""

    _allowed: Mapping[tuple[str, str], Any] | None = None

    @classmethod
    def _allowed_globals(cls) -> Mapping[tuple[str, str], Any]:
        if cls._allowed is None:
            reconstruct = np.zeros(1).__reduce__()[0]
            frombuffer = np.zeros(1).__reduce_ex__(5)[0]
            allowed: dict[tuple[str, str], Any] = {
                ("numpy", "ndarray"): np.ndarray,
                ("numpy", "dtype"): np.dtype,
                ("_codecs", "encode"): codecs.encode,
            }
            for module in ("numpy.core", "numpy._core"):
                allowed[(f"{module}.multiarray", "_reconstruct")] = reconstruct
                allowed[(f"{module}.numeric", "_frombuffer")] = frombuffer
            cls._allowed = allowed
        return cls._allowed

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._allowed_globals()[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refusing to load global {module}.{name}") from None


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        with open(path, "rb") as f:
            batch = _NumpyOnlyUnpickler(f, encoding="bytes").load()
    except OSError as e:
        raise DatasetError(f"cannot read CIFAR-10 batch {path}: {e.strerror or e}") from e
    except Exception as e:  # corrupt pickles can fail in many ways
        raise DatasetError(f"{path}: not a CIFAR-10 batch ({_one_line(e)})") from e
    if not isinstance(batch, dict):
        raise DatasetError(f"{path}: not a CIFAR-10 batch (a {type(batch).__name__}, not a dict)")
    data = batch.get(b"data", batch.get("data"))
    labels = batch.get(b"labels", batch.get("labels"))
    if not isinstance(data, np.ndarray) or labels is None:
        raise DatasetError(f"{path}: not a CIFAR-10 batch (no 'data' array and 'labels')")
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise DatasetError(
            f"{path}: CIFAR-10 'data' must be uint8 (N, 3072), found {data.dtype} {data.shape}"
        )
    try:
        y = np.asarray(labels, dtype=np.int64).reshape(-1)
    except (TypeError, ValueError) as e:
        raise DatasetError(f"{path}: CIFAR-10 'labels' are not integers") from e
    if y.shape[0] != data.shape[0]:
        raise DatasetError(f"{path}: {y.shape[0]} labels for {data.shape[0]} images")
    if y.size and (int(y.min()) < 0 or int(y.max()) > 9):
        raise DatasetError(f"{path}: CIFAR-10 labels must be in 0..9")
    return data.reshape(-1, 3, 32, 32), y


def cifar10(*, data_dir: Path | None = None, download: bool = True) -> Dataset:
    """CIFAR-10 (50000 train / 10000 test colour images) from the python pickle batches.

    Reads ``cifar-10-batches-py/data_batch_1`` .. ``data_batch_5`` and ``test_batch`` under
    ``<data root>/cifar10``. If they are absent, the tarball ``cifar-10-python.tar.gz`` in the
    same folder is extracted (every member name is validated first, so nothing can be written
    outside the folder); if that is absent too and ``download`` is true, it is downloaded from
    the University of Toronto page and verified against its SHA-256. Pickles are loaded with an
    unpickler that only rebuilds NumPy arrays.

    Args:
        data_dir: Data root (see :func:`resolve_data_dir`); ``None`` uses the default.
        download: Whether the tarball may be downloaded.

    Returns:
        A 10-class :class:`Dataset` with float32 images ``(N, 3, 32, 32)`` in [0, 1] and int64
        labels.

    Raises:
        DatasetError: If the data is missing and cannot be downloaded, a download fails its
            checksum, the tarball holds an unsafe member, or a batch is malformed.
    """
    root = resolve_data_dir(data_dir) / "cifar10"
    folder = root / _CIFAR_FOLDER
    names = (*_CIFAR_TRAIN, _CIFAR_TEST)
    if not all((folder / n).is_file() for n in names):
        tarball = root / _CIFAR_TARBALL
        if not tarball.is_file():
            _fetch_missing(
                "CIFAR-10",
                "cifar10",
                root,
                [_CIFAR_TARBALL],
                download,
                what=f"{_CIFAR_TARBALL} (or its extracted {_CIFAR_FOLDER} folder)",
            )
        _safe_extract(tarball, root)
        absent = [n for n in names if not (folder / n).is_file()]
        if absent:
            raise DatasetError(
                f"{tarball} does not contain {', '.join(f'{_CIFAR_FOLDER}/{n}' for n in absent)}"
            )

    train = [_read_cifar_batch(folder / n) for n in _CIFAR_TRAIN]
    x_test_u8, y_test = _read_cifar_batch(folder / _CIFAR_TEST)

    x_train = _unit_interval(np.concatenate([x for x, _ in train]))
    y_train = np.concatenate([y for _, y in train])
    return Dataset("cifar10", x_train, y_train, _unit_interval(x_test_u8), y_test, 10)
