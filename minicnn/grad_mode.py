"""``no_grad()``: forward passes that keep nothing for backward (inference saves memory)."""
import contextlib
import threading

_state = threading.local()


def is_grad_enabled() -> bool:
    return getattr(_state, "enabled", True)


@contextlib.contextmanager
def no_grad():
    """Inside this block layers do not keep their inputs, so ``backward`` is unavailable."""
    prev = is_grad_enabled()
    _state.enabled = False
    try:
        yield
    finally:
        _state.enabled = prev
