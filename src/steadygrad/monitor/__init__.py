"""Gradient-flow monitor: per-layer forward and backward statistics of any PyTorch model.

:func:`watch` hooks a model and records, every ``every`` steps and for each layer (module with a
``weight`` of rank ≥ 2), the pre-activation and activation mean/std, the fraction of saturated
entries and of dead units, the std/norm of the back-propagated gradient ∂L/∂z and of the weight
gradient, the update/weight ratio ‖ΔW‖/‖W‖, the weight std against the initializer recommended
for the activation, and NaN/Inf counts (Glorot & Bengio 2010 measure the same quantities by
depth; He et al. 2015 and Mishkin & Matas 2016 use the activation variance by depth). Records go
to :attr:`Monitor.records` and ``<out>/monitor.jsonl``, which :func:`read` loads back without a
model; :func:`probe` records a single forward and backward pass.

File format and cost: docs/monitor.md.
"""

from __future__ import annotations

from steadygrad.monitor._records import (
    FILE_NAME,
    FORMAT,
    LAYER_STATS_KEYS,
    LayerInfo,
    LayerStats,
    MonitorLog,
    StepRecord,
    read,
)
from steadygrad.monitor._watch import (
    HISTOGRAM_BINS,
    SATURATION_FRACTION,
    Monitor,
    default_loss,
    probe,
    watch,
)

__all__ = [
    "FILE_NAME",
    "FORMAT",
    "HISTOGRAM_BINS",
    "LAYER_STATS_KEYS",
    "SATURATION_FRACTION",
    "LayerInfo",
    "LayerStats",
    "Monitor",
    "MonitorLog",
    "StepRecord",
    "default_loss",
    "probe",
    "read",
    "watch",
]
