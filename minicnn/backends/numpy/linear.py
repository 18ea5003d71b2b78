"""Fully connected layer: y = x W^T + b."""
import numpy as np

__all__ = ["linear_forward", "linear_backward"]


def linear_forward(x, w, b):
    y = x @ w.T
    if b is not None:
        y += b
    return y


def linear_backward(dy, x, w, need_dx=True, need_dw=True, need_db=True):
    dx = dy @ w if need_dx else None
    dw = dy.T @ x if need_dw else None
    db = dy.sum(axis=0) if need_db else None
    return dx, dw, db
