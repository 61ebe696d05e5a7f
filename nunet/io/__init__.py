"""Images in and out: one facade over the file formats (tifffile's ``imread``/``imwrite`` style).

:func:`read_image` reads a TIFF (ImageJ hyperstack, OME-TIFF, multi-page), PNG, JPEG or OME-Zarr
into an :class:`Image` (data, ImageJ axes, calibration); :func:`write_image` writes a calibrated
ImageJ TIFF or an OME-Zarr image, atomically. The formats live in :mod:`nunet.io.tiff` and
:mod:`nunet.io.zarr`, the image model in :mod:`nunet.io.image`.
"""

from __future__ import annotations

import os
from pathlib import Path

from nunet.errors import ImageReadError, ImageWriteError
from nunet.io.image import (
    IMAGEJ_ORDER,
    Calibration,
    Image,
    check_axes,
    convert_dtype,
    guess_axes,
    to_imagej_order,
    with_data,
)

__all__ = [
    "IMAGEJ_ORDER",
    "Calibration",
    "Image",
    "check_axes",
    "check_output_name",
    "convert_dtype",
    "guess_axes",
    "read_image",
    "to_imagej_order",
    "with_data",
    "write_image",
    "written_by_nunet",
]

TIFF_SUFFIXES = (".tif", ".tiff")
OTHER_SUFFIXES = (".png", ".jpg", ".jpeg")
ZARR_SUFFIX = ".zarr"  # OME-Zarr stores (folders), as .zarr or .ome.zarr: nunet.io.zarr


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
        from nunet.io.zarr import read_zarr

        image = read_zarr(path)
    elif not path.is_file():
        raise ImageReadError(f"{path}: no such file")
    elif suffix in TIFF_SUFFIXES:
        from nunet.io.tiff import read_tiff

        return read_tiff(path, axes)
    elif suffix in OTHER_SUFFIXES:
        from nunet.io.tiff import read_other

        image = read_other(path)
    else:
        raise ImageReadError(f"{path}: unsupported file type '{suffix}' (use .tif, .tiff, .png, .jpg, .zarr)")
    return image if axes is None else with_data(image, image.data, check_axes(axes, image.data.shape, str(path)))


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
    or an OME-Zarr image when ``path`` ends in ``.zarr`` (:func:`nunet.io.zarr.write_zarr`, NGFF
    version ``ngff``).

    Axes are reordered to ImageJ's TZCYX order; pixel size, unit, Z spacing and frame
    interval are written so Fiji and TrackMate see a calibrated hyperstack.

    Raises
    ------
    ImageWriteError
        If the file exists and ``overwrite`` is False, the folder is not writable, or the name
        is not a .tif/.tiff/.zarr one (:func:`check_output_name`).
    """
    path = check_output_name(path)
    if path.suffix.lower() == ZARR_SUFFIX:
        from nunet.io.tiff import SOFTWARE
        from nunet.io.zarr import write_zarr

        return write_zarr(image, path, overwrite=overwrite, ngff=ngff, record={"software": SOFTWARE})
    from nunet.io.tiff import write_tiff

    return write_tiff(image, path, overwrite=overwrite)


def written_by_nunet(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a TIFF (its Software tag starts with ``nunet``) or a zarr group (with a run
    record) that nunet wrote."""
    if Path(path).suffix.lower() == ZARR_SUFFIX:
        from nunet.io.zarr import run_record

        return run_record(path) is not None
    from nunet.io.tiff import tiff_written_by_nunet

    return tiff_written_by_nunet(path)
