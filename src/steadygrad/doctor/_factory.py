"""Loading a user's model from ``path/to/file.py:factory`` and a data batch, for the CLI."""

from __future__ import annotations

import difflib
import hashlib
import importlib.util
import sys
from pathlib import Path

import torch
from torch import nn


def load_model_factory(spec: str) -> nn.Module:
    """Import ``path/to/file.py`` and return ``factory()`` from it (``"path.py:factory"``).

    ``factory`` may also name an ``nn.Module`` instance defined in the file, returned as is.
    Raises ValueError (one line) for a spec without ``:``, a missing file, a file that fails to
    import (the original exception is chained), or a missing attribute (with the closest name);
    TypeError when the attribute is not callable or the factory does not return an ``nn.Module``.
    """
    if not isinstance(spec, str):
        raise TypeError(
            f"model must be a string 'path/to/file.py:factory'; got {type(spec).__name__}"
        )
    path_text, sep, attribute = spec.rpartition(":")
    if not sep or not path_text or not attribute:
        raise ValueError(f"model must be 'path/to/file.py:factory'; got {spec!r}")
    path = Path(path_text).expanduser()
    if not path.is_file():
        raise ValueError(f"model file {str(path)!r} does not exist (from --model {spec!r})")
    digest = hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:12]
    module_name = f"steadygrad_user_model_{digest}"
    loader_spec = importlib.util.spec_from_file_location(module_name, path)
    if loader_spec is None or loader_spec.loader is None:
        raise ValueError(f"model file {str(path)!r} is not an importable Python file")
    module = importlib.util.module_from_spec(loader_spec)
    sys.modules[module_name] = module  # dataclasses and pickling look the module up by name
    try:
        loader_spec.loader.exec_module(module)
    except Exception as error:
        sys.modules.pop(module_name, None)
        raise ValueError(
            f"could not import model file {str(path)!r}: {type(error).__name__}: {error}"
        ) from error
    if not hasattr(module, attribute):
        public = sorted(n for n in vars(module) if not n.startswith("_"))
        close = difflib.get_close_matches(attribute, public, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(f"model file {str(path)!r} has no attribute {attribute!r}{hint}")
    target = getattr(module, attribute)
    if isinstance(target, nn.Module):
        return target
    if not callable(target):
        raise TypeError(
            f"{attribute!r} in {str(path)!r} must be a function returning a torch.nn.Module; "
            f"got {type(target).__name__}"
        )
    try:
        model = target()
    except Exception as error:
        raise ValueError(
            f"model factory {spec!r} raised {type(error).__name__}: {error}"
        ) from error
    if not isinstance(model, nn.Module):
        raise TypeError(
            f"model factory {spec!r} must return a torch.nn.Module; got {type(model).__name__}"
        )
    return model


def data_batch(
    name: str = "fashion-mnist",
    size: int = 256,
    *,
    seed: int = 0,
    root: str | Path | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch ``(x, y)`` of ``size`` training images drawn without replacement (seeded).

    Pixels in [0, 1] as :func:`steadygrad.data.load` gives them (float32, shape (size, 784)).
    Raises :class:`~steadygrad.errors.DataError` when the dataset cannot be found.
    """
    from steadygrad import data

    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"size must be a positive int; got {size!r}")
    dataset = data.load(name, root=root, validation=0)
    images, labels = dataset.train.images, dataset.train.labels
    index = torch.randperm(images.shape[0], generator=torch.Generator().manual_seed(seed))[:size]
    return images[index], labels[index]
