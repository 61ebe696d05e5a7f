"""OME-Zarr images (NGFF 0.4 and 0.5): axes, scales and units in; the same out, with a pyramid.

Reading takes the first multiscale image of a group (level 0, its axes, scales and units) or a
bare zarr array (axes given or guessed). Axis names ``t c z y x`` become nunet's letters
``T C Z Y X``; space units map to ImageJ's (``micrometer`` <-> ``micron``) and back.

Writing makes a group in NGFF's axis order (t, c, z, y, x), level 0 in chunks of whole planes
(at most ``MAX_CHUNK`` px a side), then the pyramid, each level the 2x2 block mean of the one
before (computed from the filtered level 0, never by filtering again), then the OME metadata.
The metadata comes last: a group without it is not an OME-Zarr image yet, so an interrupted
write is never mistaken for a finished one (see :mod:`nunet.batch.cluster` for resuming). NGFF 0.4 is
written as zarr format 2, NGFF 0.5 as zarr format 3. Every group nunet writes carries a ``nunet``
attribute (its run record): how a rerun tells its own outputs from other stores.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from nunet.errors import AxesError, ImageReadError, ImageWriteError, NUNetError, OptionWarning
from nunet.io.image import Calibration, Image, check_axes, guess_axes
from nunet.options import NGFF_VERSIONS

DEFAULT_NGFF = "0.5"
NGFF_ORDER = "TCZYX"
#: Chunks of the written arrays: one plane, cut into squares of this side only above it.
MAX_CHUNK = 2048
#: Pyramid levels are added while both sides of the next level stay at least this long (at most MAX_LEVELS).
MIN_LEVEL_SIDE = 32
MAX_LEVELS = 6
RECORD_KEY = "nunet"
_AXIS_TYPES = {"T": "time", "C": "channel", "Z": "space", "Y": "space", "X": "space"}
#: ImageJ unit names -> NGFF (UDUNITS-2) names; the reverse map writes ImageJ's usual names.
_SPACE_UNITS = {
    "micron": "micrometer",
    "microns": "micrometer",
    "µm": "micrometer",
    "um": "micrometer",
    "micrometer": "micrometer",
    "nm": "nanometer",
    "nanometer": "nanometer",
    "mm": "millimeter",
    "millimeter": "millimeter",
    "cm": "centimeter",
    "centimeter": "centimeter",
    "m": "meter",
    "meter": "meter",
}
_TIME_UNITS = {
    "s": "second",
    "sec": "second",
    "second": "second",
    "seconds": "second",
    "ms": "millisecond",
    "millisecond": "millisecond",
    "min": "minute",
    "minute": "minute",
    "h": "hour",
    "hour": "hour",
}
_IMAGEJ_UNITS = {
    "micrometer": "micron",
    "nanometer": "nm",
    "millimeter": "mm",
    "centimeter": "cm",
    "meter": "m",
    "second": "sec",
    "millisecond": "ms",
    "minute": "min",
    "hour": "hour",
}


def require_zarr() -> None:
    """Raise a NUNetError with the install line when the ``[zarr]`` extra is missing."""
    try:
        import dask.array  # noqa: F401
        import ome_zarr  # noqa: F401
        import zarr  # noqa: F401
    except ImportError as exc:
        raise NUNetError(
            f"OME-Zarr needs the zarr extra ({exc.name} is missing): pip install 'nunet-filter[zarr]'"
        ) from None


@dataclass(frozen=True)
class ZarrSource:
    """An opened zarr image: where its level 0 is, its axes, calibration, shape and type."""

    path: Path
    array: str  # path of level 0 inside the store ("" for a bare array)
    axes: str
    calibration: Calibration
    shape: tuple[int, ...]
    dtype: str
    chunks: tuple[int, ...]
    ngff: str | None  # NGFF version, None for a bare array

    def open_array(self):
        """Level 0 as a zarr array (read-only)."""
        import zarr

        store = zarr.open(str(self.path), mode="r")
        return store[self.array] if self.array else store


def _multiscales(attrs: dict) -> tuple[list, str] | None:
    if "ome" in attrs and "multiscales" in attrs["ome"]:
        return attrs["ome"]["multiscales"], str(attrs["ome"].get("version", "0.5"))
    if "multiscales" in attrs:
        return attrs["multiscales"], str(attrs["multiscales"][0].get("version", "0.4"))
    return None


def open_zarr(path: str | os.PathLike, axes: str | None = None) -> ZarrSource:
    """Open a zarr image's metadata (no pixels are read).

    Parameters
    ----------
    path : path-like
        An OME-Zarr group (its first multiscale image) or a bare zarr array.
    axes : str, optional
        Axes letters, for a bare array (default: guessed) or to override the metadata's.

    Raises
    ------
    ImageReadError
        Not a zarr store, or axes that nunet cannot map, with the path in the message.
    """
    require_zarr()
    import zarr

    path = Path(path)
    if not path.exists():
        raise ImageReadError(f"{path}: no such zarr store")
    try:
        node = zarr.open(str(path), mode="r")
    except Exception as exc:  # zarr raises several types for what is not a store
        raise ImageReadError(f"{path}: not a readable zarr store ({type(exc).__name__}: {exc})") from None
    calibration, ngff = Calibration(), None
    if isinstance(node, zarr.Array):
        array, name = node, ""
        letters = axes or guess_axes(node.shape)
        if axes is None and node.ndim > 2:  # a bare array names no axes: say what was guessed
            import warnings

            warnings.warn(
                f"{path}: a bare zarr array names no axes; read as '{letters}' for shape {tuple(node.shape)} "
                "(give --axes to say otherwise)",
                OptionWarning,
                stacklevel=2,
            )
    else:
        found = _multiscales(dict(node.attrs))
        if not found:
            raise ImageReadError(f"{path}: a zarr group without OME-Zarr multiscales metadata")
        multiscales, ngff = found
        try:
            image = multiscales[0]
            name = image["datasets"][0]["path"]
            array = node[name]
            names = [a["name"] if isinstance(a, dict) else a for a in image.get("axes", [])]
            letters = "".join(n.upper() for n in names)
            if set(letters) - set(NGFF_ORDER) or len(names) != array.ndim:
                raise ImageReadError(f"{path}: axes {names} are not NGFF's t, c, z, y, x")
            calibration = _calibration(image, letters)
        except (KeyError, IndexError, TypeError, ValueError, AttributeError) as exc:
            raise ImageReadError(
                f"{path}: broken OME-Zarr multiscales metadata ({type(exc).__name__}: {exc}); nothing was computed"
            ) from None
        letters = axes or letters
    try:
        letters = check_axes(letters, array.shape, str(path))
    except AxesError as exc:
        raise ImageReadError(str(exc)) from None
    if "S" in letters:
        raise ImageReadError(f"{path}: RGB samples (S) are not supported in zarr images")
    dtype = np.dtype(array.dtype)
    if not (np.issubdtype(dtype, np.integer) or np.issubdtype(dtype, np.floating)):
        raise ImageReadError(f"{path}: unsupported pixel type {dtype}")
    return ZarrSource(path, name, letters, calibration, tuple(array.shape), str(dtype), tuple(array.chunks), ngff)


def _calibration(image: dict, letters: str) -> Calibration:
    """nunet's Calibration from a multiscale image's axes units and level-0 scale."""
    scale = [1.0] * len(letters)
    for transform in image["datasets"][0].get("coordinateTransformations", []):
        if transform.get("type") == "scale":
            scale = [float(s) for s in transform["scale"]]
    units = {n.upper(): a.get("unit") for a in image.get("axes", []) if isinstance(a, dict) for n in [a["name"]]}
    step = dict(zip(letters, scale))
    space = units.get("X") or units.get("Y")
    return Calibration(
        pixel_width=step.get("X", 1.0),
        pixel_height=step.get("Y", 1.0),
        unit=_IMAGEJ_UNITS.get(space, space) if space else None,
        z_spacing=step.get("Z"),
        frame_interval=step.get("T"),
        time_unit=_IMAGEJ_UNITS.get(units.get("T"), units.get("T")) if units.get("T") else None,
    )


def read_zarr(path: str | os.PathLike, axes: str | None = None) -> Image:
    """Read level 0 of a zarr image into memory as an :class:`~nunet.io.Image`."""
    source = open_zarr(path, axes)
    data = np.asarray(source.open_array()[...])
    return Image(data, source.axes, source.calibration, Path(path))


def ngff_order(axes: str) -> tuple[list[int], str]:
    """The transpose that puts ``axes`` in NGFF's order (t, c, z, y, x), and the ordered axes."""
    order = sorted(range(len(axes)), key=lambda i: NGFF_ORDER.index(axes[i]))
    return order, "".join(axes[i] for i in order)


def _axes_metadata(axes: str, calibration: Calibration) -> list[dict[str, str]]:
    space = _SPACE_UNITS.get((calibration.unit or "").lower())
    time = _TIME_UNITS.get((calibration.time_unit or "").lower())
    out = []
    for letter in axes:
        entry = {"name": letter.lower(), "type": _AXIS_TYPES[letter]}
        unit = space if entry["type"] == "space" else time if letter == "T" else None
        if unit:
            entry["unit"] = unit
        out.append(entry)
    return out


def _scale(axes: str, calibration: Calibration, level: int) -> list[dict[str, Any]]:
    step = {
        "X": calibration.pixel_width * 2**level,
        "Y": calibration.pixel_height * 2**level,
        "Z": calibration.z_spacing or 1.0,
        "T": calibration.frame_interval or 1.0,
    }
    shift = {"X": calibration.pixel_width * (2**level - 1) / 2, "Y": calibration.pixel_height * (2**level - 1) / 2}
    return [
        {"type": "scale", "scale": [float(step.get(a, 1.0)) for a in axes]},
        {"type": "translation", "translation": [float(shift.get(a, 0.0)) for a in axes]},
    ]


def level_shapes(shape: tuple[int, ...]) -> list[tuple[int, ...]]:
    """The pyramid's shapes: level 0, then YX halved while both sides stay >= ``MIN_LEVEL_SIDE``."""
    shapes = [tuple(shape)]
    while len(shapes) < MAX_LEVELS and min(shapes[-1][-2:]) // 2 >= MIN_LEVEL_SIDE:
        shapes.append(shapes[-1][:-2] + (shapes[-1][-2] // 2, shapes[-1][-1] // 2))
    return shapes


def plane_chunks(shape: tuple[int, ...]) -> tuple[int, ...]:
    """Chunks of one plane (at most ``MAX_CHUNK`` a side) for an array of ``shape``."""
    return (1,) * (len(shape) - 2) + tuple(min(n, MAX_CHUNK) for n in shape[-2:])


def create_output(path: Path, shape: tuple[int, ...], axes: str, dtype: str, ngff: str, record: dict[str, Any]) -> None:
    """An empty group with level 0 (``s0``, plane chunks) and the run record; no OME metadata yet.

    ``axes`` must already be in NGFF order.
    """
    import zarr

    if ngff not in NGFF_VERSIONS:
        raise NUNetError(f"NGFF version must be one of {', '.join(NGFF_VERSIONS)}, got '{ngff}'")
    group = zarr.open_group(str(path), mode="w", zarr_format=2 if ngff == "0.4" else 3)
    group.create_array("s0", shape=shape, chunks=plane_chunks(shape), dtype=dtype, fill_value=0)
    group.attrs[RECORD_KEY] = {**record, "axes": axes, "ngff": ngff}


def run_record(path: str | os.PathLike) -> dict | None:
    """The run record of a group nunet wrote (or is writing), or None for any other path."""
    if not Path(path).is_dir():
        return None
    require_zarr()
    import zarr

    try:
        group = zarr.open_group(str(path), mode="r")
    except Exception:  # not a group: not nunet's
        return None
    record = dict(group.attrs).get(RECORD_KEY)
    return record if isinstance(record, dict) else None


def is_finished(path: str | os.PathLike) -> bool:
    """Whether a zarr group has its OME metadata (written last, see module docstring)."""
    import zarr

    try:
        return _multiscales(dict(zarr.open_group(str(path), mode="r").attrs)) is not None
    except Exception:  # not a group
        return False


def finish_output(path: Path, calibration: Calibration, name: str = "nunet") -> None:
    """Write the pyramid from level 0, then the OME metadata (the last step of a write)."""
    import dask.array as da
    import zarr
    from ome_zarr.format import FormatV04, FormatV05
    from ome_zarr.writer import write_multiscales_metadata

    group = zarr.open_group(str(path), mode="r+")
    record = dict(group.attrs[RECORD_KEY])
    axes, ngff = record["axes"], record["ngff"]
    level0 = group["s0"]
    shapes = level_shapes(level0.shape)
    previous = da.from_zarr(level0)
    for level, shape in enumerate(shapes[1:], start=1):
        block = {axes.index("Y"): 2, axes.index("X"): 2}
        smaller = da.coarsen(np.mean, previous.astype(np.float32), block, trim_excess=True)
        if np.issubdtype(level0.dtype, np.integer):
            smaller = da.round(smaller)
        smaller = smaller.astype(level0.dtype).rechunk(plane_chunks(shape))
        array = group.create_array(
            f"s{level}", shape=shape, chunks=plane_chunks(shape), dtype=level0.dtype, fill_value=0, overwrite=True
        )
        da.store(smaller, array, lock=False)
        previous = da.from_zarr(array)
    datasets = [
        {"path": f"s{k}", "coordinateTransformations": _scale(axes, calibration, k)} for k in range(len(shapes))
    ]
    fmt = FormatV04() if ngff == "0.4" else FormatV05()
    write_multiscales_metadata(group, datasets, fmt=fmt, axes=_axes_metadata(axes, calibration), name=name)


def write_zarr(
    image: Image,
    path: str | os.PathLike,
    *,
    overwrite: bool = False,
    ngff: str | None = None,
    record: dict | None = None,
) -> Path:
    """Write an image held in memory as OME-Zarr with its pyramid, atomically (a hidden ``.part``
    folder beside the target, renamed onto it when complete).

    Raises
    ------
    ImageWriteError
        If the path exists and ``overwrite`` is False, or the folder is not writable.
    """
    require_zarr()
    import zarr

    path = Path(path)
    if path.exists() and not overwrite:
        raise ImageWriteError(f"{path}: output exists (use overwrite)")
    if "S" in image.axes:
        raise ImageWriteError(f"{path}: RGB samples (S) cannot be written to OME-Zarr; filter to grey first")
    order, axes = ngff_order(image.axes)
    data = np.transpose(image.data, order)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent))
        try:
            create_output(tmp, data.shape, axes, str(data.dtype), ngff or DEFAULT_NGFF, record or {})
            zarr.open_group(str(tmp), mode="r+")["s0"][...] = data
            finish_output(tmp, image.calibration)
            replace_tree(tmp, path)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    except OSError as exc:
        raise ImageWriteError(f"{path}: cannot write ({exc.strerror or exc})") from exc
    return path


def replace_tree(new: Path, target: Path) -> None:
    """Move folder ``new`` onto ``target``; an old ``target`` is moved aside first and removed after."""
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        os.replace(target, old)
    os.replace(new, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
