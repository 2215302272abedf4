"""Identify a functional activation (``F.relu``, ``torch.tanh``, …) from the autograd graph.

A module activation announces itself through its forward hook; a function does not. Between a
layer's output ``z`` and the tensor that goes on (the next layer's input, or the model's output)
the autograd graph holds one node per operation. :func:`between` walks that graph backwards from
the later tensor until it reaches ``z``'s node and reads the path: the first activation node
applied to ``z`` names the activation (its saved arguments give α, β, …); a path of only
structural nodes (views, pooling, additions, normalisation) means no activation; any other node
means an activation steadygrad does not know.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any, Final

import torch

from steadygrad import activations

# Autograd node name (without the trailing version digit) → how to build our module from it.
_ACTIVATION_NODES: Final[frozenset[str]] = frozenset(
    {
        "ReluBackward",
        "LeakyReluBackward",
        "EluBackward",
        "GeluBackward",
        "SiluBackward",
        "SigmoidBackward",
        "TanhBackward",
        "SoftplusBackward",
        "RreluWithNoiseBackward",
    }
)

# Operations that do not bend the signal the way an activation does (or are not activations):
# a path made only of these means "no activation" (a linear layer, possibly with BatchNorm,
# pooling, dropout or a residual addition after it).
_STRUCTURAL_PREFIXES: Final[tuple[str, ...]] = (
    "Add",
    "Sub",
    "Neg",
    "Mul",
    "Div",
    "View",
    "Reshape",
    "UnsafeView",
    "Expand",
    "Squeeze",
    "Unsqueeze",
    "Permute",
    "Transpose",
    "TBackward",
    "Clone",
    "Contiguous",
    "ToCopy",
    "Cat",
    "Stack",
    "Split",
    "Select",
    "Slice",
    "Index",
    "Narrow",
    "Flatten",
    "Unflatten",
    "MaxPool",
    "AvgPool",
    "AdaptiveMaxPool",
    "AdaptiveAvgPool",
    "Mean",
    "Sum",
    "NativeBatchNorm",
    "CudnnBatchNorm",
    "MiopenBatchNorm",
    "NativeLayerNorm",
    "NativeGroupNorm",
    "NativeDropout",
    "Dropout",
    "Alias",
    "Identity",
    "Pad",
    "ConstantPadNd",
)

_MAX_NODES: Final = (
    256  # graph nodes visited per search: a bound on the cost, never reached in MLPs
)


@dataclass(frozen=True)
class Trace:
    """Outcome of :func:`between`.

    ``status``: ``"activation"`` (``activation`` is our module), ``"none"`` (no activation on the
    path), ``"unknown"`` (``node`` names the operation steadygrad cannot interpret) or
    ``"unreachable"`` (no graph, or ``z`` not found).
    """

    status: str
    activation: activations.Activation | None = None
    node: str | None = None


NONE: Final = Trace("none")  # frozen: one object serves every "no activation"

# Autograd node class → its base name, and whether it is an activation, structural or unknown:
# decided once per class (a recorded step asks about the same few classes every time).
_KINDS: dict[type, tuple[str, str]] = {}


def _base(node: Any) -> str:
    return type(node).__name__.rstrip("0123456789")


def _kind(node: Any) -> tuple[str, str]:
    """(base name, "activation" | "structural" | "unknown") of ``node``'s class."""
    cls = type(node)
    kind = _KINDS.get(cls)
    if kind is None:
        base = _base(node)
        if base in _ACTIVATION_NODES:
            kind = (base, "activation")
        elif base.startswith(_STRUCTURAL_PREFIXES):
            kind = (base, "structural")
        else:
            kind = (base, "unknown")
        _KINDS[cls] = kind
    return kind


def _build(node: Any, base: str) -> activations.Activation | None:
    """Our activation module for an autograd node, reading its saved arguments."""
    try:
        if base == "ReluBackward":
            return activations.ReLU()
        if base == "LeakyReluBackward":
            return activations.LeakyReLU(float(node._saved_negative_slope))
        if base == "EluBackward":
            alpha, scale = float(node._saved_alpha), float(node._saved_scale)
            if scale != 1.0:  # F.selu is elu with SELU's α and λ
                return activations.SELU()
            return activations.ELU(alpha)
        if base == "GeluBackward":
            return activations.GELU(str(node._saved_approximate))
        if base == "SiluBackward":
            return activations.SiLU()
        if base == "SigmoidBackward":
            return activations.Sigmoid()
        if base == "TanhBackward":
            return activations.Tanh()
        if base == "SoftplusBackward":
            return activations.Softplus(float(node._saved_beta), float(node._saved_threshold))
        if base == "RreluWithNoiseBackward":
            return activations.RReLU(float(node._saved_lower), float(node._saved_upper))
    except (AttributeError, TypeError, ValueError):
        return None
    return None


def between(target: Any, later: torch.Tensor) -> Trace:
    """What lies between the autograd node ``target`` (``z.grad_fn`` when z was made) and
    ``later`` (see the module docstring). The node, not the tensor: an in-place activation
    (``F.relu(z, inplace=True)``) hands on the same tensor object with a new ``grad_fn``.
    """
    start = later.grad_fn
    if start is not None and start is target:
        return NONE
    if target is None or start is None:
        return Trace("unreachable")
    for child, _ in start.next_functions:
        if child is target:
            return _read_path([start])  # one operation between z and `later` (the common case)
    # Breadth-first from `later` towards the inputs; `parent` maps a node to the node it was
    # reached from (the one closer to `later`), so the path z → later can be read back.
    parent: dict[Any, Any] = {start: None}
    queue: deque[Any] = deque([start])
    found = False
    while queue and len(parent) <= _MAX_NODES:
        node = queue.popleft()
        if node is target:
            found = True
            break
        for child, _ in node.next_functions:
            if child is not None and child not in parent:
                parent[child] = node
                queue.append(child)
    if not found:
        return Trace("unreachable")
    path = []
    node = parent[target]  # the first operation applied to z
    while node is not None:
        path.append(node)
        node = parent[node]
    return _read_path(path)


def _read_path(path: list[Any]) -> Trace:
    """Read the operations from z to ``later``, in order: the first activation names it."""
    for node in path:
        base, kind = _kind(node)
        if kind == "activation":
            built = _build(node, base)
            if built is None:
                return Trace("unknown", node=type(node).__name__)
            return Trace("activation", activation=built)
        if kind == "unknown":
            return Trace("unknown", node=type(node).__name__)
    return NONE
