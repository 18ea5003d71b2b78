"""One seeded generator for weight initialisation and dropout, so runs are reproducible."""
import numpy as np

_rng = np.random.default_rng(0)


def manual_seed(seed: int) -> None:
    """Reseed the generator used by layer initialisers, dropout and data shuffling."""
    global _rng
    _rng = np.random.default_rng(seed)


def get_rng() -> np.random.Generator:
    return _rng
