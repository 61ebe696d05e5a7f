"""nunet's image model: pixel data with ImageJ axes and a calibration, and the checks on axes.

Axes use ImageJ's letters: ``T`` (frames), ``Z`` (slices), ``C`` (channels), ``Y``, ``X``
and ``S`` (RGB samples). Other axis letters that tifffile reports for plain multi-page
or OME files (``I``, ``Q``...) become ``Z``, or ``T`` when the file already has a ``Z``.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from nunet.errors import AxesError, ImageReadError
from nunet.options import OUTPUT_DTYPES

IMAGEJ_ORDER = "TZCYXS"


@dataclass(frozen=True)
class Calibration:
    """Physical calibration of an image (ImageJ's ``Calibration``)."""

    pixel_width: float = 1.0
    pixel_height: float = 1.0
    unit: str | None = None
    z_spacing: float | None = None
    frame_interval: float | None = None
    time_unit: str | None = None


@dataclass
class Image:
    """Pixel data with its axes string, calibration and origin."""

    data: np.ndarray
    axes: str
    calibration: Calibration = field(default_factory=Calibration)
    path: Path | None = None


def check_axes(axes: str, shape: tuple[int, ...], source: str = "image") -> str:
    """Validate an axes string against an array shape and return it upper-cased.

    Raises
    ------
    AxesError
        If the length differs, a letter repeats or is unknown, or Y/X are missing.
    """
    axes = axes.upper()
    if len(axes) != len(shape):
        raise AxesError(
            f"{source}: axes '{axes}' has {len(axes)} letters but the data has {len(shape)} dimensions {tuple(shape)}"
        )
    unknown = sorted(set(axes) - set(IMAGEJ_ORDER))
    if unknown:
        raise AxesError(f"{source}: unknown axis letter(s) {''.join(unknown)} in '{axes}' (use T, Z, C, Y, X, S)")
    if len(set(axes)) != len(axes):
        raise AxesError(f"{source}: repeated axis letter in '{axes}'")
    if "Y" not in axes or "X" not in axes:
        raise AxesError(f"{source}: axes '{axes}' must contain Y and X")
    if "S" in axes and axes[-1] != "S":
        raise AxesError(f"{source}: S (RGB samples) must be the last axis in '{axes}'")
    return axes


def guess_axes(shape: tuple[int, ...]) -> str:
    """Guess axes for a bare array: ``YX``, ``YXS`` for a trailing 3 or 4, leading axes as T/Z/C."""
    ndim = len(shape)
    if ndim < 2:
        raise AxesError(f"an image needs at least 2 dimensions, got shape {tuple(shape)}")
    trailing = "YXS" if ndim >= 3 and shape[-1] in (3, 4) and shape[-2] > 4 else "YX"
    leading = ndim - len(trailing)
    if leading > 3:
        raise AxesError(f"cannot guess axes for shape {tuple(shape)}; pass axes= explicitly")
    return ("", "Z", "TZ", "TZC")[leading] + trailing


def normalise_axes(axes: str) -> str:
    """Map tifffile's axis letters onto ImageJ's (see module docstring)."""
    out = []
    for letter in axes.upper():
        if letter in IMAGEJ_ORDER:
            out.append(letter)
        elif "Z" not in axes.upper() and "Z" not in out:
            out.append("Z")
        elif "T" not in axes.upper() and "T" not in out:
            out.append("T")
        else:
            raise AxesError(f"cannot map axis '{letter}' of '{axes}' onto ImageJ axes TZCYXS")
    return "".join(out)


def check_dtype(data: np.ndarray, source: str) -> np.ndarray:
    if data.dtype == bool:
        return data.astype(np.uint8)
    if np.iscomplexobj(data):
        raise ImageReadError(f"{source}: complex data ({data.dtype}) is not supported")
    if not (np.issubdtype(data.dtype, np.integer) or np.issubdtype(data.dtype, np.floating)):
        raise ImageReadError(f"{source}: unsupported pixel type {data.dtype}")
    if data.size == 0:
        raise ImageReadError(f"{source}: empty image, shape {data.shape}")
    return data


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else "no details"


def to_imagej_order(data: np.ndarray, axes: str) -> tuple[np.ndarray, str]:
    """Transpose ``data`` so its axes follow ImageJ's TZCYXS order."""
    order = sorted(range(len(axes)), key=lambda i: IMAGEJ_ORDER.index(axes[i]))
    return np.transpose(data, order), "".join(axes[i] for i in order)


def convert_dtype(data: np.ndarray, dtype: str) -> np.ndarray:
    """Convert a [0, 1] float image to an output dtype (uint types scale to their full range)."""
    if dtype not in OUTPUT_DTYPES:
        raise ValueError(f"output dtype must be one of {', '.join(OUTPUT_DTYPES)}, got '{dtype}'")
    if dtype == "float32":
        return data.astype(np.float32, copy=False)
    top = np.iinfo(dtype).max
    return np.rint(np.clip(data, 0.0, 1.0) * top).astype(dtype)


def with_data(image: Image, data: np.ndarray, axes: str) -> Image:
    """Return a copy of ``image`` with new pixel data and axes, same calibration."""
    return replace(image, data=data, axes=axes)
