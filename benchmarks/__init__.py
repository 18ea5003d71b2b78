"""minicnn's benchmarks: kernel variants validated and timed side by side, and end-to-end runs.

``minicnn bench`` (the suite is the package ``minicnn.bench``) or its aliases here,
``python -m benchmarks.ops`` and ``python -m benchmarks.end_to_end``, run them; the sweeps and
A/B scripts of this folder build on the same harness. See README.md in this folder and
docs/benchmarks.md for the measured numbers.
"""
