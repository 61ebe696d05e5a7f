"""The filter's options, defined once: names, defaults, allowed values and their checks.

The CLI, the folder runner, the Fiji worker protocol and the in-process Fiji bridge all build a
:class:`FilterSettings`; a bad value is a :class:`~nunet.errors.UsageError` naming the option,
raised before any image is read.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, fields
from enum import Enum
from typing import Any

from nunet.errors import OptionWarning, UsageError

#: The model filtered with when none is named.
DEFAULT_MODEL = "nunet-v11"


class Precision(str, Enum):
    """``--precision``: fp32 (the reference), bf16, fp16 (GPU only) or auto (the fastest within 1e-2)."""

    AUTO = "auto"
    FP32 = "fp32"
    BF16 = "bf16"
    FP16 = "fp16"


class OutputDtype(str, Enum):
    """``--dtype``: float32 in [0, 1], or an integer type over its full range."""

    FLOAT32 = "float32"
    UINT8 = "uint8"
    UINT16 = "uint16"


class NgffVersion(str, Enum):
    """``--ngff``: the NGFF version of OME-Zarr outputs."""

    V04 = "0.4"
    V05 = "0.5"


PRECISIONS = tuple(p.value for p in Precision)
#: The smallest tile side (the network halves a tile twice; nunet's tiling rounds tiles to multiples of 4).
MIN_TILE = 8
#: Tiles smaller than this are slow (each layer visits every tile): a warning says so.
SLOW_TILE = 64
OUTPUT_DTYPES = tuple(d.value for d in OutputDtype)
NGFF_VERSIONS = tuple(v.value for v in NgffVersion)


@dataclass(frozen=True)
class FilterSettings:
    """How each image is filtered and written.

    Attributes
    ----------
    model : str, path-like or LoadedModel
        Registered model name, TorchScript file, or a model from :func:`nunet.load_model`.
    w : float, optional
        Filtering strength: blend the two members of ``model``'s family whose w brackets it.
    axes : str, optional
        Axes of the input, letters of ``TZCYXS`` (default: from the file).
    channel : int or tuple of int, optional
        Channel(s) to filter (default all); negative indices count from the last channel.
    tile_size : int, optional
        Tile planes larger than this (0: never; default: automatic, see :mod:`nunet.api`).
    batch_size : int, optional
        Planes per forward pass (default: 1 on a CPU, 8 on a GPU, measured with ``auto``).
    device : str
        ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps``.
    precision : str
        One of ``PRECISIONS``; ``fp16`` needs a GPU.
    percentiles : (float, float), optional
        Input percentiles mapped to 0 and 255 (default: those of the model's metadata).
    invert : bool
        Dark nuclei on a bright background: flip each plane first.
    augment : bool
        Test-time augmentation: average each plane's eight orientations (8x the compute).
    radius : str
        Typical nucleus radius: ``auto`` (estimated once per image), pixels (``12``), a length
        (``3.5um``, with the image's calibration) or ``off`` (see :mod:`nunet.core.size`).
    dtype : str
        Output pixel type, one of ``OUTPUT_DTYPES``.
    ngff : str, optional
        NGFF version of OME-Zarr outputs, one of ``NGFF_VERSIONS`` (default: a zarr input's, else 0.5).
    """

    model: Any = DEFAULT_MODEL
    w: float | None = None
    axes: str | None = None
    channel: int | tuple[int, ...] | None = None
    tile_size: int | None = None
    batch_size: int | None = None
    device: str = "auto"
    precision: str = "fp32"
    percentiles: tuple[float, float] | None = None
    invert: bool = False
    augment: bool = False
    radius: str = "auto"
    dtype: str = "float32"
    ngff: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "channel", parse_channel(self.channel))
        for name in ("precision", "dtype", "ngff"):  # an Enum member (a CLI choice) is kept as its value
            value = getattr(self, name)
            if isinstance(value, Enum):
                object.__setattr__(self, name, value.value)
        object.__setattr__(self, "radius", str(Radius.parse(self.radius)))  # a UsageError naming --radius
        if self.precision not in PRECISIONS:
            raise UsageError(f"--precision: '{self.precision}' is not one of {', '.join(PRECISIONS)}")
        if self.dtype not in OUTPUT_DTYPES:
            raise UsageError(f"--dtype: '{self.dtype}' is not one of {', '.join(OUTPUT_DTYPES)}")
        if self.ngff is not None and self.ngff not in NGFF_VERSIONS:
            raise UsageError(f"--ngff: '{self.ngff}' is not one of {', '.join(NGFF_VERSIONS)}")
        if self.batch_size is not None and self.batch_size < 1:
            raise UsageError(f"--batch-size: must be >= 1, got {self.batch_size}")
        if self.tile_size is not None:
            check_tile_size(self.tile_size)
        if self.w is not None and not self.w >= 0:
            raise UsageError(f"--w: must be a number >= 0, got {self.w}")

    @classmethod
    def from_mapping(cls, values: dict[str, Any]) -> "FilterSettings":
        """Settings from a dict of option names (unknown names are a UsageError; None means default)."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise UsageError(f"unknown option(s): {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        return cls(**{k: v for k, v in values.items() if v is not None})

    @classmethod
    def from_text(cls, values: dict[str, str]) -> "FilterSettings":
        """Settings from option names and text values (a Java map, a macro): each value is cast to
        its option's type; ``true``/``1`` are true for flags; a bad value is a UsageError."""

        def flag(text: str) -> bool:
            return text.lower() in ("true", "1")

        casts = {
            "w": float,
            "tile_size": int,
            "batch_size": int,
            "invert": flag,
            "augment": flag,
        }
        try:
            return cls.from_mapping({k: casts.get(k, str)(str(v)) for k, v in values.items()})
        except ValueError as exc:
            if isinstance(exc, UsageError):
                raise
            raise UsageError(f"bad option value ({exc})") from None

    def with_radius_pixels(self, pixels: float | None) -> "FilterSettings":
        """These settings with the nucleus radius fixed as ``pixels`` (None: ``off``, the image's own
        scale), for faces that resolve the radius once and filter piecewise."""
        from dataclasses import replace

        return replace(self, radius="off" if pixels is None else f"{pixels:.6g}")


def check_tile_size(tile_size: int) -> None:
    """A UsageError unless ``tile_size`` is 0 (never tile) or at least :data:`MIN_TILE`; an
    :class:`~nunet.errors.OptionWarning` under :data:`SLOW_TILE`."""
    if tile_size < 0 or 0 < tile_size < MIN_TILE:
        raise UsageError(f"--tile-size: must be 0 (never tile) or at least {MIN_TILE} px, got {tile_size}")
    if 0 < tile_size < SLOW_TILE:
        import warnings

        warnings.warn(
            f"--tile-size {tile_size}: tiles under {SLOW_TILE} px make a large plane slow (every layer visits "
            "every tile); the default tiles only planes that need it",
            OptionWarning,
            stacklevel=3,
        )


#: The option names, for the worker protocol and the in-process Fiji bridge.
SETTING_NAMES = tuple(f.name for f in fields(FilterSettings))


#: Length units a radius may be given in, in micrometres.
UNITS = {"nm": 1e-3, "um": 1.0, "µm": 1.0, "micron": 1.0, "mm": 1e3}


@dataclass(frozen=True)
class Radius:
    """The nucleus radius option: ``auto`` (estimate it), ``off`` (no resize), or a value in pixels
    or in a length unit (converted with the image's pixel size)."""

    value: float | None = None  # None: auto
    unit: str | None = None  # None: pixels
    off: bool = False

    @classmethod
    def parse(cls, text: "str | float | int | Radius | None") -> "Radius":
        """``auto`` (or None), ``off``, ``12``, ``12px``, ``3.5um`` / ``3.5 µm`` / ``0.8 mm``; else a UsageError."""
        if isinstance(text, Radius):
            return text
        if text is None or str(text).strip().lower() == "auto":
            return cls()
        if str(text).strip().lower() == "off":
            return cls(off=True)
        if isinstance(text, (int, float)) and not isinstance(text, bool):
            value, unit = float(text), "px"
        else:
            match = re.fullmatch(r"\s*([0-9.eE+-]+)\s*([a-zµ]*)\s*", str(text))
            try:
                value, unit = float(match.group(1)), match.group(2) or "px"
            except (AttributeError, ValueError):
                value, unit = float("nan"), ""
        if unit not in ("px", *UNITS) or not 0 < value < float("inf"):
            raise UsageError(
                f"--radius: '{text}' is not auto, off, a radius > 0 in pixels (12) or in a length unit "
                f"({', '.join(f'3.5{u}' for u in UNITS)})"
            )
        return cls(value, None if unit == "px" else unit)

    def pixels(self, pixel_width: float = 1.0, image_unit: str | None = None) -> float | None:
        """The radius in pixels (None for auto or off); a length needs the image's calibration."""
        if self.off or self.value is None:
            return None
        if self.unit is None:
            return self.value
        if image_unit is None or _micrometres(image_unit) is None:
            raise UsageError(
                f"--radius: {self.value:g} {self.unit} needs an image calibrated in a length unit "
                f"(this one's unit: {image_unit or 'none'}); give the radius in pixels"
            )
        return self.value * UNITS[self.unit] / (_micrometres(image_unit) * pixel_width)

    def __str__(self) -> str:
        if self.off:
            return "off"
        return "auto" if self.value is None else f"{self.value:g}{self.unit or 'px'}"


def _micrometres(unit: str) -> float | None:
    """Micrometres per ``unit`` (ImageJ writes micron(s), um or µm), or None for a unit that is no length."""
    return UNITS.get(unit.strip().lower().removesuffix("s"))


def parse_channel(value: "str | int | Sequence[int] | None") -> int | tuple[int, ...] | None:
    """The ``channel`` option: ``0`` or ``"0"`` (one channel: its axis is dropped), ``"0,2"`` or a
    sequence (those channels), None (all); negative indices count from the last. Else a UsageError."""
    if value is None or (isinstance(value, int) and not isinstance(value, bool)):
        return value
    if isinstance(value, str):
        try:
            values = tuple(int(v) for v in value.split(",") if v.strip())
        except ValueError:
            values = ()
        if not values:
            raise UsageError(f"--channel: '{value}' is not a channel index or a comma-separated list of them")
        return values[0] if len(values) == 1 and "," not in value else values
    values = tuple(value)
    if not values or not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        raise UsageError(f"--channel: give one or more channel indices, got {value!r}")
    return values
