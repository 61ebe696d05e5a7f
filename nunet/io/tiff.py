"""TIFF files (ImageJ hyperstacks, OME-TIFF, multi-page) in and out, and PNG/JPEG in.

Every file nunet writes carries :data:`SOFTWARE` in its Software tag: how a rerun tells its own
outputs from other files.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from nunet._atomic import atomic_path
from nunet._version import __version__
from nunet.errors import AxesError, ImageReadError, ImageWriteError, OptionWarning
from nunet.io.image import (
    IMAGEJ_ORDER,
    Calibration,
    Image,
    check_axes,
    check_dtype,
    first_line,
    normalise_axes,
    to_imagej_order,
)

SOFTWARE = f"nunet {__version__}"


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


def read_tiff(path: Path, given: str | None = None) -> Image:
    import tifffile

    try:
        with _tifffile_warnings() as warnings, tifffile.TiffFile(path) as tif:
            if not tif.series:
                raise ImageReadError(f"{path}: TIFF file without image data")
            series = tif.series[0]
            data = series.asarray()
            axes = given.upper() if given else normalise_axes(series.axes)
            calibration = _tiff_calibration(tif)
        if warnings:
            raise ImageReadError(f"{path}: corrupt or truncated TIFF ({warnings[0]})")
    except ImageReadError:
        raise
    except AxesError as exc:
        raise ImageReadError(f"{path}: {exc}") from exc
    except Exception as exc:  # tifffile raises many types for corrupt or truncated files
        raise ImageReadError(f"{path}: not a readable TIFF ({type(exc).__name__}: {first_line(exc)})") from exc
    data = check_dtype(data, str(path))
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


def read_other(path: Path) -> Image:
    import imageio.v3 as iio

    try:
        data = np.asarray(iio.imread(path))
    except Exception as exc:
        raise ImageReadError(f"{path}: not a readable image ({type(exc).__name__}: {first_line(exc)})") from exc
    data = check_dtype(data, str(path))
    axes = {2: "YX", 3: "YXS"}.get(data.ndim)
    if axes is None:
        raise ImageReadError(f"{path}: unexpected image shape {data.shape}")
    return Image(data, axes, Calibration(), path)


def tiff_written_by_nunet(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a TIFF whose Software tag starts with ``nunet``."""
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            return str(tif.pages[0].software or "").startswith("nunet")
    except Exception:  # not a TIFF, unreadable, truncated: not ours
        return False


def write_tiff(image: Image, path: Path, *, overwrite: bool = False) -> Path:
    """Write an ImageJ-compatible TIFF atomically (temporary file in the same folder, then rename).

    Axes are reordered to ImageJ's TZCYX order; pixel size, unit, Z spacing and frame
    interval are written so Fiji and TrackMate see a calibrated hyperstack.
    """
    import tifffile

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
