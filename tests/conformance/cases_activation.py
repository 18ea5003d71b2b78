"""Conformance cases: elementwise activations (see ``__init__.py`` for the format)."""
from hypothesis import strategies as st

from . import Case, array, dtypes

SHAPES = st.lists(st.integers(1, 9), min_size=1, max_size=4).map(tuple)


def _unary(data):
    dt = data.draw(dtypes())
    return (array(data, data.draw(SHAPES), dt),), {}


CASES = [
    Case("relu_forward", _unary),
]
