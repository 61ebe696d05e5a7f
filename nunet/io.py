"""Reading images with their axes and calibration, writing calibrated ImageJ TIFFs.

Axes use ImageJ's letters: ``T`` (frames), ``Z`` (slices), ``C`` (channels), ``Y``, ``X``
and ``S`` (RGB samples). Other axis letters that tifffile reports for plain multi-page
or OME files (``I``, ``Q``...) become ``Z``, or ``T`` when the file already has a ``Z``.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from nunet._atomic import atomic_path
from nunet._version import __version__
from nunet.errors import AxesError, ImageReadError, ImageWriteError, OptionWarning
from nunet.settings import OUTPUT_DTYPES

IMAGEJ_ORDER = "TZCYXS"
TIFF_SUFFIXES = (".tif", ".tiff")
OTHER_SUFFIXES = (".png", ".jpg", ".jpeg")
ZARR_SUFFIX = ".zarr"  # OME-Zarr stores (folders), as .zarr or .ome.zarr: nunet.zarr_io
#: The TIFF Software tag of every file nunet writes: how a rerun tells its own outputs from other files.
SOFTWARE = f"nunet {__version__}"


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


def _normalise_axes(axes: str) -> str:
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


def _check_dtype(data: np.ndarray, source: str) -> np.ndarray:
    if data.dtype == bool:
        return data.astype(np.uint8)
    if np.iscomplexobj(data):
        raise ImageReadError(f"{source}: complex data ({data.dtype}) is not supported")
    if not (np.issubdtype(data.dtype, np.integer) or np.issubdtype(data.dtype, np.floating)):
        raise ImageReadError(f"{source}: unsupported pixel type {data.dtype}")
    if data.size == 0:
        raise ImageReadError(f"{source}: empty image, shape {data.shape}")
    return data


def _tiff_calibration(tif) -> Calibration:
    """Calibration from ImageJ metadata, OME-XML or plain TIFF resolution tags."""
    import tifffile

    page = tif.pages.first if hasattr(tif.pages, "first") else tif.pages[0]
    width = height = 1.0
    unit = None
    tags = page.tags
    if "XResolution" in tags and "YResolution" in tags:
        xr, yr = tags["XResolution"].value, tags["YResolution"].value
        if xr[0] and yr[0]:
            width, height = xr[1] / xr[0], yr[1] / yr[0]
        res_unit = int(tags["ResolutionUnit"].value) if "ResolutionUnit" in tags else 2
        if res_unit == 3:  # centimetre
            width, height, unit = width * 1e4, height * 1e4, "micron"
    if tif.is_imagej:
        meta = tif.imagej_metadata or {}
        unit = meta.get("unit", unit)
        return Calibration(
            width, height, unit, _float(meta.get("spacing")), _float(meta.get("finterval")), meta.get("tunit")
        )
    if tif.is_ome and tif.ome_metadata:
        pixels = tifffile.xml2dict(tif.ome_metadata).get("OME", {}).get("Image", {})
        pixels = (pixels[0] if isinstance(pixels, list) else pixels).get("Pixels", {})
        return Calibration(
            float(pixels.get("PhysicalSizeX", 1.0)),
            float(pixels.get("PhysicalSizeY", 1.0)),
            pixels.get("PhysicalSizeXUnit", "µm") if "PhysicalSizeX" in pixels else None,
            _float(pixels.get("PhysicalSizeZ")),
            _float(pixels.get("TimeIncrement")),
            pixels.get("TimeIncrementUnit") if "TimeIncrement" in pixels else None,
        )
    if unit is None:
        width = height = 1.0  # dots per inch of a plain TIFF is not a microscope calibration
    return Calibration(width, height, unit)


def _float(value) -> float | None:
    return None if value is None else float(value)


def read_image(path: str | os.PathLike, axes: str | None = None) -> Image:
    """Read a TIFF (ImageJ hyperstack, OME-TIFF, multi-page), PNG, JPEG or (O)ME-Zarr image.

    ``axes`` (letters of ``TZCYXS``) names the stored array's axes and overrides what the file says.
    Without it, a TIFF stored with its samples first (planar ``SYX``, as ``tifffile.imwrite`` writes a
    (3, H, W) or (4, H, W) array) is read as RGB with the samples moved last, and an
    :class:`~nunet.errors.OptionWarning` says so and how to read the planes as channels instead.

    Raises
    ------
    ImageReadError
        With a one-line message naming the file and the problem.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ZARR_SUFFIX:
        from nunet.zarr_io import read_zarr

        image = read_zarr(path)
    elif not path.is_file():
        raise ImageReadError(f"{path}: no such file")
    elif suffix in TIFF_SUFFIXES:
        return _read_tiff(path, axes)
    elif suffix in OTHER_SUFFIXES:
        image = _read_other(path)
    else:
        raise ImageReadError(f"{path}: unsupported file type '{suffix}' (use .tif, .tiff, .png, .jpg, .zarr)")
    return image if axes is None else with_data(image, image.data, check_axes(axes, image.data.shape, str(path)))


def _read_tiff(path: Path, given: str | None = None) -> Image:
    import tifffile

    try:
        with _tifffile_warnings() as warnings, tifffile.TiffFile(path) as tif:
            if not tif.series:
                raise ImageReadError(f"{path}: TIFF file without image data")
            series = tif.series[0]
            data = series.asarray()
            axes = given.upper() if given else _normalise_axes(series.axes)
            calibration = _tiff_calibration(tif)
        if warnings:
            raise ImageReadError(f"{path}: corrupt or truncated TIFF ({warnings[0]})")
    except ImageReadError:
        raise
    except AxesError as exc:
        raise ImageReadError(f"{path}: {exc}") from exc
    except Exception as exc:  # tifffile raises many types for corrupt or truncated files
        raise ImageReadError(f"{path}: not a readable TIFF ({type(exc).__name__}: {_first_line(exc)})") from exc
    data = _check_dtype(data, str(path))
    if not given and "S" in axes[:-1]:  # planar RGB: the samples stored before the planes
        data, axes = np.moveaxis(data, axes.index("S"), -1), axes.replace("S", "") + "S"
        import warnings as python_warnings

        python_warnings.warn(
            f"{path}: read as planar RGB ({data.shape[-1]} samples stored first, made grey); to filter them "
            f"as channels, give --axes {axes[:-1].replace('YX', 'CYX')} (axes=...)",
            OptionWarning,
            stacklevel=3,
        )
    return Image(data, check_axes(axes, data.shape, str(path)), calibration, path)


@contextmanager
def _tifffile_warnings() -> Iterator[list[str]]:
    """Collect tifffile's logged warnings: it logs, rather than raises, for truncated files."""
    messages: list[str] = []

    class _Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            messages.append(re.sub(r"^<[^>]*>\s*", "", record.getMessage().strip().splitlines()[-1]))

    logger = logging.getLogger("tifffile")
    handler, propagate = _Collect(logging.WARNING), logger.propagate
    logger.addHandler(handler)
    logger.propagate = False
    try:
        yield messages
    finally:
        logger.removeHandler(handler)
        logger.propagate = propagate


def _read_other(path: Path) -> Image:
    import imageio.v3 as iio

    try:
        data = np.asarray(iio.imread(path))
    except Exception as exc:
        raise ImageReadError(f"{path}: not a readable image ({type(exc).__name__}: {_first_line(exc)})") from exc
    data = _check_dtype(data, str(path))
    axes = {2: "YX", 3: "YXS"}.get(data.ndim)
    if axes is None:
        raise ImageReadError(f"{path}: unexpected image shape {data.shape}")
    return Image(data, axes, Calibration(), path)


def _first_line(exc: BaseException) -> str:
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


def check_output_name(path: str | os.PathLike) -> Path:
    """``path`` if nunet can write that kind of file (``.tif``, ``.tiff``, ``.zarr``); else an
    ImageWriteError naming it, so no other format gets TIFF bytes under its name."""
    path = Path(path)
    if path.suffix.lower() not in (*TIFF_SUFFIXES, ZARR_SUFFIX):
        raise ImageWriteError(
            f"{path}: nunet writes .tif/.tiff (ImageJ TIFF) or .zarr/.ome.zarr (OME-Zarr), not '{path.suffix}'"
        )
    return path


def write_image(image: Image, path: str | os.PathLike, *, overwrite: bool = False, ngff: str | None = None) -> Path:
    """Write an ImageJ-compatible TIFF atomically (temporary file in the same folder, then rename),
    or an OME-Zarr image when ``path`` ends in ``.zarr`` (:func:`nunet.zarr_io.write_zarr`, NGFF
    version ``ngff``).

    Axes are reordered to ImageJ's TZCYX order; pixel size, unit, Z spacing and frame
    interval are written so Fiji and TrackMate see a calibrated hyperstack.

    Raises
    ------
    ImageWriteError
        If the file exists and ``overwrite`` is False, the folder is not writable, or the name
        is not a .tif/.tiff/.zarr one (:func:`check_output_name`).
    """
    import tifffile

    path = check_output_name(path)
    if path.suffix.lower() == ZARR_SUFFIX:
        from nunet.zarr_io import write_zarr

        return write_zarr(image, path, overwrite=overwrite, ngff=ngff, record={"software": SOFTWARE})
    if path.exists() and not overwrite:
        raise ImageWriteError(f"{path}: output exists (use overwrite)")
    data, axes = to_imagej_order(image.data, image.axes)
    # the full TZCYXS shape: tifffile would otherwise take a trailing 1 (a 1-px wide plane) for samples
    data = data.reshape([data.shape[axes.index(a)] if a in axes else 1 for a in IMAGEJ_ORDER])
    cal = image.calibration
    metadata: dict = {"axes": IMAGEJ_ORDER}
    if cal.unit:
        metadata["unit"] = cal.unit
    if cal.z_spacing is not None:
        metadata["spacing"] = cal.z_spacing
    if cal.frame_interval is not None:
        metadata["finterval"] = cal.frame_interval
    if cal.time_unit:
        metadata["tunit"] = cal.time_unit
    if data.dtype == np.float32:
        metadata.update(min=0.0, max=1.0)
    try:
        with atomic_path(path) as tmp:
            tifffile.imwrite(
                tmp,
                data,
                imagej=True,
                metadata=metadata,
                software=SOFTWARE,
                resolution=(1.0 / cal.pixel_width, 1.0 / cal.pixel_height),
            )
    except OSError as exc:
        raise ImageWriteError(f"{path}: cannot write ({exc.strerror or exc})") from exc
    return path


def written_by_nunet(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a TIFF (its Software tag starts with ``nunet``) or a zarr group (with a run
    record) that nunet wrote."""
    import tifffile

    if Path(path).suffix.lower() == ZARR_SUFFIX:
        from nunet.zarr_io import run_record

        return run_record(path) is not None

    try:
        with tifffile.TiffFile(path) as tif:
            return str(tif.pages[0].software or "").startswith("nunet")
    except Exception:  # not a TIFF, unreadable, truncated: not ours
        return False


def with_data(image: Image, data: np.ndarray, axes: str) -> Image:
    """Return a copy of ``image`` with new pixel data and axes, same calibration."""
    return replace(image, data=data, axes=axes)
