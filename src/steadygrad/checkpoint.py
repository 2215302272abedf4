"""Atomic, code-free checkpoint files: safetensors tensors plus JSON metadata in the header.

A checkpoint is one file in the safetensors format (Hugging Face, 2022)::

    [N: 8 bytes, little-endian u64][header: N bytes of UTF-8 JSON][raw tensor bytes]

The header maps every tensor name to ``{"dtype", "shape", "data_offsets"}`` and carries
``"__metadata__": {"steadygrad": DOC}``, where ``DOC`` is the JSON text
``{"format_version": 1, "meta": <the caller's meta>}``. Loading parses JSON and copies bytes, so
unlike ``torch.save`` (a pickle), nothing in a checkpoint can run code; :func:`load` refuses
everything else, pickles included, and never unpickles.

Writes are atomic: the bytes go to a temporary file in the destination folder, which is flushed,
``fsync``-ed and renamed over the destination with ``os.replace``, and then the folder itself is
``fsync``-ed so the rename survives a crash (the recipe that Pillai et al. 2014, "All File Systems
Are Not Created Equal", OSDI, show applications need on ext4/btrfs/xfs). A reader therefore sees
either the previous checkpoint or the new one, never a torn file.

:func:`pack_state` / :func:`unpack_state` flatten a model, an optimizer and RNG states into the
``(tensors, meta)`` pair that :func:`save` writes and :func:`load` returns, so that training resumed
from a checkpoint continues bitwise identically to an uninterrupted run.
"""

from __future__ import annotations

import contextlib
import difflib
import errno
import json
import os
import secrets
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any, BinaryIO

import safetensors.torch
import torch
from torch import nn

from steadygrad.errors import CheckpointError

__all__ = [
    "FORMAT_VERSION",
    "latest",
    "load",
    "load_training_state",
    "pack_state",
    "read_meta",
    "save",
    "save_training_state",
    "unpack_state",
]

FORMAT_VERSION = 1
"""Version of the checkpoint layout written by this module; :func:`load` reads versions <= it."""

_METADATA_KEY = "steadygrad"
_SUFFIX = ".safetensors"
# safetensors refuses headers above 100 MB; checking first keeps a hostile length from allocating.
_MAX_HEADER_BYTES = 100_000_000
# dtypes every safetensors >= 0.4 stores (the pinned floor in pyproject).
_DTYPES = (
    torch.float64,
    torch.float32,
    torch.float16,
    torch.bfloat16,
    torch.int64,
    torch.int32,
    torch.int16,
    torch.int8,
    torch.uint8,
    torch.bool,
)
_RESERVED_META = ("format_version", "torch_version", "optimizer_state", "rng_state")
_TENSOR_TAG = "__tensor__"
_TUPLE_TAG = "__tuple__"
_JSON_KINDS = "dict with str keys, list, tuple, str, int, float, bool or None"

PathLike = str | os.PathLike[str]


# --------------------------------------------------------------------------------------------
# save / load


def save(path: PathLike, tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any]) -> None:
    """Write ``tensors`` and the JSON-able ``meta`` to ``path`` as one safetensors file, atomically.

    Steps: serialize to bytes; write them to ``.<name>.tmp-<pid>-<random>`` in the same folder;
    flush and ``os.fsync``; ``os.replace`` onto ``path``; ``fsync`` the folder (Pillai et al.
    2014). Tensors may live on any device, be non-contiguous or share memory: each is copied to a
    contiguous CPU tensor where needed. 0-dim tensors are kept 0-dim.

    ``meta`` is stored as JSON (``NaN``/``inf`` allowed, as Python's ``json`` writes them); tuples
    come back as lists. Dict keys must be ``str``.

    Raises:
        TypeError: a key, tensor, dtype or metadata value that cannot be stored.
        CheckpointError: the file could not be written (e.g. ``ENOSPC``); the temporary file is
            removed and whatever was at ``path`` before is left untouched.
    """
    target = Path(path)
    prepared = _prepare_tensors(tensors)
    if not isinstance(meta, Mapping):
        raise TypeError(f"meta must be a dict; got {type(meta).__name__}")
    _check_json(meta, "meta", set())
    document = json.dumps(
        {"format_version": FORMAT_VERSION, "meta": dict(meta)}, separators=(",", ":")
    )
    data: bytes = safetensors.torch.save(prepared, metadata={_METADATA_KEY: document})
    _atomic_write(target, data)


def load(path: PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a checkpoint written by :func:`save`: ``(tensors, meta)``, tensors on the CPU.

    The 8-byte header length is checked against the file size before the header is read, the
    header is parsed as JSON, the steadygrad metadata and its format version are checked, and only
    then are the tensor bytes read and handed to safetensors, which validates dtypes, shapes and
    offsets. Nothing is ever unpickled.

    Raises:
        CheckpointError: naming the file and what is wrong: missing, unreadable, not safetensors
            (a pickle or ``torch.save`` zip is refused as such), truncated or corrupt, without
            steadygrad metadata, or of a newer format version.
    """
    target = Path(path)
    with _open(target) as f:
        try:
            size = os.fstat(f.fileno()).st_size
            header = _read_header(f, target, size)
            meta = _extract_meta(header, target)
            f.seek(0)
            data = f.read()
        except OSError as err:
            raise CheckpointError(f"could not read checkpoint {target}: {_reason(err)}") from err
    try:
        tensors: dict[str, torch.Tensor] = safetensors.torch.load(data)
    except Exception as err:  # parsing untrusted bytes: any failure means a corrupt file
        raise CheckpointError(
            f"{target} is a corrupt safetensors file: {str(err).strip() or type(err).__name__}"
        ) from err
    return tensors, meta


def read_meta(path: PathLike) -> dict[str, Any]:
    """The ``meta`` of a checkpoint, reading only its header (not the tensors).

    Raises:
        CheckpointError: as :func:`load`, except that corrupt tensor data goes unnoticed.
    """
    target = Path(path)
    with _open(target) as f:
        try:
            header = _read_header(f, target, os.fstat(f.fileno()).st_size)
        except OSError as err:
            raise CheckpointError(f"could not read checkpoint {target}: {_reason(err)}") from err
    return _extract_meta(header, target)


def latest(run_dir: PathLike) -> Path | None:
    """The most recently written ``*.safetensors`` file in ``run_dir``, or ``None``.

    "Most recent" is the largest modification time (``st_mtime_ns``); ties go to the name that
    sorts last. Hidden files (temporary files of an interrupted :func:`save` start with ``.``) are
    skipped; a missing ``run_dir`` gives ``None`` (nothing to resume). The file is not opened:
    pass it to :func:`load` to validate it.

    Raises:
        CheckpointError: ``run_dir`` exists but is not a folder.
    """
    folder = Path(run_dir)
    if not folder.exists():
        return None
    if not folder.is_dir():
        raise CheckpointError(f"run_dir must be a folder; got {folder}, which is a file")
    best: tuple[int, str] | None = None
    found: Path | None = None
    for entry in folder.iterdir():
        if entry.name.startswith(".") or entry.suffix != _SUFFIX:
            continue
        try:
            st = entry.stat()
        except FileNotFoundError:  # removed while we looked
            continue
        if not entry.is_file():
            continue
        key = (st.st_mtime_ns, entry.name)
        if best is None or key > best:
            best, found = key, entry
    return found


# --------------------------------------------------------------------------------------------
# model + optimizer + RNG state


def pack_state(
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    generators: Mapping[str, torch.Generator] | None = None,
    extra_meta: Mapping[str, Any] | None = None,
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Flatten training state into ``(tensors, meta)`` for :func:`save`.

    Tensor names:

    - ``model/<key>`` for each entry of ``model.state_dict()``;
    - ``optim/state/<param_index>/<name>`` for each tensor in ``optimizer.state_dict()["state"]``
      (``.../<name>/<i>`` inside lists, as in L-BFGS), ``optim/param_groups/<g>/<key>`` for
      tensor hyperparameters;
    - ``rng/global/cpu`` (``torch.get_rng_state()``), ``rng/global/cuda/<device>`` (only when CUDA
      is initialised), and ``rng/<name>`` for each generator's ``get_state()``.

    ``meta`` holds ``format_version``, ``torch_version``, ``optimizer_state`` (class name, param
    groups and non-tensor state values, with tensors replaced by ``{"__tensor__": name}`` and tuples
    by ``{"__tuple__": [...]}`` so they round-trip exactly), ``rng_state``, and every key of
    ``extra_meta``. All tensors are copies on the CPU: later training does not change them.

    Raises:
        TypeError: a generator that is not a ``torch.Generator``, or state that cannot be stored.
        ValueError: a generator name that is empty or contains ``/``, or an ``extra_meta`` key
            reserved for the state itself.
    """
    generators = {} if generators is None else generators
    extra_meta = {} if extra_meta is None else extra_meta
    for key in extra_meta:
        if key in _RESERVED_META:
            raise ValueError(
                f"extra_meta key {key!r} is reserved by pack_state; use a key other than "
                f"{', '.join(map(repr, _RESERVED_META))}"
            )
    _check_generators(generators)

    tensors: dict[str, torch.Tensor] = {}
    for key, value in model.state_dict().items():
        if not isinstance(value, torch.Tensor):
            raise TypeError(
                f"model state entry {key!r} is a {type(value).__name__}; only tensors can be "
                "checkpointed"
            )
        tensors[f"model/{key}"] = _snapshot(value)

    optimizer_state: dict[str, Any] | None = None
    if optimizer is not None:
        sd = optimizer.state_dict()
        state: dict[str, Any] = {}
        for index, entries in sd["state"].items():
            if not isinstance(index, int) or isinstance(index, bool):
                raise TypeError(
                    f"optimizer state key {index!r} is a {type(index).__name__}; expected the "
                    "int parameter index of torch.optim.Optimizer.state_dict()"
                )
            state[str(index)] = _encode(entries, f"optim/state/{index}", tensors)
        optimizer_state = {
            "class": type(optimizer).__name__,
            "param_groups": [
                _encode(group, f"optim/param_groups/{g}", tensors)
                for g, group in enumerate(sd["param_groups"])
            ],
            "state": state,
        }

    tensors["rng/global/cpu"] = torch.get_rng_state()
    cuda_devices = 0
    if _cuda_initialized():
        for device, rng in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng/global/cuda/{device}"] = rng.cpu()
            cuda_devices += 1
    for name, generator in generators.items():
        tensors[f"rng/{name}"] = generator.get_state()

    meta: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "torch_version": torch.__version__,
        "optimizer_state": optimizer_state,
        "rng_state": {
            "cuda_devices": cuda_devices,
            "generators": {name: str(g.device) for name, g in generators.items()},
        },
    }
    meta.update(extra_meta)
    return tensors, meta


def unpack_state(
    tensors: Mapping[str, torch.Tensor],
    meta: Mapping[str, Any],
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    generators: Mapping[str, torch.Generator] | None = None,
) -> dict[str, Any]:
    """Restore what :func:`pack_state` flattened, in place, and return ``meta``.

    Restores ``model`` (``load_state_dict``, strict), ``optimizer`` if given (its state dict is
    rebuilt exactly: tensor ``step`` of Adam stays a 0-dim float32 tensor, tuples stay tuples), the
    global CPU RNG, the CUDA RNGs where present (a warning when this machine has fewer devices), and
    each generator in ``generators``. Generator states in the checkpoint that are not asked for are
    ignored, as is the optimizer state when ``optimizer`` is ``None``; tensors outside the
    ``model/``, ``optim/`` and ``rng/`` prefixes are the caller's.

    Everything is checked before anything is changed: on error the model, optimizer and RNGs are
    untouched.

    Raises:
        CheckpointError: the state does not fit (missing/unexpected model keys, shape mismatch,
            other optimizer class or parameter groups, missing generator state), or ``meta`` is not
            from :func:`pack_state` / is of a newer format version.
    """
    generators = {} if generators is None else generators
    _check_generators(generators)
    meta = dict(meta)
    version = meta.get("format_version")
    if type(version) is not int or "rng_state" not in meta:
        raise CheckpointError(
            "checkpoint meta has no valid 'format_version'/'rng_state'; "
            "it was not made by steadygrad.checkpoint.pack_state"
        )
    if version > FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint has format version {version}, newer than the newest this steadygrad "
            f"reads ({FORMAT_VERSION}); upgrade steadygrad to load it"
        )

    model_state = _match_model(tensors, model)
    optim_state = None if optimizer is None else _rebuild_optimizer(tensors, meta, optimizer)
    rng = _collect_rng(tensors, meta, generators)

    try:
        model.load_state_dict(model_state, strict=True)
    except RuntimeError as err:
        raise CheckpointError(f"checkpoint does not fit the model: {_first_line(err)}") from err
    if optimizer is not None:
        try:
            optimizer.load_state_dict(optim_state)  # type: ignore[arg-type]
        except (ValueError, KeyError, RuntimeError, TypeError) as err:
            raise CheckpointError(
                f"checkpoint does not fit the optimizer: {_first_line(err)}"
            ) from err
    torch.set_rng_state(rng["global/cpu"])
    cuda = [rng[k] for k in sorted(rng) if k.startswith("global/cuda/")]
    if cuda:
        have = torch.cuda.device_count() if torch.cuda.is_available() else 0
        for device, state in enumerate(cuda[:have]):
            torch.cuda.set_rng_state(state, device)
        if have < len(cuda):
            warnings.warn(
                f"checkpoint has CUDA RNG states for {len(cuda)} device(s) but this machine has "
                f"{have}; the rest are not restored, so resumed training is not bitwise identical",
                RuntimeWarning,
                stacklevel=2,
            )
    for name, generator in generators.items():
        generator.set_state(rng[name])
    return meta


def save_training_state(
    path: PathLike,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    generators: Mapping[str, torch.Generator] | None = None,
    meta: Mapping[str, Any] | None = None,
) -> None:
    """``save(path, *pack_state(model, optimizer, generators, meta))``."""
    tensors, packed = pack_state(model, optimizer, generators, meta)
    save(path, tensors, packed)


def load_training_state(
    path: PathLike,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    generators: Mapping[str, torch.Generator] | None = None,
) -> dict[str, Any]:
    """``unpack_state(*load(path), model, optimizer, generators)``; errors name ``path``."""
    tensors, meta = load(path)
    try:
        return unpack_state(tensors, meta, model, optimizer, generators)
    except CheckpointError as err:
        raise CheckpointError(f"{path}: {err}") from err


# --------------------------------------------------------------------------------------------
# writing


def _prepare_tensors(tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Contiguous CPU tensors, no two sharing memory (safetensors refuses either)."""
    if not isinstance(tensors, Mapping):
        raise TypeError(f"tensors must be a dict of str to Tensor; got {type(tensors).__name__}")
    prepared: dict[str, torch.Tensor] = {}
    storages: set[int] = set()
    for key, value in tensors.items():
        if not isinstance(key, str) or not key or key == "__metadata__":
            raise TypeError(
                f"tensor names must be non-empty str other than '__metadata__'; got {key!r}"
            )
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"tensors[{key!r}] must be a Tensor; got {type(value).__name__}")
        if value.layout != torch.strided:
            raise TypeError(
                f"tensors[{key!r}] has layout {value.layout}; only dense (torch.strided) tensors "
                "can be saved, call .to_dense() first"
            )
        if value.dtype not in _DTYPES:
            allowed = ", ".join(str(d).removeprefix("torch.") for d in _DTYPES)
            raise TypeError(f"tensors[{key!r}] has dtype {value.dtype}; allowed: {allowed}")
        if value.device.type == "meta":
            raise TypeError(f"tensors[{key!r}] is on the meta device and has no data to save")
        t = value.detach().to("cpu").contiguous()
        ptr = t.untyped_storage().data_ptr()
        if ptr in storages:
            t = t.clone()
            ptr = t.untyped_storage().data_ptr()
        if t.numel() > 0:
            storages.add(ptr)
        prepared[key] = t
    return prepared


def _atomic_write(path: Path, data: bytes) -> None:
    """tmp file in the same folder → write → flush → fsync → os.replace → fsync(folder)."""
    if path.is_dir():
        raise CheckpointError(f"could not write checkpoint {path}: it is a folder")
    existed = path.exists()
    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
    created = False
    try:
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
        fd = os.open(tmp, flags, 0o666)
        created = True
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        created = False  # tmp is now path
    except BaseException as err:
        if created:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        if not isinstance(err, Exception):  # KeyboardInterrupt, SystemExit: cleaned up, re-raise
            raise
        after = "the previous checkpoint is intact" if existed else "no file was written"
        raise CheckpointError(
            f"could not write checkpoint {path}: {_reason(err)}; {after}"
        ) from err
    try:
        _fsync_folder(path.parent)
    except OSError as err:
        raise CheckpointError(
            f"checkpoint {path} was written but its folder could not be synced: {_reason(err)}; "
            "it may not survive a crash"
        ) from err


def _fsync_folder(folder: Path) -> None:
    """Persist the rename by syncing the folder (skipped on Windows, which cannot open folders)."""
    if os.name == "nt":
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as err:
        # Some file systems (network, FUSE) cannot sync folders; nothing more can be done there.
        if err.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
            raise
    finally:
        os.close(fd)


def _cuda_initialized() -> bool:
    """CUDA is usable and its RNG is in use (checking never initialises CUDA)."""
    return bool(torch.cuda.is_available() and torch.cuda.is_initialized())  # type: ignore[no-untyped-call]


def _reason(err: BaseException) -> str:
    """``No space left on device (ENOSPC)`` for an OSError, else the message."""
    if isinstance(err, OSError) and err.errno is not None and err.errno in errno.errorcode:
        return f"{err.strerror or os.strerror(err.errno)} ({errno.errorcode[err.errno]})"
    return str(err) or type(err).__name__


def _check_json(value: Any, where: str, active: set[int]) -> None:
    """Raise TypeError naming the first value in ``value`` that JSON cannot store exactly."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return
    if isinstance(value, (Mapping, list, tuple)):
        if id(value) in active:
            raise TypeError(f"{where} contains itself; checkpoint metadata must be a tree")
        active.add(id(value))
        if isinstance(value, Mapping):
            for key, item in value.items():
                if not isinstance(key, str):
                    raise TypeError(
                        f"{where} has key {key!r} of type {type(key).__name__}; checkpoint "
                        "metadata keys must be str"
                    )
                _check_json(item, f"{where}[{key!r}]", active)
        else:
            for i, item in enumerate(value):
                _check_json(item, f"{where}[{i}]", active)
        active.discard(id(value))
        return
    hint = "; put tensors in the tensors dict" if isinstance(value, torch.Tensor) else ""
    raise TypeError(
        f"{where} is a {type(value).__name__}, which checkpoint metadata (JSON) cannot store; "
        f"allowed: {_JSON_KINDS}{hint}"
    )


def _snapshot(t: torch.Tensor) -> torch.Tensor:
    """A contiguous CPU copy, detached from autograd and from later in-place updates."""
    return t.detach().to(device="cpu", copy=True, memory_format=torch.contiguous_format)


def _encode(value: Any, key: str, tensors: dict[str, torch.Tensor]) -> Any:
    """Optimizer state → JSON, moving tensors into ``tensors`` under ``key`` (exact round trip)."""
    if isinstance(value, torch.Tensor):
        if key in tensors:
            raise ValueError(f"optimizer state name {key!r} is used twice; rename the state entry")
        tensors[key] = _snapshot(value)
        return {_TENSOR_TAG: key}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, tuple):
        return {_TUPLE_TAG: [_encode(v, f"{key}/{i}", tensors) for i, v in enumerate(value)]}
    if isinstance(value, list):
        return [_encode(v, f"{key}/{i}", tensors) for i, v in enumerate(value)]
    if isinstance(value, Mapping):
        out = {}
        for name, item in value.items():
            if not isinstance(name, str) or name in (_TENSOR_TAG, _TUPLE_TAG):
                raise TypeError(
                    f"optimizer state {key} has key {name!r}; keys must be str other than "
                    f"{_TENSOR_TAG!r} and {_TUPLE_TAG!r}"
                )
            out[name] = _encode(item, f"{key}/{name}", tensors)
        return out
    raise TypeError(
        f"optimizer state {key} is a {type(value).__name__}; checkpoints store tensors and "
        f"{_JSON_KINDS}"
    )


# --------------------------------------------------------------------------------------------
# reading


def _open(path: Path) -> BinaryIO:
    """``open(path, "rb")`` with CheckpointErrors for a missing path, a folder or no permission."""
    try:
        return open(path, "rb")  # the caller closes it with ``with``
    except FileNotFoundError as err:
        raise CheckpointError(f"checkpoint {path} does not exist{_did_you_mean(path)}") from err
    except IsADirectoryError as err:
        raise CheckpointError(
            f"checkpoint {path} is a folder; pass the .safetensors file inside it "
            "(steadygrad.checkpoint.latest finds the newest)"
        ) from err
    except OSError as err:
        raise CheckpointError(f"could not read checkpoint {path}: {_reason(err)}") from err


def _did_you_mean(path: Path) -> str:
    try:
        names = [p.name for p in path.parent.iterdir() if not p.name.startswith(".")]
    except OSError:
        return ""
    close = difflib.get_close_matches(path.name, names, n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


def _pickle_kind(head: bytes) -> str | None:
    """What pickle-based format ``head`` (the first bytes of a file) starts like, if any."""
    if head.startswith(b"PK\x03\x04"):
        return "a zip archive, the format of torch.save"
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:
        return f"a pickle (protocol {head[1]}), the format of pickle.dump and legacy torch.save"
    return None


def _read_header(f: BinaryIO, path: Path, size: int) -> dict[str, Any]:
    """The safetensors JSON header, after checking its declared length against ``size``."""
    head = f.read(min(size, 8))
    kind = _pickle_kind(head)
    not_ours = f"{path} is not a steadygrad checkpoint (safetensors)"
    if kind is not None:
        raise CheckpointError(
            f"{not_ours}; refusing to unpickle it (it looks like {kind}; if you trust it, "
            "load it with torch.load(weights_only=True) and re-save with steadygrad)"
        )
    if len(head) < 8:
        raise CheckpointError(
            f"{not_ours}: it is {size} bytes, too short for the 8-byte header length"
        )
    n = int.from_bytes(head, "little")
    if n < 2 or n > size - 8:
        raise CheckpointError(
            f"{not_ours}: its header length {n} does not fit in a file of {size} bytes "
            "(truncated or corrupt)"
        )
    if n > _MAX_HEADER_BYTES:
        raise CheckpointError(
            f"{not_ours}: its header length {n} exceeds the limit of {_MAX_HEADER_BYTES} bytes"
        )
    raw = f.read(n)
    if len(raw) != n:
        raise CheckpointError(f"{not_ours}: the file shrank while it was read")
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{not_ours}: its header is not valid JSON ({err})") from err
    except RecursionError as err:
        raise CheckpointError(f"{not_ours}: its header is nested too deeply") from err
    if not isinstance(header, dict):
        raise CheckpointError(
            f"{not_ours}: its header is a JSON {type(header).__name__}, not an object"
        )
    return header


def _extract_meta(header: Mapping[str, Any], path: Path) -> dict[str, Any]:
    """The caller's meta from the header's ``__metadata__["steadygrad"]`` JSON document."""
    metadata = header.get("__metadata__")
    if not isinstance(metadata, dict) or _METADATA_KEY not in metadata:
        raise CheckpointError(
            f"{path} is a safetensors file without steadygrad metadata (no '__metadata__' entry "
            f"{_METADATA_KEY!r}); it was not written by steadygrad.checkpoint.save"
        )
    corrupt = f"{path} has corrupt steadygrad metadata"
    text = metadata[_METADATA_KEY]
    if not isinstance(text, str):
        raise CheckpointError(f"{corrupt}: expected a JSON string, got {type(text).__name__}")
    try:
        document = json.loads(text)
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{corrupt}: {err}") from err
    except RecursionError as err:
        raise CheckpointError(f"{corrupt}: nested too deeply") from err
    if not isinstance(document, dict) or "format_version" not in document:
        raise CheckpointError(f"{corrupt}: no 'format_version'")
    version = document["format_version"]
    if type(version) is not int or version < 1:
        raise CheckpointError(f"{corrupt}: format_version {version!r} is not a positive integer")
    if version > FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has checkpoint format version {version}, newer than the newest this "
            f"steadygrad reads ({FORMAT_VERSION}); upgrade steadygrad to load it"
        )
    meta = document.get("meta")
    if not isinstance(meta, dict):
        raise CheckpointError(f"{corrupt}: 'meta' is {type(meta).__name__}, not an object")
    return meta


def _first_line(err: BaseException) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return " ".join(lines[:2]) if lines else type(err).__name__


def _listing(keys: list[str], limit: int = 3) -> str:
    shown = ", ".join(repr(k) for k in keys[:limit])
    return shown + (f" (+{len(keys) - limit} more)" if len(keys) > limit else "")


def _check_generators(generators: Mapping[str, torch.Generator]) -> None:
    if not isinstance(generators, Mapping):
        raise TypeError(
            f"generators must be a dict of name to torch.Generator; got {type(generators).__name__}"
        )
    for name, generator in generators.items():
        if not isinstance(name, str) or not name or "/" in name:
            raise ValueError(f"generator names must be non-empty str without '/'; got {name!r}")
        if not isinstance(generator, torch.Generator):
            raise TypeError(
                f"generators[{name!r}] must be a torch.Generator; got {type(generator).__name__}"
            )


def _match_model(tensors: Mapping[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """``model/*`` tensors as a state dict, after checking keys and shapes against ``model``."""
    saved = {k.removeprefix("model/"): v for k, v in tensors.items() if k.startswith("model/")}
    expected = model.state_dict()
    missing = [k for k in expected if k not in saved]
    unexpected = [k for k in saved if k not in expected]
    shapes = [
        f"{k!r} (checkpoint {tuple(saved[k].shape)}, model {tuple(expected[k].shape)})"
        for k in expected
        if k in saved
        and isinstance(expected[k], torch.Tensor)
        and saved[k].shape != expected[k].shape
    ]
    problems = []
    if missing:
        problems.append(f"missing keys {_listing(missing)}")
    if unexpected:
        problems.append(f"unexpected keys {_listing(unexpected)}")
    if shapes:
        problems.append(
            "shape mismatch for "
            + ", ".join(shapes[:3])
            + (f" (+{len(shapes) - 3} more)" if len(shapes) > 3 else "")
        )
    if problems:
        raise CheckpointError("checkpoint does not fit the model: " + "; ".join(problems))
    return saved


def _decode(value: Any, tensors: Mapping[str, torch.Tensor], where: str) -> Any:
    """Inverse of :func:`_encode`; tensors are cloned so the optimizer owns its state."""
    if isinstance(value, dict):
        if set(value) == {_TENSOR_TAG}:
            key = value[_TENSOR_TAG]
            if key not in tensors:
                raise CheckpointError(
                    f"checkpoint is missing tensor {key!r} that its {where} refers to"
                )
            return tensors[key].clone()
        if set(value) == {_TUPLE_TAG} and isinstance(value[_TUPLE_TAG], list):
            return tuple(_decode(v, tensors, where) for v in value[_TUPLE_TAG])
        return {k: _decode(v, tensors, where) for k, v in value.items()}
    if isinstance(value, list):
        return [_decode(v, tensors, where) for v in value]
    return value


def _rebuild_optimizer(
    tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any], optimizer: torch.optim.Optimizer
) -> dict[str, Any]:
    """The ``optimizer.state_dict()`` that was packed, checked against ``optimizer``."""
    packed = meta.get("optimizer_state")
    if packed is None:
        raise CheckpointError(
            "checkpoint has no optimizer state; pass optimizer=None to restore the model only"
        )
    if (
        not isinstance(packed, dict)
        or not isinstance(packed.get("param_groups"), list)
        or not isinstance(packed.get("state"), dict)
    ):
        raise CheckpointError("checkpoint meta 'optimizer_state' is malformed")
    name = type(optimizer).__name__
    if packed.get("class") != name:
        raise CheckpointError(
            f"checkpoint holds {packed.get('class')} optimizer state; the optimizer is {name}"
        )
    groups = _decode(packed["param_groups"], tensors, "optimizer param_groups")
    saved_sizes = [len(g.get("params", [])) if isinstance(g, dict) else -1 for g in groups]
    sizes = [len(g["params"]) for g in optimizer.param_groups]
    if saved_sizes != sizes:
        raise CheckpointError(
            f"checkpoint optimizer has parameter groups of sizes {saved_sizes}; "
            f"the optimizer has {sizes}"
        )
    state: dict[int, Any] = {}
    for index, entries in packed["state"].items():
        try:
            state[int(index)] = _decode(entries, tensors, f"optimizer state {index}")
        except ValueError as err:
            raise CheckpointError(
                f"checkpoint optimizer state key {index!r} is not a parameter index"
            ) from err
    return {"state": state, "param_groups": groups}


def _collect_rng(
    tensors: Mapping[str, torch.Tensor],
    meta: Mapping[str, Any],
    generators: Mapping[str, torch.Generator],
) -> dict[str, torch.Tensor]:
    """RNG states to restore, keyed ``global/cpu``, ``global/cuda/<i>`` and generator names."""
    out: dict[str, torch.Tensor] = {}
    info = meta["rng_state"]
    cuda_devices = info.get("cuda_devices", 0) if isinstance(info, dict) else None
    if type(cuda_devices) is not int or cuda_devices < 0:
        raise CheckpointError(
            f"checkpoint meta 'rng_state' is malformed: {info!r:.80}; expected "
            "{'cuda_devices': int, 'generators': {...}}"
        )
    wanted: list[tuple[str, torch.Tensor]] = [("global/cpu", torch.get_rng_state())]
    wanted += [(f"global/cuda/{i}", torch.get_rng_state()) for i in range(cuda_devices)]
    for name, generator in generators.items():
        if f"rng/{name}" not in tensors:
            stored = sorted(
                k.removeprefix("rng/")
                for k in tensors
                if k.startswith("rng/") and not k.startswith("rng/global/")
            )
            close = difflib.get_close_matches(name, stored, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise CheckpointError(
                f"checkpoint has no state for generator {name!r}; it has "
                f"{_listing(stored) if stored else 'none'}{hint}"
            )
        wanted.append((name, generator.get_state()))
    for name, reference in wanted:
        key = f"rng/{name}"
        if key not in tensors:
            raise CheckpointError(f"checkpoint is missing RNG state {key!r}")
        state = tensors[key]
        # CUDA states may differ in size from the CPU one; check only dtype and rank for them.
        same_size = name.startswith("global/cuda/") or state.numel() == reference.numel()
        if state.dtype != torch.uint8 or state.dim() != 1 or not same_size:
            raise CheckpointError(
                f"checkpoint RNG state {key!r} is {state.dtype} of shape {tuple(state.shape)}; "
                f"expected uint8 of shape {tuple(reference.shape)}"
            )
        out[name] = state.clone()
    return out
