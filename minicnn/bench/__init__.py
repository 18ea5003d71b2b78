"""minicnn's benchmark suite: kernel variants validated and timed side by side, and ResNet-18 end to end.

``minicnn bench`` runs it (``python -m minicnn.bench.ops`` and ``python -m minicnn.bench.end_to_end``
too). It lives in the package so an installed minicnn can measure itself; the frameworks it
compares against (PyTorch, ONNX Runtime) are imported only inside the functions that use them.

- ``harness``: ``Case``, ``Variant``, validate-then-time (``run_cases``), the sgemm and copy
  ceilings, the load meter, markdown and JSON reports.
- ``shapes``: every distinct ResNet-18 layer with use counts, FLOP and byte counts.
- ``ops``: the per-op cases on those shapes (``minicnn bench ops``).
- ``end_to_end``: ResNet-18 inference, training, memory and start-up against PyTorch and ONNX
  Runtime (``minicnn bench e2e``).
- ``roofline``: the roofline plot (needs matplotlib).
- ``torch_reference``: the plain-PyTorch ResNet-18/34 the comparisons run (needs torch).
"""
