"""steadygrad: train deep networks whose signals neither vanish nor explode.

Submodules, one concept each: :mod:`steadygrad.init`, :mod:`steadygrad.activations`,
:mod:`steadygrad.nn`, :mod:`steadygrad.models`, :mod:`steadygrad.data`,
:mod:`steadygrad.checkpoint`, :mod:`steadygrad.train`.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
