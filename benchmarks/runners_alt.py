"""The alternatives a user might pick instead of steadygrad: Keras 3 ``fit`` and hand-written JAX.

These run only in ``.bench-env/`` (``python -m benchmarks.setup_alternatives``), as
``.bench-env/bin/python -m benchmarks.worker``; steadygrad never imports JAX or Keras. Each trains
the reference network of :mod:`benchmarks.common` (784-300-100-10, BatchNorm with momentum 0.9
and ε 1e-3, ELU, He-normal weights, zero biases), with the same optimizer and data as the PyTorch
runners, and reports per-epoch seconds and mean training loss.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import time
from functools import partial
from typing import Any

from benchmarks.common import (
    ADAM_BETAS,
    ADAM_EPS,
    BN_EPSILON,
    BN_MOMENTUM,
    WIDTHS,
    RunResult,
    RunSpec,
    load_arrays,
    peak_rss_mb,
)


def _versions() -> dict[str, str]:
    from importlib import metadata

    found: dict[str, str] = {}
    for name in ("jax", "jaxlib", "keras", "torch"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            found[name] = metadata.version(name)
    return found


def run_jax_scan(spec: RunSpec) -> RunResult:
    r"""One ``jax.jit``-compiled function per epoch: shuffle, then ``lax.scan`` over the batches.

    The step is written by hand: Dense ``z = h W + b``; BatchNorm in train mode with the batch
    mean and biased variance, ``γ (z − μ)/\sqrt{σ² + ε} + β``, moving averages updated as
    ``m·avg + (1 − m)·stat`` with the unbiased variance (as ``torch.nn.BatchNorm1d``); ELU; mean
    cross-entropy of ``log_softmax``; gradients by ``jax.value_and_grad``; Adam (Kingma & Ba,
    2015, bias-corrected, as ``torch.optim.Adam``) or plain SGD. Batches are gathered inside the
    scan from the device-resident data by a per-epoch ``jax.random.permutation``; a last partial
    batch is one more step after the scan, so every runner sees all ``n`` samples.
    """
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    import jax  # type: ignore[import-not-found, unused-ignore]
    import jax.numpy as jnp  # type: ignore[import-not-found, unused-ignore]
    import numpy as np
    from jax import lax  # type: ignore[import-not-found, unused-ignore]

    x_np, y_np = load_arrays(spec.data)
    x = jnp.asarray(x_np)  # (N, 784) float32
    y = jnp.asarray(y_np.astype(np.int32))  # (N,)
    del x_np
    n, b = int(y.shape[0]), spec.batch_size
    full, rest = divmod(n, b)
    pairs = list(itertools.pairwise(WIDTHS))
    last = len(pairs) - 1

    key = jax.random.PRNGKey(spec.seed)
    params: list[dict[str, Any]] = []
    for d_in, d_out in pairs:
        key, sub = jax.random.split(key)
        params.append(
            {
                "w": jax.random.normal(sub, (d_in, d_out), jnp.float32) * np.sqrt(2.0 / d_in),
                "b": jnp.zeros(d_out),
                "gamma": jnp.ones(d_out),
                "beta": jnp.zeros(d_out),
            }
        )
    bn_state = [(jnp.zeros(d_out), jnp.ones(d_out)) for _, d_out in pairs]
    opt_state: Any = ()
    if spec.optimizer == "adam":  # step count, first and second moments (distinct buffers)
        moments = [jax.tree_util.tree_map(jnp.zeros_like, params) for _ in range(2)]
        opt_state = (jnp.zeros((), jnp.int32), *moments)

    def forward(params: Any, state: Any, xb: Any) -> tuple[Any, Any]:
        h, new_state = xb, []
        m = xb.shape[0]
        for i, (p, (avg_mean, avg_var)) in enumerate(zip(params, state, strict=True)):
            z = h @ p["w"] + p["b"]  # (batch, out)
            mu = jnp.mean(z, axis=0)
            var = jnp.mean(jnp.square(z - mu), axis=0)  # biased, for normalising
            h = p["gamma"] * (z - mu) * lax.rsqrt(var + BN_EPSILON) + p["beta"]
            new_state.append(
                (
                    BN_MOMENTUM * avg_mean + (1 - BN_MOMENTUM) * mu,
                    BN_MOMENTUM * avg_var + (1 - BN_MOMENTUM) * var * (m / (m - 1)),
                )
            )
            if i < last:
                h = jax.nn.elu(h)
        return h, new_state

    def loss_fn(params: Any, state: Any, xb: Any, yb: Any) -> tuple[Any, Any]:
        logits, new_state = forward(params, state, xb)
        logp = jax.nn.log_softmax(logits)
        return -jnp.mean(jnp.take_along_axis(logp, yb[:, None], axis=1)), new_state

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    beta1, beta2 = ADAM_BETAS

    def update(params: Any, grads: Any, opt: Any) -> tuple[Any, Any]:
        if spec.optimizer == "sgd":
            return jax.tree_util.tree_map(lambda p, g: p - spec.lr * g, params, grads), opt
        t, m1, m2 = opt
        t = t + 1
        m1 = jax.tree_util.tree_map(lambda m, g: beta1 * m + (1 - beta1) * g, m1, grads)
        m2 = jax.tree_util.tree_map(lambda v, g: beta2 * v + (1 - beta2) * g * g, m2, grads)
        c1 = 1 - beta1 ** t.astype(jnp.float32)
        c2 = 1 - beta2 ** t.astype(jnp.float32)
        new = jax.tree_util.tree_map(
            lambda p, m, v: p - spec.lr * (m / c1) / (jnp.sqrt(v / c2) + ADAM_EPS), params, m1, m2
        )
        return new, (t, m1, m2)

    def step(x: Any, y: Any, carry: Any, idx: Any) -> tuple[Any, Any]:
        params, opt, state = carry
        xb, yb = jnp.take(x, idx, axis=0), jnp.take(y, idx, axis=0)
        (loss, state), grads = grad_fn(params, state, xb, yb)
        params, opt = update(params, grads, opt)
        return (params, opt, state), loss

    @partial(jax.jit, donate_argnums=(0, 1, 2))
    def epoch(params: Any, opt: Any, state: Any, x: Any, y: Any, key: Any) -> tuple[Any, ...]:
        perm = jax.random.permutation(key, n)
        carry = (params, opt, state)
        carry, losses = lax.scan(partial(step, x, y), carry, perm[: full * b].reshape(full, b))
        loss_sum = jnp.sum(losses) * b
        if rest:
            carry, loss = step(x, y, carry, perm[full * b :])
            loss_sum = loss_sum + loss * rest
        return (*carry, loss_sum / n)

    seconds: list[float] = []
    losses: list[float] = []
    key = jax.random.PRNGKey(spec.seed + 1)
    for _ in range(spec.epochs):
        key, sub = jax.random.split(key)
        started = time.perf_counter()
        params, opt_state, bn_state, mean_loss = epoch(params, opt_state, bn_state, x, y, sub)
        mean_loss.block_until_ready()
        seconds.append(time.perf_counter() - started)
        losses.append(float(mean_loss))
    return RunResult(
        runner=spec.runner,
        batch_size=b,
        n_train=n,
        epoch_seconds=seconds,
        train_loss=losses,
        peak_rss_mb=peak_rss_mb(),
        versions=_versions(),
        extra={"devices": [str(d) for d in jax.devices()]},
    )


def _run_keras(spec: RunSpec, backend: str) -> RunResult:
    """``model.fit(x, y, batch_size, epochs, shuffle=True, verbose=0)`` with Keras 3's defaults.

    ``keras.Sequential`` of ``Dense(kernel_initializer="he_normal")``,
    ``BatchNormalization(momentum=0.9, epsilon=1e-3)`` and ``Activation("elu")``;
    ``SparseCategoricalCrossentropy(from_logits=True)``; ``Adam(epsilon=1e-8)`` (torch's ε) or
    ``SGD``. Epochs are timed by a callback from ``on_epoch_begin`` to ``on_epoch_end``.
    """
    os.environ["KERAS_BACKEND"] = backend
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    import keras  # type: ignore[import-not-found, unused-ignore]

    x, y = load_arrays(spec.data)
    keras.utils.set_random_seed(spec.seed)
    layers: list[Any] = [keras.Input((WIDTHS[0],))]
    pairs = list(itertools.pairwise(WIDTHS))
    for i, (_, d_out) in enumerate(pairs):
        layers.append(keras.layers.Dense(d_out, kernel_initializer="he_normal"))
        layers.append(keras.layers.BatchNormalization(momentum=BN_MOMENTUM, epsilon=BN_EPSILON))
        if i < len(pairs) - 1:
            layers.append(keras.layers.Activation("elu"))
    model = keras.Sequential(layers)
    if spec.optimizer == "adam":
        beta1, beta2 = ADAM_BETAS
        optimizer: Any = keras.optimizers.Adam(
            learning_rate=spec.lr, beta_1=beta1, beta_2=beta2, epsilon=ADAM_EPS
        )
    else:
        optimizer = keras.optimizers.SGD(learning_rate=spec.lr)
    model.compile(
        optimizer=optimizer, loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    )
    seconds: list[float] = []
    losses: list[float] = []

    class Timer(keras.callbacks.Callback):  # type: ignore[misc]
        def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
            self.started = time.perf_counter()

        def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
            seconds.append(time.perf_counter() - self.started)
            losses.append(float((logs or {}).get("loss", float("nan"))))

    model.fit(
        x,
        y,
        batch_size=spec.batch_size,
        epochs=spec.epochs,
        shuffle=True,
        verbose=0,
        callbacks=[Timer()],
    )
    threads = None
    if backend == "torch":
        import torch

        threads = torch.get_num_threads()
    return RunResult(
        runner=spec.runner,
        batch_size=spec.batch_size,
        n_train=len(y),
        epoch_seconds=seconds,
        train_loss=losses,
        peak_rss_mb=peak_rss_mb(),
        threads=threads,
        versions=_versions(),
        extra={"backend": keras.backend.backend()},
    )


def run_keras_jax(spec: RunSpec) -> RunResult:
    """Keras 3 ``fit`` on the JAX backend (see :func:`_run_keras`)."""
    return _run_keras(spec, "jax")


def run_keras_torch(spec: RunSpec) -> RunResult:
    """Keras 3 ``fit`` on the torch backend (see :func:`_run_keras`)."""
    return _run_keras(spec, "torch")
