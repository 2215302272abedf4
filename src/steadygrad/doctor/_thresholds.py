"""The doctor's thresholds, each with the reason for its value (docs/doctor.md repeats them).

Calibrated on the broken presets of :mod:`steadygrad.models` and on healthy networks (the
``reference`` preset, 30-layer He-initialized ReLU, 10-layer Glorot tanh), with 128–256
Fashion-MNIST images or pixels drawn in [0, 1]; the measured values are quoted next to each
threshold.
"""

from __future__ import annotations

from typing import Final

# --------------------------------------------------------------------------- gradient flow

VANISHING_RATIO: Final = 1e-2
"""Warning when grad_out_std(layer 1) / grad_out_std(layer L) < 1e-2.

With one learning rate for all layers, the lowest layer then moves at most 1/100 as fast as the
top one: two decades is where Glorot & Bengio (2010, Fig. 7) see the lower layers of a sigmoid
network stop learning. Healthy nets measure 0.2 (30 × 256 ReLU, He: the logits layer's gradient
is ~5× the hidden layers') to 0.6 (reference); the 30-layer Glorot-ReLU net 8e-6, the 5 × 1000
sigmoid net 6e-6 (Fashion-MNIST, batch 256).
"""

VANISHING_CRITICAL: Final = 1e-3
"""Critical below 1e-3: three decades; at a learning rate that is stable for the top layer the
bottom one does not move within an epoch."""

EXPLODING_RATIO: Final = 1e2
"""Warning when grad_out_std(layer 1) / grad_out_std(layer L) > 1e2: the mirror image of
:data:`VANISHING_RATIO` (a learning rate small enough for the bottom layer freezes the top one).
N(0, 1) ReLU nets measure 2e20 over 20 layers, saturated N(0, 1) tanh nets 1.2e4 over 10."""

EXPLODING_CRITICAL: Final = 1e3
"""Critical above 1e3 (three decades), as :data:`VANISHING_CRITICAL`."""

FORWARD_SHRINK_RATIO: Final = 1e-2
"""Warning when pre_std(layer L) / pre_std(layer 1) < 1e-2: the forward signal lost two decades,
so the output barely depends on the input and float32 rounding starts to matter in deep stacks
(He et al. 2015, eq. 10: the variance changes by n·Var(W)/2 per ReLU layer). Healthy nets measure
0.55–1.9."""

FORWARD_SHRINK_CRITICAL: Final = 1e-3
"""Critical below 1e-3."""

FORWARD_GROW_RATIO: Final = 1e2
"""Warning when pre_std(layer L) / pre_std(layer 1) > 1e2 (mirror of the above)."""

FORWARD_GROW_CRITICAL: Final = 1e3
"""Critical above 1e3."""

# --------------------------------------------------------------------------- units

SATURATION_WARNING: Final = 0.3
"""Warning when more than 30 % of a layer's pre-activations lie in the activation's saturating
region (f'(z) < 0.1 · max f', :meth:`Activation.saturation_region`). A unit-variance z puts 5 % of
a tanh layer there (|z| > 1.82) and < 0.1 % of a sigmoid layer (|z| > 3.64); healthy nets measure
0–4 %. At 30 % a third of the units pass back less than a tenth of the gradient: the regime of
Glorot & Bengio's (2010, Fig. 2) saturated top sigmoid layer. N(0, 1) tanh nets measure 87–91 %."""

SATURATION_CRITICAL: Final = 0.6
"""Critical above 60 %: most units pass back almost nothing."""

DEAD_WARNING: Final = 0.6
"""Warning when more than 60 % of a layer's units are dead (z ≤ dead_below for every sample of the
batch). Not 20 %: in deep ReLU nets the samples' representations become nearly collinear with
depth, so even a healthy He-initialized 30-layer net has 35–41 % of its deep units off for the
whole batch (measured on Fashion-MNIST and on random pixels, batches of 64–256), and half of
them in the limit of perfectly correlated inputs. 60 % is above that limit by more than its
sampling noise in layers of ≥ 225 units; see :data:`DEAD_NOISE_SIGMAS` for narrow layers."""

DEAD_NOISE_SIGMAS: Final = 3.0
"""Narrow layers: the threshold is max(:data:`DEAD_WARNING`, 0.5 + 3 · sqrt(0.25 / units)), the
fully-correlated limit plus three binomial standard deviations of the fraction of dead units."""

DEAD_CRITICAL: Final = 0.9
"""Critical above 90 %: the layer has lost almost all its capacity (the dead-relu preset: 100 %)."""

NEGATIVE_BIAS: Final = 0.5
"""Dead units are blamed on the biases when a dead layer's mean bias is below −0.5 · pre_std: the
offset alone then pushes the typical pre-activation well below 0 (dead-relu: bias −5, std 0.8)."""

# --------------------------------------------------------------------------- initialization

INIT_FACTOR: Final = 2.0
"""A layer's init is mismatched when weight_std / recommended_std is outside [1/2, 2]: one
layer at ×2 doubles the signal std once, which any network absorbs. PyTorch's default
U[±1/sqrt(n)] before ReLU is ×0.41 and is reported (as info when nothing drifts)."""

INIT_LAYER_TOLERANCE: Final = 1.2
"""A layer counts toward a compounded mismatch when its weight_std / recommended_std is off by
more than 20 % (Glorot instead of He on a square ReLU layer is ×0.71, invisible in one layer and
×2e-5 over 31); the truncated and untruncated normals of the same preset agree within 1 %."""

INIT_DRIFT: Final = 10.0
"""An init mismatch is reported when the product of weight_std / recommended_std over the layers
predicts a drift of more than ×10 (one decade), or when one layer is outside ×1/2–×2
(:data:`INIT_FACTOR`); it is a warning, and the remedy of the drift findings, when a measured
drift (vanishing, exploding, shrinking, growing or saturation) agrees with its direction, else
info. Glorot on a 30-layer ReLU net: 0.707^31 ≈ 2e-5, what the forward signal measures."""

# --------------------------------------------------------------------------- dynamics

UPDATE_RATIO_WARNING: Final = 0.1
"""Warning when one SGD step changes a weight matrix by more than 10 % of its norm
(‖ΔW‖ / ‖W‖ > 0.1): the usual healthy value is about 1e-3 (CS231n's rule of thumb), and at 0.1
ten steps rewrite the layer. Healthy nets at lr 0.01 measure 1e-4 – 2e-2."""

UPDATE_RATIO_CRITICAL: Final = 1.0
"""Critical when a single step is as large as the weights themselves."""

DEFAULT_LR: Final = 0.01
"""SGD learning rate of the probe's training steps when none is given (the seed's and Keras's
SGD default)."""

DEFAULT_STEPS: Final = 20
"""SGD steps of the probe's dynamics: enough for dead units and saturation to appear after a
too-large step, and for the update/weight ratio to be measured, at a cost of 20 training steps."""

MAX_LR_FACTOR: Final = 1000
"""The largest learning-rate reduction the doctor proposes in one go; larger ones point to an
initialization problem, which is reported as such."""
