"""``python -m benchmarks.end_to_end``: an alias of ``minicnn.bench.end_to_end``,
ResNet-18 end to end against PyTorch and ONNX Runtime.

The suite lives in the package so an installed minicnn runs it (``minicnn bench``); this name is
kept for commands and imports written against the checkout's benchmarks/ folder. Importing it
gives the package's module itself, so patching one patches the other.
"""
import sys

from minicnn.bench import end_to_end as _module

if __name__ == "__main__":
    raise SystemExit(_module.main())
sys.modules[__name__] = _module
