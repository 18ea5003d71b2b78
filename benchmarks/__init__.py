"""minicnn's benchmarks: kernel variants validated and timed side by side, and end-to-end runs.

``python -m benchmarks.ops``, ``python -m benchmarks.end_to_end`` or ``minicnn bench`` run them;
see README.md in this folder and docs/benchmarks.md for the measured numbers.
"""
