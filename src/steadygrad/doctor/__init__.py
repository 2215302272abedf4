"""Gradient-flow doctor: diagnose why a network's signals vanish or explode, and treat it.

:func:`diagnose` probes a deep copy of any ``nn.Module`` with :mod:`steadygrad.monitor` (one
forward and backward, a few SGD steps, a second probe) and returns a :class:`Diagnosis`: findings
ordered by severity, each naming the layers, the evidence in numbers, the mechanism (Glorot &
Bengio 2010; He et al. 2015; Ioffe & Szegedy 2015; Clevert et al. 2015; Maas et al. 2013), a fix
in words and a machine-applicable remedy. :func:`treat` applies the remedies to another copy,
diagnoses it again and trains both from the same batches. The thresholds and the reason for each
value are in :mod:`steadygrad.doctor._thresholds` and docs/doctor.md.
"""

from __future__ import annotations

from steadygrad.doctor._diagnose import Diagnosis, default_loss, diagnose
from steadygrad.doctor._factory import data_batch, load_model_factory
from steadygrad.doctor._findings import ACTIONS, KINDS, SEVERITIES, Finding, Remedy
from steadygrad.doctor._thresholds import (
    DEAD_CRITICAL,
    DEAD_WARNING,
    DEFAULT_LR,
    DEFAULT_STEPS,
    EXPLODING_CRITICAL,
    EXPLODING_RATIO,
    FORWARD_GROW_CRITICAL,
    FORWARD_GROW_RATIO,
    FORWARD_SHRINK_CRITICAL,
    FORWARD_SHRINK_RATIO,
    INIT_DRIFT,
    INIT_FACTOR,
    SATURATION_CRITICAL,
    SATURATION_WARNING,
    UPDATE_RATIO_CRITICAL,
    UPDATE_RATIO_WARNING,
    VANISHING_CRITICAL,
    VANISHING_RATIO,
)
from steadygrad.doctor._treat import Treatment, apply_remedies, treat

__all__ = [
    "ACTIONS",
    "DEAD_CRITICAL",
    "DEAD_WARNING",
    "DEFAULT_LR",
    "DEFAULT_STEPS",
    "EXPLODING_CRITICAL",
    "EXPLODING_RATIO",
    "FORWARD_GROW_CRITICAL",
    "FORWARD_GROW_RATIO",
    "FORWARD_SHRINK_CRITICAL",
    "FORWARD_SHRINK_RATIO",
    "INIT_DRIFT",
    "INIT_FACTOR",
    "KINDS",
    "SATURATION_CRITICAL",
    "SATURATION_WARNING",
    "SEVERITIES",
    "UPDATE_RATIO_CRITICAL",
    "UPDATE_RATIO_WARNING",
    "VANISHING_CRITICAL",
    "VANISHING_RATIO",
    "Diagnosis",
    "Finding",
    "Remedy",
    "Treatment",
    "apply_remedies",
    "data_batch",
    "default_loss",
    "diagnose",
    "load_model_factory",
    "treat",
]
