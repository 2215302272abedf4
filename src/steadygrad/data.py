"""Fashion-MNIST and MNIST: IDX reading, locating/downloading/verifying files, in-memory batches.

The datasets are small enough (60 000 + 10 000 images of 28×28 bytes) to live in memory as one
float32 tensor per split, so iteration is slicing, not a ``DataLoader``.

* :func:`read_idx` / :func:`write_idx` read and write the IDX format of LeCun, Cortes & Burges
  (1998, http://yann.lecun.com/exdb/mnist/), gzip-compressed or raw.
* :func:`load` finds the four files (``root``; ``$STEADYGRAD_DATA``; Debian's
  ``/usr/share/datasets/<name>``; the user cache), downloads them into the cache when absent
  (SHA-256 verified), and returns a :class:`Dataset` of train / validation / test :class:`Split`.
* :func:`batches` yields ``(x, y)`` mini-batches by one shuffled index per epoch.

Fashion-MNIST: Xiao, Rasul & Vollgraf (2017), "Fashion-MNIST: a Novel Image Dataset for
Benchmarking Machine Learning Algorithms", arXiv:1708.07747. MNIST: LeCun, Bottou, Bengio &
Haffner (1998), "Gradient-based learning applied to document recognition".
"""

from __future__ import annotations

import contextlib
import difflib
import gzip as _gzip
import hashlib
import http.client
import math
import os
import struct
import sys
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import zlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Protocol

import numpy as np
import numpy.typing as npt
import torch

from steadygrad.errors import DataError

__all__ = [
    "DATASETS",
    "ROLES",
    "Dataset",
    "DatasetSpec",
    "Split",
    "batches",
    "cache_dir",
    "download",
    "load",
    "locate",
    "read_idx",
    "search_path",
    "write_idx",
]

# IDX type code → big-endian numpy dtype of one element (the IDX format stores MSB first).
_IDX_TYPES: dict[int, np.dtype[Any]] = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_IDX_CODES: dict[np.dtype[Any], int] = {
    dt.newbyteorder("="): code for code, dt in _IDX_TYPES.items()
}
_IDX_ALLOWED = "0x08 uint8, 0x09 int8, 0x0B int16, 0x0C int32, 0x0D float32, 0x0E float64"
_GZIP_MAGIC = b"\x1f\x8b"
_CHUNK = 1 << 20  # bytes per read when decompressing or downloading

#: The four files of an MNIST-format dataset, in the order they are looked for and fetched.
ROLES: tuple[str, ...] = ("train_images", "train_labels", "test_images", "test_labels")

#: Where system-wide dataset packages put their files (Debian: ``dataset-fashion-mnist``);
#: :func:`search_path` checks ``SYSTEM_DATA_DIR / name``.
SYSTEM_DATA_DIR = Path("/usr/share/datasets")

#: Download limits: seconds of socket inactivity before giving up, and bytes per file (the
#: largest real file, Fashion-MNIST's training images, is 26.4 MB).
DOWNLOAD_TIMEOUT = 30.0
MAX_DOWNLOAD_BYTES = 64 * 2**20

_ALLOWED_SCHEMES = ("http", "https", "file")


@dataclass(frozen=True)
class DatasetSpec:
    """What :func:`load` and :func:`download` know about one dataset.

    ``files`` maps each role in :data:`ROLES` to ``(filename, sha256)``: the gzip file name as the
    mirror serves it and the SHA-256 of those exact bytes (checked on download only). ``mirrors``
    are base URLs tried in order; ``classes`` names the labels 0..9.
    """

    name: str
    title: str
    files: Mapping[str, tuple[str, str]]
    mirrors: tuple[str, ...]
    classes: tuple[str, ...]
    debian_package: str | None = None


#: Registry of dataset names accepted by :func:`load` (tests replace entries to serve generated
#: files from a local mirror).
#:
#: Fashion-MNIST checksums are those of the files on Zalando's S3 bucket: the SHA-256 list in
#: tensorflow/datasets ``tensorflow_datasets/url_checksums/fashion_mnist.txt`` (sizes 26 421 880,
#: 29 515, 4 422 102, 5 148 bytes), the same files as the MD5 sums in the Fashion-MNIST README.
#: Debian's ``dataset-fashion-mnist`` ships the same IDX payload recompressed without the gzip
#: FNAME header (24/23 bytes shorter, other SHA-256), which is why local files are validated
#: structurally by :func:`read_idx` rather than by checksum.
#: The bucket's website endpoint is HTTP only (S3 website endpoints do not serve HTTPS); the REST
#: endpoint of the same bucket is tried first over HTTPS. Integrity rests on the SHA-256 either way.
#:
#: MNIST checksums: tensorflow/datasets ``tensorflow_datasets/url_checksums/mnist.txt`` (sizes
#: 9 912 422, 28 881, 1 648 877, 4 542 bytes); the same values are pinned by many independent
#: loaders. PyTorch's mirror (used by torchvision) serves the same files.
DATASETS: dict[str, DatasetSpec] = {
    "fashion-mnist": DatasetSpec(
        name="fashion-mnist",
        title="Fashion-MNIST",
        files={
            "train_images": (
                "train-images-idx3-ubyte.gz",
                "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
            ),
            "train_labels": (
                "train-labels-idx1-ubyte.gz",
                "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
            ),
            "test_images": (
                "t10k-images-idx3-ubyte.gz",
                "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
            ),
            "test_labels": (
                "t10k-labels-idx1-ubyte.gz",
                "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
            ),
        },
        mirrors=(
            "https://fashion-mnist.s3.eu-central-1.amazonaws.com/",
            "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
        ),
        classes=(
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
        ),
        debian_package="dataset-fashion-mnist",
    ),
    "mnist": DatasetSpec(
        name="mnist",
        title="MNIST",
        files={
            "train_images": (
                "train-images-idx3-ubyte.gz",
                "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
            ),
            "train_labels": (
                "train-labels-idx1-ubyte.gz",
                "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
            ),
            "test_images": (
                "t10k-images-idx3-ubyte.gz",
                "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
            ),
            "test_labels": (
                "t10k-labels-idx1-ubyte.gz",
                "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
            ),
        },
        mirrors=("https://ossci-datasets.s3.amazonaws.com/mnist/",),
        classes=tuple(str(d) for d in range(10)),
    ),
}

_IMAGE_SIDE = 28
_NUM_CLASSES = 10


# --------------------------------------------------------------------------------------------
# IDX files


class _Readable(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...


def _read_exact(stream: _Readable, n: int) -> bytes:
    """Read up to ``n`` bytes, looping over short reads; fewer only at end of stream."""
    parts = []
    remaining = n
    while remaining > 0:
        part = stream.read(remaining)
        if not part:
            break
        parts.append(part)
        remaining -= len(part)
    return b"".join(parts)


def _parse_header(path: Path, stream: _Readable) -> tuple[np.dtype[Any], tuple[int, ...], int]:
    """Parse the IDX magic number and dimensions: ``(dtype, dims, header_bytes)``."""
    magic = _read_exact(stream, 4)
    if len(magic) < 4:
        raise DataError(
            f"{path}: truncated: expected a 4-byte IDX magic number, found {len(magic)}"
        )
    if magic[0] != 0 or magic[1] != 0:
        raise DataError(
            f"{path}: wrong magic number 0x{magic.hex()} (an IDX file starts with two zero bytes, "
            "a type code and a dimension count); is this an MNIST-format file?"
        )
    code, ndim = magic[2], magic[3]
    if code not in _IDX_TYPES:
        raise DataError(f"{path}: unsupported element type 0x{code:02x}; allowed: {_IDX_ALLOWED}")
    if ndim < 1:
        raise DataError(
            f"{path}: wrong magic number 0x{magic.hex()}: 0 dimensions (need at least 1)"
        )
    raw_dims = _read_exact(stream, 4 * ndim)
    if len(raw_dims) < 4 * ndim:
        raise DataError(
            f"{path}: truncated: expected {4 * ndim} bytes of dimension sizes for {ndim} "
            f"dimensions, found {len(raw_dims)}"
        )
    dims = struct.unpack(f">{ndim}I", raw_dims)  # big-endian unsigned 32-bit sizes
    return _IDX_TYPES[code], tuple(dims), 4 + 4 * ndim


def read_idx(path: str | os.PathLike[str]) -> torch.Tensor:
    """Read an IDX file (gzip-compressed or raw) into a tensor of its declared shape and type.

    Format (LeCun et al. 1998): a magic number ``0x00 0x00 T D`` (``T`` the element type code:
    0x08 uint8, 0x09 int8, 0x0B int16, 0x0C int32, 0x0D float32, 0x0E float64; ``D ≥ 1`` the
    number of dimensions), ``D`` big-endian uint32 sizes ``n_1 … n_D``, then exactly
    ``n_1 · … · n_D · sizeof(T)`` bytes of big-endian elements in row-major order.

    Gzip is detected by its magic bytes ``1f 8b``, not by the file name. The declared payload
    size is compared with the actual one before any payload is read (raw files: from the file
    size; gzip: by decompressing at most ``declared + 1`` bytes in chunks), so a hostile header
    cannot trigger a huge allocation.

    Raises:
        DataError: naming the file and the problem: wrong magic number, unsupported element
            type, truncated data ("expected N bytes of data, found M"), trailing bytes, corrupt
            gzip stream, or an unreadable file.
    """
    path = Path(path)
    try:
        with path.open("rb") as raw:
            compressed = raw.read(2) == _GZIP_MAGIC
            raw.seek(0)
            if compressed:
                with _gzip.GzipFile(fileobj=raw, mode="rb") as stream:
                    dtype, dims, payload = _read_gzip_payload(path, stream)
            else:
                dtype, dims, payload = _read_raw_payload(path, raw)
    except (OSError, EOFError, zlib.error) as exc:  # gzip.BadGzipFile is an OSError
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise DataError(f"{path}: cannot read: {reason}") from exc
    array = np.frombuffer(payload, dtype=dtype).astype(dtype.newbyteorder("="))  # native copy
    return torch.from_numpy(array.reshape(dims))


def _declared_bytes(dtype: np.dtype[Any], dims: tuple[int, ...]) -> int:
    return math.prod(dims) * dtype.itemsize


def _read_raw_payload(
    path: Path, stream: BinaryIO
) -> tuple[np.dtype[Any], tuple[int, ...], bytes | bytearray]:
    dtype, dims, header = _parse_header(path, stream)
    expected = _declared_bytes(dtype, dims)
    found = os.fstat(stream.fileno()).st_size - header
    _check_size(path, expected, found)
    return dtype, dims, _read_exact(stream, expected)


def _read_gzip_payload(
    path: Path, stream: _Readable
) -> tuple[np.dtype[Any], tuple[int, ...], bytes | bytearray]:
    dtype, dims, _ = _parse_header(path, stream)
    expected = _declared_bytes(dtype, dims)
    buffer = bytearray()
    try:
        # Grow by chunks up to declared + 1 bytes: memory follows the real data, and one byte
        # past the declared size is enough to detect trailing bytes.
        while len(buffer) <= expected:
            chunk = stream.read(min(_CHUNK, expected + 1 - len(buffer)))
            if not chunk:
                break
            buffer += chunk
    except EOFError as exc:  # the compressed stream ends mid-way
        raise DataError(
            f"{path}: truncated gzip stream: expected {_count(expected)} bytes of data, "
            f"decompressed {len(buffer)} before it ended ({exc})"
        ) from exc
    _check_size(path, expected, len(buffer), at_least=len(buffer) > expected)
    return dtype, dims, buffer


def _check_size(path: Path, expected: int, found: int, *, at_least: bool = False) -> None:
    """Compare the declared payload size with the one found (``at_least``: reading stopped)."""
    if found < expected:
        raise DataError(
            f"{path}: truncated: expected {_count(expected)} bytes of data, found {found}"
        )
    if found > expected:
        more = f"more than {expected}" if at_least else str(found)
        raise DataError(f"{path}: trailing bytes: expected {expected} bytes of data, found {more}")


def _count(n: int) -> str:
    """``n`` in digits, or its order of magnitude when a hostile header declares an absurd size."""
    digits = str(n)
    return digits if len(digits) <= 18 else f"about 10^{len(digits) - 1}"


def write_idx(
    path: str | os.PathLike[str],
    array: torch.Tensor | npt.NDArray[Any],
    gzip: bool = False,
) -> Path:
    """Write ``array`` as an IDX file (the inverse of :func:`read_idx`); returns the path.

    The element type must be one of uint8, int8, int16, int32, float32, float64, and the array
    must have 1..255 dimensions each below 2**32. With ``gzip=True`` the file is gzip-compressed
    with a zero timestamp and no file name in its header, so equal arrays give byte-identical
    files.
    """
    data = array.detach().cpu().numpy() if isinstance(array, torch.Tensor) else np.asarray(array)
    native = data.dtype.newbyteorder("=")
    if native not in _IDX_CODES:
        raise TypeError(
            f"array dtype must be one of uint8, int8, int16, int32, float32, float64; "
            f"got {data.dtype}"
        )
    if not 1 <= data.ndim <= 255:
        raise ValueError(f"array must have 1 to 255 dimensions; got {data.ndim}")
    if any(n >= 2**32 for n in data.shape):
        raise ValueError(f"array dimensions must each be below 2**32; got shape {data.shape}")
    header = bytes((0, 0, _IDX_CODES[native], data.ndim)) + struct.pack(
        f">{data.ndim}I", *data.shape
    )
    payload = np.ascontiguousarray(data, dtype=_IDX_TYPES[_IDX_CODES[native]]).tobytes()
    path = Path(path)
    if gzip:
        with (
            path.open("wb") as raw,
            _gzip.GzipFile(filename="", fileobj=raw, mode="wb", mtime=0) as out,
        ):
            out.write(header)
            out.write(payload)
    else:
        with path.open("wb") as out:
            out.write(header)
            out.write(payload)
    return path


# --------------------------------------------------------------------------------------------
# Splits and batches


@dataclass(frozen=True, eq=False)
class Split:
    """One split in memory: ``images`` (N, features) floating point, ``labels`` (N,) int64."""

    images: torch.Tensor
    labels: torch.Tensor

    def __post_init__(self) -> None:
        if self.images.ndim != 2 or not self.images.is_floating_point():
            raise ValueError(
                "images must be a 2-D floating-point tensor (N, features); "
                f"got {tuple(self.images.shape)} {self.images.dtype}"
            )
        if self.labels.ndim != 1 or self.labels.dtype != torch.int64:
            raise ValueError(
                f"labels must be a 1-D int64 tensor (N,); "
                f"got {tuple(self.labels.shape)} {self.labels.dtype}"
            )
        if len(self.images) != len(self.labels):
            raise ValueError(
                f"images and labels must have the same length; "
                f"got {len(self.images)} images and {len(self.labels)} labels"
            )

    def __len__(self) -> int:
        return len(self.labels)

    def to(self, device: torch.device | str) -> Split:
        """A copy of this split on ``device`` (batches then index on that device)."""
        return Split(self.images.to(device), self.labels.to(device))


@dataclass(frozen=True, eq=False)
class Dataset:
    """Train / validation / test splits of one dataset.

    ``mean`` and ``std`` are the training-split statistics that were subtracted and divided by
    (``standardize=True``), else ``None``; apply them to new inputs scaled to [0, 1].
    ``source`` is the folder the files were read from.
    """

    train: Split
    validation: Split
    test: Split
    name: str
    classes: tuple[str, ...] = ()
    mean: float | None = None
    std: float | None = None
    source: str = ""

    def info(self) -> dict[str, Any]:
        """A small JSON-able summary: name, split sizes, features, classes, normalisation."""
        return {
            "name": self.name,
            "train": len(self.train),
            "validation": len(self.validation),
            "test": len(self.test),
            "features": int(self.train.images.shape[1]),
            "classes": len(self.classes),
            "standardized": self.mean is not None,
            "mean": self.mean,
            "std": self.std,
            "source": self.source,
        }

    def to(self, device: torch.device | str) -> Dataset:
        """A copy with every split on ``device``."""
        return Dataset(
            self.train.to(device),
            self.validation.to(device),
            self.test.to(device),
            name=self.name,
            classes=self.classes,
            mean=self.mean,
            std=self.std,
            source=self.source,
        )


def batches(
    split: Split,
    batch_size: int,
    generator: torch.Generator | None = None,
    shuffle: bool = True,
    drop_last: bool = False,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield ``(x, y)`` mini-batches covering ``split`` once (one epoch).

    With ``shuffle`` one permutation ``torch.randperm(N, generator=generator)`` is drawn when
    iteration starts and consecutive chunks of it select the batches (``index_select``), so every
    sample appears exactly once per epoch and a seeded generator gives the same order every run.
    Without ``shuffle`` the batches are views ``images[i:i + batch_size]`` in file order. The
    last batch has ``N mod batch_size`` samples unless ``drop_last`` drops it.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int):
        raise TypeError(f"batch_size must be a positive int; got {batch_size!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be a positive int; got {batch_size}")
    if not isinstance(split, Split):
        raise TypeError(f"split must be a steadygrad.data.Split; got {type(split).__name__}")
    return _iterate(split, batch_size, generator, shuffle, drop_last)


def _iterate(
    split: Split,
    batch_size: int,
    generator: torch.Generator | None,
    shuffle: bool,
    drop_last: bool,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    n = len(split)
    stop = n - n % batch_size if drop_last else n
    if shuffle:
        order = torch.randperm(n, generator=generator).to(split.images.device)  # (N,)
        for start in range(0, stop, batch_size):
            index = order[start : start + batch_size]  # (batch,)
            yield split.images.index_select(0, index), split.labels.index_select(0, index)
    else:
        for start in range(0, stop, batch_size):
            end = start + batch_size
            yield split.images[start:end], split.labels[start:end]


# --------------------------------------------------------------------------------------------
# Locating and downloading


def _spec(name: str) -> DatasetSpec:
    if not isinstance(name, str):
        raise TypeError(f"name must be a str, one of {sorted(DATASETS)}; got {name!r}")
    key = name.strip().lower().replace("_", "-")
    if key in DATASETS:
        return DATASETS[key]
    close = difflib.get_close_matches(key, DATASETS, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise ValueError(f"name must be one of {sorted(DATASETS)}; got {name!r}{hint}")


def cache_dir(name: str = "fashion-mnist") -> Path:
    """The user cache folder for ``name``: ``$XDG_CACHE_HOME/steadygrad/<name>``.

    ``XDG_CACHE_HOME`` defaults to ``~/.cache`` when unset or relative (XDG Base Directory spec).
    """
    spec = _spec(name)
    base = os.environ.get("XDG_CACHE_HOME", "")
    root = Path(base) if base and os.path.isabs(base) else Path.home() / ".cache"
    return root / "steadygrad" / spec.name


def search_path(
    name: str = "fashion-mnist", root: str | os.PathLike[str] | None = None
) -> list[Path]:
    """The folders :func:`load` looks in, in order.

    An explicit ``root`` is the only place. Otherwise: ``$STEADYGRAD_DATA/<name>``,
    ``$STEADYGRAD_DATA`` itself, ``/usr/share/datasets/<name>`` (Debian's
    ``dataset-fashion-mnist``), then :func:`cache_dir`.
    """
    spec = _spec(name)
    if root is not None:
        return [Path(root).expanduser()]
    places = []
    env = os.environ.get("STEADYGRAD_DATA", "")
    if env:
        places += [Path(env).expanduser() / spec.name, Path(env).expanduser()]
    places += [SYSTEM_DATA_DIR / spec.name, cache_dir(spec.name)]
    return places


def _stem(filename: str) -> str:
    return filename.removesuffix(".gz")


def _find_files(folder: Path, spec: DatasetSpec) -> tuple[dict[str, Path], list[str]]:
    """Files present in ``folder`` per role (uncompressed preferred), and the roles missing."""
    found: dict[str, Path] = {}
    missing: list[str] = []
    for role in ROLES:
        filename = spec.files[role][0]
        for candidate in (folder / _stem(filename), folder / filename):
            if candidate.is_file():
                found[role] = candidate
                break
        else:
            missing.append(role)
    return found, missing


def _describe_missing(spec: DatasetSpec, missing: list[str]) -> str:
    return ", ".join(f"{_stem(spec.files[role][0])}[.gz]" for role in missing)


def locate(name: str = "fashion-mnist", root: str | os.PathLike[str] | None = None) -> Path | None:
    """The first folder of :func:`search_path` that holds all four files, or ``None``.

    With an explicit ``root`` lacking any file, raises :class:`DataError` naming the root and the
    missing files instead (an explicit place is never silently replaced by another).
    """
    spec = _spec(name)
    for folder in search_path(spec.name, root):
        if not folder.is_dir():
            if root is not None:
                raise DataError(_root_error(spec, folder, "is not a folder"))
            continue
        _, missing = _find_files(folder, spec)
        if not missing:
            return folder
        if root is not None:
            raise DataError(_root_error(spec, folder, f"lacks {_describe_missing(spec, missing)}"))
    return None


def _root_error(spec: DatasetSpec, folder: Path, problem: str) -> str:
    return (
        f"root {str(folder)!r} {problem}; put the {spec.title} IDX files there "
        f"(steadygrad.data.download({spec.name!r}, folder=...) fetches them), "
        f"or pass root=None to search {', '.join(str(p) for p in search_path(spec.name))} "
        "and download into the cache"
    )


def _not_found_error(spec: DatasetSpec) -> DataError:
    places = []
    for folder in search_path(spec.name):
        if not folder.is_dir():
            places.append(f"{folder} (no such folder)")
        else:
            places.append(
                f"{folder} (lacks {_describe_missing(spec, _find_files(folder, spec)[1])})"
            )
    how = "pass download=True, set STEADYGRAD_DATA to a folder holding them"
    if spec.debian_package:
        how += f", or install Debian's {spec.debian_package}"
    files = _describe_missing(spec, list(ROLES))
    return DataError(f"{spec.title} files ({files}) not found; searched {'; '.join(places)}; {how}")


def _mirrors(spec: DatasetSpec, mirror: str | None) -> tuple[str, ...]:
    if mirror is None:
        mirror = os.environ.get("STEADYGRAD_MIRROR") or None
    if mirror is None:
        return spec.mirrors
    if not isinstance(mirror, str):
        raise TypeError(f"mirror must be a base URL str; got {mirror!r}")
    url = mirror.replace("{name}", spec.name)
    scheme = urllib.parse.urlsplit(url).scheme
    if scheme not in _ALLOWED_SCHEMES:
        raise ValueError(
            f"mirror must be an http, https or file URL; got {mirror!r} (scheme {scheme!r})"
        )
    return (url,)


def download(
    name: str = "fashion-mnist",
    folder: str | os.PathLike[str] | None = None,
    mirror: str | None = None,
) -> Path:
    """Download the dataset's missing files into ``folder`` (default :func:`cache_dir`).

    Each file is streamed from ``<mirror>/<filename>`` (``mirror`` argument, else
    ``$STEADYGRAD_MIRROR``, else the dataset's mirrors in order; ``{name}`` in a mirror is replaced
    by the dataset name) into a temporary file in ``folder``, with a socket timeout of
    :data:`DOWNLOAD_TIMEOUT` s and at most :data:`MAX_DOWNLOAD_BYTES` bytes, and is renamed into
    place only when its SHA-256 equals the pinned one. A failed or corrupt download leaves nothing
    behind. A progress bar is shown on stderr when stderr is a terminal.

    Raises:
        DataError: the folder cannot be created, or no mirror delivered a file with the pinned
            checksum (the message names each URL and what went wrong, e.g. expected vs got).
    """
    return _download(_spec(name), folder, mirror)


def _download(spec: DatasetSpec, folder: str | os.PathLike[str] | None, mirror: str | None) -> Path:
    target = Path(folder).expanduser() if folder is not None else cache_dir(spec.name)
    bases = _mirrors(spec, mirror)
    try:
        target.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(
            f"cannot create data folder {str(target)!r}: {exc.strerror or exc}; "
            "set XDG_CACHE_HOME or STEADYGRAD_DATA to a writable folder"
        ) from exc
    _, missing = _find_files(target, spec)
    for role in missing:
        filename, sha256 = spec.files[role]
        failures = []
        for base in bases:
            url = urllib.parse.urljoin(base if base.endswith("/") else base + "/", filename)
            try:
                _fetch(url, target / filename, sha256)
                break
            except DataError as exc:
                failures.append(str(exc))
        else:
            raise DataError("; ".join(failures))
    return target


def _fetch(url: str, destination: Path, sha256: str) -> None:
    """Stream ``url`` to a temp file next to ``destination``; verify SHA-256; rename into place."""
    handle, tmp_name = tempfile.mkstemp(
        dir=destination.parent, prefix=f".{destination.name}.", suffix=".part"
    )
    tmp = Path(tmp_name)
    try:
        digest = hashlib.sha256()
        with os.fdopen(handle, "wb") as out:
            try:
                request = urllib.request.Request(url, headers={"User-Agent": "steadygrad"})
                with (
                    urllib.request.urlopen(request, timeout=DOWNLOAD_TIMEOUT) as response,
                    _progress(destination.name, response) as advance,
                ):
                    declared = response.headers.get("Content-Length")
                    if declared is not None and int(declared) > MAX_DOWNLOAD_BYTES:
                        raise DataError(
                            f"download of {url} failed: size {int(declared)} bytes exceeds the "
                            f"limit of {MAX_DOWNLOAD_BYTES} bytes"
                        )
                    total = 0
                    while chunk := response.read(_CHUNK):
                        total += len(chunk)
                        if total > MAX_DOWNLOAD_BYTES:
                            raise DataError(
                                f"download of {url} failed: more than {MAX_DOWNLOAD_BYTES} bytes "
                                "(the size limit per file)"
                            )
                        digest.update(chunk)
                        out.write(chunk)
                        advance(len(chunk))
            except (OSError, ValueError, http.client.HTTPException) as exc:
                # URLError and HTTPError are OSErrors; HTTPError's str has the status code.
                reason = (
                    exc if isinstance(exc, urllib.error.HTTPError) else getattr(exc, "reason", exc)
                )
                raise DataError(f"download of {url} failed: {reason}") from exc
            out.flush()
            os.fsync(out.fileno())
        got = digest.hexdigest()
        if got != sha256:
            raise DataError(
                f"download of {url} failed its checksum: expected sha256 {sha256}, got {got}; "
                "the file was discarded"
            )
        os.replace(tmp, destination)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


@contextlib.contextmanager
def _progress(label: str, response: Any) -> Iterator[Any]:
    """A callable ``advance(nbytes)``: a rich progress bar on a terminal stderr, else a no-op."""
    if not sys.stderr.isatty():
        yield lambda n: None
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TransferSpeedColumn,
    )

    length = response.headers.get("Content-Length")
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        console=Console(stderr=True),
        transient=True,
    ) as bar:
        task = bar.add_task(label, total=int(length) if length else None)
        yield lambda n: bar.advance(task, n)


# --------------------------------------------------------------------------------------------
# Loading


def _read_images(path: Path) -> torch.Tensor:
    images = read_idx(path)
    if images.dtype != torch.uint8 or images.ndim != 3 or images.shape[1:] != (28, 28):
        raise DataError(
            f"{path}: images must be uint8 of shape (N, {_IMAGE_SIDE}, {_IMAGE_SIDE}); "
            f"got {images.dtype} of shape {tuple(images.shape)}"
        )
    return images


def _read_labels(path: Path, images_path: Path, n_images: int) -> torch.Tensor:
    labels = read_idx(path)
    if labels.ndim != 1 or labels.is_floating_point():
        raise DataError(
            f"{path}: labels must be a 1-D integer array; "
            f"got {labels.dtype} of shape {tuple(labels.shape)}"
        )
    if len(labels) != n_images:
        raise DataError(
            f"images file {images_path} has {n_images} entries "
            f"but labels file {path} has {len(labels)}"
        )
    bad = ((labels < 0) | (labels >= _NUM_CLASSES)).nonzero()
    if len(bad):
        index = int(bad[0, 0])
        raise DataError(
            f"{path}: label {int(labels[index])} at index {index} is outside 0..{_NUM_CLASSES - 1}"
        )
    return labels.to(torch.int64)


def _pixel_moments(images: torch.Tensor) -> tuple[float, float]:
    """Exact mean and population std of ``images / 255`` over all pixels, from a histogram.

    With ``c_v`` the count of byte value ``v`` among ``n`` pixels, ``S1 = Σ c_v v`` and
    ``S2 = Σ c_v v²`` (exact integers): ``mean = S1 / (255 n)`` and
    ``std = sqrt(n S2 − S1²) / (255 n)``.
    """
    counts = torch.bincount(images.reshape(-1), minlength=256).to(torch.int64).tolist()
    n = sum(counts)
    s1 = sum(c * v for v, c in enumerate(counts))
    s2 = sum(c * v * v for v, c in enumerate(counts))
    return s1 / (255 * n), math.sqrt(n * s2 - s1 * s1) / (255 * n)


def load(
    name: str = "fashion-mnist",
    root: str | os.PathLike[str] | None = None,
    validation: int = 5000,
    standardize: bool = False,
    download: bool = True,
    mirror: str | None = None,
) -> Dataset:
    """Load ``name`` ("fashion-mnist" or "mnist") as in-memory train / validation / test splits.

    Files are looked for in :func:`search_path` order (``root`` alone when given), and, when
    absent everywhere and ``download`` is true, fetched into :func:`cache_dir` by
    :func:`download` from ``mirror``. Images become float32 ``(N, 784)`` rows ``x = byte / 255``
    in [0, 1]; labels int64 in 0..9. The validation split is the *last* ``validation`` images
    of the training file (deterministic); the training split is the rest.

    ``standardize=True`` then maps every split to ``(x − μ) / σ`` with μ and σ the mean and
    population standard deviation of all pixels of the *training split only* (a scalar each, as
    in Keras' ``Normalization(axis=None)``), stored in :attr:`Dataset.mean` / :attr:`Dataset.std`.

    Raises:
        ValueError, TypeError: unknown ``name`` (with the closest match), bad ``validation``.
        DataError: files missing (naming the places searched), malformed (see :func:`read_idx`),
            images and labels disagreeing in count, labels outside 0..9, or a failed download.
    """
    spec = _spec(name)
    if isinstance(validation, bool) or not isinstance(validation, int):
        raise TypeError(f"validation must be an int number of images; got {validation!r}")
    if validation < 0:
        raise ValueError(f"validation must be >= 0; got {validation}")
    folder = locate(spec.name, root)
    if folder is None:
        if not download:
            raise _not_found_error(spec)
        folder = _download(spec, None, mirror)
    files, _ = _find_files(folder, spec)

    train_u8 = _read_images(files["train_images"])  # (60000, 28, 28) uint8
    train_y = _read_labels(files["train_labels"], files["train_images"], len(train_u8))
    test_u8 = _read_images(files["test_images"])
    test_y = _read_labels(files["test_labels"], files["test_images"], len(test_u8))
    n = len(train_u8)
    if validation >= n:
        raise ValueError(
            f"validation must be smaller than the {n} training images so that some remain for "
            f"training; got {validation}"
        )
    cut = n - validation
    features = _IMAGE_SIDE * _IMAGE_SIDE

    def floats(images: torch.Tensor) -> torch.Tensor:  # (N, 28, 28) uint8 → (N, 784) float32
        return images.reshape(len(images), features).to(torch.float32).div_(255.0)

    mean = std = None
    if standardize:
        mean, std = _pixel_moments(train_u8[:cut])
        if std == 0.0:
            raise DataError(
                f"{files['train_images']}: cannot standardize: every training pixel equals {mean}"
            )

    def prepare(images: torch.Tensor) -> torch.Tensor:
        x = floats(images)
        if mean is not None and std is not None:
            x.sub_(mean).div_(std)
        return x

    return Dataset(
        train=Split(prepare(train_u8[:cut]), train_y[:cut]),
        validation=Split(prepare(train_u8[cut:]), train_y[cut:]),
        test=Split(prepare(test_u8), test_y),
        name=spec.name,
        classes=spec.classes,
        mean=mean,
        std=std,
        source=str(folder),
    )
