"""Fashion-MNIST and MNIST from their IDX files: ``FashionMNIST(root=None, train=True, transform=None)``.

Both data sets are four IDX files (LeCun's format): training images and labels (60,000), test
images and labels (10,000), 28x28 grey pixels 0..255 and class indices 0..9. Fashion-MNIST (Xiao,
Rasul & Vollgraf, Zalando Research, 2017) is packaged by Debian: ``apt-get install
dataset-fashion-mnist`` puts the gzipped files in ``/usr/share/datasets/fashion-mnist``, which is
where :class:`FashionMNIST` looks when ``root`` is None. MNIST is not packaged, so :class:`MNIST`
needs ``root``.

The IDX format (http://yann.lecun.com/exdb/mnist/, "THE IDX FILE FORMAT")::

    bytes 0-1   0x00 0x00                      the magic number starts with two zero bytes
    byte  2     element type: 0x08 uint8, 0x09 int8, 0x0B int16, 0x0C int32, 0x0D float32, 0x0E float64
    byte  3     number of dimensions d
    4*d bytes   the size of each dimension, big-endian uint32
    then        the elements, big-endian, row-major (last index fastest)

:func:`read_idx` implements exactly that and refuses, in one line naming the file, a header
that breaks it (a wrong magic, an unknown type code, a header cut short) or a body whose size is
not the product of the dimensions. Files may be gzipped (``.gz``, detected by their first bytes)
or plain.

The classes mirror torchvision's: ``len(ds)``, ``ds[i] -> (image, label)`` with the image a
float32 (1, 28, 28) array in [0, 1] (or whatever ``transform`` returns for it) and the label an
int, plus ``ds.data`` (uint8 (N, 28, 28)), ``ds.targets`` (int64 (N,)) and ``ds.classes`` for
fast whole-array training (:meth:`arrays`).
"""
from __future__ import annotations

import gzip
import os

import numpy as np

from ..errors import MinicnnError

__all__ = ["read_idx", "IDXError", "MNIST", "FashionMNIST", "DEBIAN_FASHION_MNIST"]

DEBIAN_FASHION_MNIST = "/usr/share/datasets/fashion-mnist"

# type code -> big-endian numpy dtype
_IDX_TYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_GZIP_MAGIC = b"\x1f\x8b"


class IDXError(MinicnnError, ValueError):
    """An IDX file whose header or size breaks the format."""


def _read_bytes(path: str) -> bytes:
    with open(path, "rb") as f:
        raw = f.read()
    if raw[:2] == _GZIP_MAGIC:
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, gzip.BadGzipFile) as e:
            raise IDXError(f"{path}: corrupt gzip stream ({e})") from None
    return raw


def read_idx(path) -> np.ndarray:
    """Read the IDX file ``path`` (gzipped or plain) into a numpy array in native byte order.

    Raises :class:`IDXError` (a ``ValueError``) naming the file when the magic number is wrong,
    the type code unknown, the header shorter than its dimension count says, or the body not
    exactly ``prod(dims) * itemsize`` bytes long; ``FileNotFoundError`` when the file is absent.
    """
    path = os.fspath(path)
    raw = _read_bytes(path)
    if len(raw) < 4:
        raise IDXError(f"{path}: not an IDX file: {len(raw)} bytes, shorter than the 4-byte magic number")
    if raw[0] != 0 or raw[1] != 0:
        raise IDXError(f"{path}: not an IDX file: magic number {raw[:4].hex()} does not start with two zero bytes")
    code, ndim = raw[2], raw[3]
    if code not in _IDX_TYPES:
        known = ", ".join(f"0x{c:02X}" for c in _IDX_TYPES)
        raise IDXError(f"{path}: unknown IDX element type 0x{code:02X} (known: {known})")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise IDXError(f"{path}: truncated IDX header: {ndim} dimensions need {header} bytes, the file has {len(raw)}")
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    dtype = _IDX_TYPES[code]
    expected = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    body = len(raw) - header
    if body != expected:
        what = "truncated" if body < expected else "too long"
        raise IDXError(
            f"{path}: IDX file {what}: shape {dims} of {dtype.name} needs {expected} data bytes, the file has {body}"
        )
    arr = np.frombuffer(raw, dtype=dtype, count=expected // dtype.itemsize, offset=header).reshape(dims)
    return arr.astype(dtype.newbyteorder("="))  # a native-order, writable copy


class MNIST:
    """MNIST handwritten digits from the four IDX files in ``root`` (torchvision's name and fields).

    Args:
        root: folder holding ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
            ``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte`` (each may end in ``.gz``);
            torchvision's layout ``root/MNIST/raw/`` is found too.
        train: the 60,000 training images if True, else the 10,000 test images.
        transform: called on each float32 (1, 28, 28) image by ``ds[i]``.

    Attributes:
        data: uint8 (N, 28, 28); targets: int64 (N,); classes: the class names.

    Shape:
        ``ds[i]`` -> (image (1, 28, 28) float32 in [0, 1], label int); ``ds.arrays()`` ->
        (X (N, 1, 28, 28) float32 in [0, 1], y (N,) int64).
    """

    classes = ["0 - zero", "1 - one", "2 - two", "3 - three", "4 - four",
               "5 - five", "6 - six", "7 - seven", "8 - eight", "9 - nine"]
    _name = "MNIST"
    _default_root: str | None = None

    def __init__(self, root=None, train: bool = True, transform=None):
        if transform is not None and not callable(transform):
            raise TypeError(f"{self._name}: transform must be callable, got {type(transform).__name__}")
        self.train = bool(train)
        self.transform = transform
        self.root = self._resolve_root(root)
        prefix = "train" if self.train else "t10k"
        images = read_idx(self._find(f"{prefix}-images-idx3-ubyte"))
        labels = read_idx(self._find(f"{prefix}-labels-idx1-ubyte"))
        if images.dtype != np.uint8 or images.ndim != 3:
            raise IDXError(f"{self._name}: {prefix} images must be uint8 of shape (N, H, W), got {images.dtype} {images.shape}")
        if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
            raise IDXError(f"{self._name}: {images.shape[0]} {prefix} images but labels of shape {labels.shape}")
        if labels.size and (labels.min() < 0 or labels.max() >= len(self.classes)):
            raise IDXError(f"{self._name}: {prefix} labels outside 0..{len(self.classes) - 1}")
        self.data = images
        self.targets = labels.astype(np.int64)

    # -- finding the files -----------------------------------------------------------------------
    def _missing_message(self, folder: str) -> str:
        return (f"{self._name}: IDX files not found in {folder}: put train-images-idx3-ubyte, train-labels-idx1-ubyte, "
                f"t10k-images-idx3-ubyte and t10k-labels-idx1-ubyte (each may be .gz) there")

    def _resolve_root(self, root) -> str:
        if root is None:
            if self._default_root is None:
                raise ValueError(f"{self._name}: root is required (the folder holding the four IDX files)")
            return self._default_root
        return os.fspath(root)

    def _find(self, stem: str) -> str:
        for folder in (self.root, os.path.join(self.root, self._name, "raw")):
            for name in (stem, stem + ".gz"):
                path = os.path.join(folder, name)
                if os.path.isfile(path):
                    return path
        raise FileNotFoundError(self._missing_message(self.root))

    # -- the data set ------------------------------------------------------------------------------
    def __len__(self) -> int:
        return int(self.data.shape[0])

    def __getitem__(self, index):
        img = (self.data[index].astype(np.float32) / np.float32(255.0))[None]
        if self.transform is not None:
            img = self.transform(img)
        return img, int(self.targets[index])

    def arrays(self):
        """The whole split as ``(X float32 (N, 1, 28, 28) in [0, 1], y int64 (N,))``, ready for ``DataLoader``."""
        return (self.data[:, None].astype(np.float32) / np.float32(255.0)), self.targets.copy()

    def __repr__(self) -> str:
        split = "train" if self.train else "test"
        return f"{self._name}(root={self.root!r}, split={split}, {len(self)} images)"


class FashionMNIST(MNIST):
    """Fashion-MNIST: 28x28 grey photos of clothing in 10 classes (Zalando Research), 6,000 per class
    in the training split and 1,000 in the test split.

    ``root=None`` reads the files Debian's ``dataset-fashion-mnist`` package installs in
    ``/usr/share/datasets/fashion-mnist``. Everything else is as in :class:`MNIST`.
    """

    classes = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
               "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
    _name = "FashionMNIST"
    _default_root = DEBIAN_FASHION_MNIST

    def _missing_message(self, folder: str) -> str:
        if folder == DEBIAN_FASHION_MNIST:
            return (f"{self._name}: the data set is not installed in {folder}: run `apt-get install "
                    f"dataset-fashion-mnist`, or pass root= a folder holding train-images-idx3-ubyte, "
                    f"train-labels-idx1-ubyte, t10k-images-idx3-ubyte and t10k-labels-idx1-ubyte (each may be .gz)")
        return super()._missing_message(folder)
