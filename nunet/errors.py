"""Exceptions whose message is the one line a user sees (no traceback unless --verbose)."""


class NUNetError(Exception):
    """Base class of every error nunet reports to users."""


class ImageReadError(NUNetError):
    """An input file cannot be read as an image (names the file and the problem)."""


class PlaneReadError(ImageReadError):
    """The pixels of one plane cannot be read mid-run (a corrupt or missing chunk): exit code 1,
    where a problem found before the compute exits 2."""


class ImageWriteError(NUNetError):
    """An output file cannot be written (names the file and the problem)."""


class ImageValueError(NUNetError, ValueError):
    """An image's pixels cannot be filtered (NaN or infinite values); names the plane."""


class AxesError(NUNetError, ValueError):
    """An axes string or channel selection does not match the image."""


class ModelError(NUNetError):
    """A model cannot be found, read or run."""


class UsageError(NUNetError, ValueError):
    """A bad option or a run that cannot start: found before any compute (exit code 2)."""


class OptionWarning(UserWarning):
    """An option that works but is probably not what the user wants (e.g. bf16 emulated on this CPU)."""
