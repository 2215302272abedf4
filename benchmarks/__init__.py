"""Benchmarks of steadygrad's trainer against the loops a user would otherwise write.

* ``python -m benchmarks.epoch``: seconds per training epoch of the reference network
  (784-300-100-10, BatchNorm + ELU) for steadygrad's ``fit``, hand-written PyTorch loops, Keras 3
  and JAX (when installed into ``.bench-env/`` by ``python -m benchmarks.setup_alternatives``),
  and the floating-point floor; peak memory per runner; results appended to
  ``benchmarks/RESULTS.md``.
* ``python -m benchmarks.inference``: inference latency of the BatchNorm-folded reference network
  against the same network without BatchNorm and unfolded.

Nothing here is imported by the library; JAX and Keras are never dependencies of steadygrad.
See ``benchmarks/README.md``.
"""
