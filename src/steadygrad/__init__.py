"""steadygrad: train deep networks whose signals neither vanish nor explode.

One concept per submodule: :mod:`~steadygrad.init` (initializers), :mod:`~steadygrad.activations`,
:mod:`~steadygrad.nn` (Dense, BatchNorm, fold_batchnorm), :mod:`~steadygrad.models` (mlp, presets),
:mod:`~steadygrad.data` (MNIST-format data), :mod:`~steadygrad.checkpoint`,
:mod:`~steadygrad.train` (fit), :mod:`~steadygrad.errors`. Heavier ones (monitor, doctor, report,
studies) are imported on first use.
"""

from __future__ import annotations

from steadygrad import activations, checkpoint, data, errors, init, models, nn, train

__version__ = "0.1.0"

__all__ = [
    "__version__",
    "activations",
    "checkpoint",
    "data",
    "errors",
    "init",
    "models",
    "nn",
    "train",
]
