"""Errors the library raises on bad input; the CLI turns them into one-line messages."""


class MinicnnError(Exception):
    """Base class of minicnn's own errors."""


class WeightFormatError(MinicnnError, ValueError):
    """A weight file is truncated, corrupt, hostile or not in a format we read."""


class DownloadError(MinicnnError, OSError):
    """A download failed, was interrupted, or did not match its expected hash."""
