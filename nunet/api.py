"""The filter's faces for arrays and images: :func:`enhance`, :func:`filter_image`, :func:`filter_planes`.

Here a model name, a strength ``w`` and a nucleus ``radius`` become what the plane loop needs
(:func:`nunet.core.planes.run_planes`): the model file loaded from the registry, the family
members and their blend weights, and the zoom that brings the nuclei to the model's radius.

Precision
---------
``fp32`` is the reference. ``bf16`` on a CPU runs the network natively in bf16 with channels-last
activations (:class:`nunet.core.bf16.Bf16Net`; 3.9x fp32 on an AMX CPU); on a GPU, and for tiled
planes, ``bf16`` and ``fp16`` (GPU) run the convolutions under autocast. NU-Net's InstanceNorm
layers take their statistics in fp32 either way. ``auto`` keeps the fastest precision within
1e-2 of fp32 among those the hardware runs natively (see :mod:`nunet.core.autotune`).

Test-time augmentation
----------------------
``augment=True`` filters each plane in its eight orientations (four rotations by 90 degrees, each
also mirrored), turns the outputs back and averages them (like Cellpose's ``augment``): a
steadier output that follows a rotated or mirrored input exactly, for eight times the compute.

Object size
-----------
Models are trained on nuclei of one radius (their metadata's ``radius``, 7 px for the shipped
ones). With ``radius`` (default ``auto``: estimated once per image, :mod:`nunet.core.size`), the
planes of an image whose nuclei are larger are shrunk so they have that radius, filtered, and the
output resized back to the exact input shape; the output's nuclei keep their input size. Smaller
nuclei are filtered at their own scale (the models were trained on them too); ``radius="off"``
filters every image at its own scale.

Tiling
------
Planes larger than :data:`nunet.core.planes.AUTO_TILING`'s threshold are filtered in tiles with a
seam-free result equal to the whole-plane one (:mod:`nunet.core.tiling`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from nunet.core.planes import run_planes
from nunet.core.preprocess import select_channels, to_grey
from nunet.core.runtime import resolve_device
from nunet.core.size import TRAINED_RADIUS, Look, Zoom, image_radius, zoom_factor
from nunet.errors import ImageValueError, OptionWarning, UsageError
from nunet.io import Calibration, Image, check_axes, guess_axes, with_data
from nunet.options import DEFAULT_MODEL, SETTING_NAMES, FilterSettings, Radius
from nunet.registry import blend_weights, family_of, load_model

if TYPE_CHECKING:
    from nunet.core.modelfile import LoadedModel


def enhance(
    image: "np.ndarray | Image",
    model: "str | os.PathLike | LoadedModel" = DEFAULT_MODEL,
    *,
    w: float | None = None,
    axes: str | None = None,
    channel: int | Sequence[int] | None = None,
    tile_size: int | None = None,
    batch_size: int | None = None,
    device: str = "auto",
    precision: str = "fp32",
    percentiles: tuple[float, float] | None = None,
    invert: bool = False,
    augment: bool = False,
    radius: "str | float | Radius | None" = "auto",
    progress: bool = False,
) -> np.ndarray:
    """Filter an image with NU-Net.

    Parameters
    ----------
    image : numpy.ndarray or Image
        Any integer or float dtype. An :class:`~nunet.io.Image` brings its own axes.
    model : str, path-like or LoadedModel
        Registered name, TorchScript file, or a model from :func:`nunet.load_model`.
    w : float, optional
        Filtering strength within ``model``'s family: blends the outputs of the two members
        whose w brackets it (e.g. ``model="nunet-w8", w=7.5`` -> half nunet-w7, half
        nunet-w8). A w outside the family's range, or a model in no family, is an error.
    axes : str, optional
        ImageJ axes of ``image`` (letters of ``TZCYXS``), e.g. ``"TZCYX"``. Guessed when
        omitted: ``YX``, ``YXS`` (trailing 3 or 4), ``ZYX``, ``TZYX``, ``TZCYX``.
    channel : int or sequence of int, optional
        Channels to filter (default: every channel, independently). A single int drops
        the ``C`` axis from the output.
    tile_size : int, optional
        Tile planes larger than this (seam-free, output equal to the whole-plane one).
        Default: on a CPU, tile planes over 1280x1280 pixels with 256-px tiles; on a GPU,
        planes over 2048x2048 with 1024-px tiles. 0 never tiles.
    batch_size : int, optional
        Planes per forward pass. Default: measured when ``precision="auto"``, else 1 on a CPU
        and 8 on a GPU.
    device : str
        ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps``.
    precision : str
        ``fp32``; ``bf16`` (autocast; CPU or GPU); ``fp16`` (autocast, GPU only); ``auto``
        (see module docstring).
    percentiles : (float, float), optional
        Input percentiles mapped to 0 and 255 (see :mod:`nunet.core.preprocess`). Default: those the
        model was trained with, from its metadata (0.1 and 99.9 for every shipped model).
    invert : bool
        The image has dark nuclei on a bright background: flip it after normalisation.
    augment : bool
        Test-time augmentation: average the outputs of the plane's eight rotations and
        mirror images (8x the compute; see the module docstring).
    radius : str or float
        The typical nucleus radius: ``"auto"`` (estimated once for the whole image), a number
        of pixels, a length such as ``"3.5um"`` (converted with an :class:`~nunet.io.Image`'s
        calibration), or ``"off"``. The image is filtered at the scale where its nuclei have the
        radius the model was trained for, and the output resized back (see module docstring).
    progress : bool
        Show a progress bar over planes.

    Returns
    -------
    numpy.ndarray
        float32 in [0, 1], with exactly the input's spatial (Y, X) shape and its other
        axes, minus ``S`` and minus ``C`` for a single-int ``channel``.
    """
    settings = FilterSettings(**{k: v for k, v in locals().items() if k in SETTING_NAMES})  # the options above
    if isinstance(image, Image):
        img = image if axes is None else with_data(image, image.data, axes)
    else:
        img = _array_image(image, axes)
    return filter_image_with(img, resolve_settings(settings), progress=progress).data


def _array_image(image: np.ndarray, axes: str | None) -> Image:
    """A bare array as an :class:`Image` with the given axes, or guessed ones (saying so for RGB)."""
    data = np.asarray(image)
    if np.iscomplexobj(data) or not (np.issubdtype(data.dtype, np.number) or data.dtype == bool):
        raise TypeError(f"unsupported image dtype {data.dtype}")
    img = Image(data, check_axes(axes, data.shape, "image") if axes else guess_axes(data.shape))
    if axes is None and img.axes.endswith("S") and data.ndim == 3:  # (Y, X, 3|4): RGB, or 3-4 planes?
        import warnings

        warnings.warn(
            f"an array of shape {data.shape} is read as one RGB(A) image (axes 'YXS', made grey); "
            f"to filter its {data.shape[-1]} planes as channels, pass axes='YXC'",
            OptionWarning,
            stacklevel=3,
        )
    return img


def filter_image(
    image: Image,
    model: "str | os.PathLike | LoadedModel" = DEFAULT_MODEL,
    *,
    w: float | None = None,
    channel: int | Sequence[int] | None = None,
    tile_size: int | None = None,
    batch_size: int | None = None,
    device: str = "auto",
    precision: str = "fp32",
    percentiles: tuple[float, float] | None = None,
    invert: bool = False,
    augment: bool = False,
    radius: "str | float | Radius | None" = "auto",
    progress: bool = False,
) -> Image:
    """Filter every YX plane of an :class:`~nunet.io.Image`; keep its calibration.

    Returns
    -------
    Image
        float32 data in [0, 1]; axes as the input's, without ``S`` (RGB becomes grey) and
        without ``C`` when ``channel`` is a single int.

    See :func:`enhance` for the parameters.
    """
    settings = FilterSettings(**{k: v for k, v in locals().items() if k in SETTING_NAMES})  # the options above
    return filter_image_with(image, resolve_settings(settings), progress=progress)


def filter_image_with(image: Image, settings: FilterSettings, *, progress: bool = False) -> Image:
    """:func:`filter_image` with settings already built and resolved (:func:`resolve_settings`), for
    faces that build them once (the batch runner)."""
    return filter_image_sized(image, settings, progress=progress)[0]


def filter_image_sized(image: Image, settings: FilterSettings, *, progress: bool = False) -> tuple[Image, float | None]:
    """:func:`filter_image_with`, and the nucleus radius (px) it filtered for (None: at the image's own
    scale), for the faces that report it."""
    planes, lead_shape, axes, order = _planes_of(image, settings.channel)
    out, radius = filter_planes_sized(planes, settings, image.calibration, progress=progress)
    out = np.transpose(out.reshape(lead_shape + out.shape[-2:]), np.argsort(order))
    return with_data(image, out, axes), radius


def _planes_of(image: Image, channel: int | Sequence[int] | None) -> tuple[np.ndarray, tuple[int, ...], str, list[int]]:
    """An image's grey planes of ``channel`` as ``(P, Y, X)``, checked finite; with the shape of the
    axes before YX, the axes (after grey and channel selection) and the transposition that moved
    YX last."""
    axes = check_axes(image.axes, image.data.shape)
    data, axes = to_grey(image.data, axes)
    data, axes = select_channels(data, axes, channel)
    other = [i for i, a in enumerate(axes) if a not in "YX"]
    order = other + [axes.index("Y"), axes.index("X")]
    moved = np.transpose(data, order)
    planes = moved.reshape((-1,) + moved.shape[-2:])
    _check_finite(planes, "".join(axes[i] for i in other), moved.shape[:-2])
    return planes, moved.shape[:-2], axes, order


def nucleus_radius(image: Image, settings: FilterSettings) -> float | None:
    """The nucleus radius (px) that :func:`filter_image_with` uses for ``image`` with resolved
    ``settings``: given, converted from a length with the image's calibration, or estimated
    (``auto``) from its planes with the model's second look; None for ``off`` or where no blob stands
    out (then the image is filtered at its own scale)."""
    calibration = image.calibration
    return image_radius(
        settings.radius,
        lambda: _planes_of(image, settings.channel)[0],
        settings.invert,
        calibration.pixel_width,
        calibration.unit,
        radius_look(settings),
    )


def radius_look(settings: FilterSettings, *, progress: bool = False) -> Look | None:
    """The model's side of the radius estimate's second look (:func:`nunet.core.size.estimate_radius`):
    planes filtered with ``settings``' model (without a ``w`` blend) for nuclei of a given radius, the
    output at the planes' shape; None where the model does not draw nuclei over their masks
    (:func:`draws_masks`)."""
    from dataclasses import replace

    if not draws_masks(settings.model):
        return None
    named, trained = replace(settings, w=None), model_radius(settings.model)

    def look(planes: np.ndarray, radius: float) -> np.ndarray:
        return _filter_zoomed(planes, named, zoom_factor(radius, trained), progress=progress)

    return look


def draws_masks(model: "str | os.PathLike | LoadedModel") -> bool:
    """Whether a model draws each nucleus at 0.5 or more over its whole mask, so that its output's area
    measures the nuclei (:func:`nunet.core.size.output_radius`): trained on cone or dome targets at
    full strength, as the strongest members of the shipped families (their metadata's training
    configuration says so)."""
    config = _metadata(model).get("training", {}).get("config", {})
    return (
        config.get("supervised_target") in ("cone", "dome")
        and config.get("supervised_weight", 0.0) > 0
        and config.get("supervised_strength", 1.0) == 1.0
    )


def _check_finite(planes: np.ndarray, lead_axes: str, lead_shape: tuple[int, ...]) -> None:
    """Refuse NaN or infinite pixels before any compute, naming the first bad plane by its axes."""
    if np.issubdtype(planes.dtype, np.integer) or planes.dtype == bool:
        return
    bad = np.flatnonzero(~np.isfinite(planes).all(axis=(1, 2)))
    if len(bad):
        where = ", ".join(f"{a}={i}" for a, i in zip(lead_axes, np.unravel_index(bad[0], lead_shape))) or "the plane"
        more = f" (and {len(bad) - 1} more plane(s))" if len(bad) > 1 else ""
        raise ImageValueError(f"{where}{more}: contains NaN or infinite values")


def filter_planes(
    planes: np.ndarray,
    model: "str | os.PathLike | LoadedModel" = DEFAULT_MODEL,
    *,
    w: float | None = None,
    radius: "str | float | Radius | None" = "auto",
    calibration: "Calibration | None" = None,
    progress: bool = False,
    **options,
) -> np.ndarray:
    """Filter a stack of planes ``(P, H, W)``; return float32 ``(P, H, W)`` in [0, 1].

    ``radius``: the nuclei's radius in pixels, a length (converted with ``calibration``), ``auto``
    (estimated once from these planes) or ``off``; the planes are resized to the model's radius and
    the output back (module docstring).
    With ``w``, the output blends the two members of ``model``'s family whose w brackets the
    requested one (see :func:`nunet.registry.family_of`, :func:`nunet.registry.blend_weights`).
    Other options (``tile_size``, ``device``...) as in :func:`enhance`.
    """
    settings = resolve_settings(FilterSettings(model=model, w=w, radius=radius, **options))
    return filter_planes_with(planes, settings, calibration, progress=progress)


def filter_planes_with(
    planes: np.ndarray, settings: FilterSettings, calibration: "Calibration | None" = None, *, progress: bool = False
) -> np.ndarray:
    """:func:`filter_planes` with settings already built and resolved."""
    return filter_planes_sized(planes, settings, calibration, progress=progress)[0]


def filter_planes_sized(
    planes: np.ndarray, settings: FilterSettings, calibration: "Calibration | None" = None, *, progress: bool = False
) -> tuple[np.ndarray, float | None]:
    """:func:`filter_planes_with`, and the nucleus radius (px) it filtered for. With ``auto``, the
    estimate's second look filters the sampled planes at the first estimate; where they are all the
    planes and the estimate keeps the zoom, that output is the result (no second pass)."""
    calibration = calibration or Calibration()
    trained = model_radius(settings.model)
    reader = radius_look(settings, progress=progress)
    looked: dict[float, np.ndarray] = {}  # zoom factor -> every plane filtered at it by the second look

    def look(sample: np.ndarray, radius: float) -> np.ndarray:
        out = reader(sample, radius)
        if len(sample) == len(planes) and settings.w is None:  # then it is this filter's output at that zoom
            looked[zoom_factor(radius, trained)] = out
        return out

    second = look if reader is not None else None
    pixels = image_radius(settings.radius, planes, settings.invert, calibration.pixel_width, calibration.unit, second)
    factor = zoom_factor(pixels, trained)
    if factor in looked:
        return looked[factor], pixels
    return _filter_zoomed(planes, settings, factor, progress=progress), pixels


def _filter_zoomed(
    planes: np.ndarray, settings: FilterSettings, factor: float, *, progress: bool = False
) -> np.ndarray:
    """Planes filtered where they are zoomed by ``factor`` (the radius zoom), the output at their shape:
    one model's plane loop, or the blend of two members of its family."""
    zoom = Zoom(planes.shape[1:], factor)
    planes = zoom.before(planes)
    if settings.w is None:
        out = run_planes(planes, load_model(settings.model, settings.device), settings, progress=progress)
    else:
        out = np.zeros(planes.shape, dtype=np.float32)
        for name, weight in blend_weights(float(settings.w), family_of(_model_file(settings.model))):
            member = load_model(name, settings.device)
            out += np.float32(weight) * run_planes(planes, member, settings, progress=progress)
    return zoom.after(out)


def _model_file(model: "str | os.PathLike | LoadedModel") -> "str | os.PathLike":
    from nunet.core.modelfile import LoadedModel

    return model.path if isinstance(model, LoadedModel) else model


def model_radius(model: "str | os.PathLike | LoadedModel") -> float:
    """The nucleus radius (px) a model was trained for: its metadata's ``radius``, else
    :data:`nunet.core.size.TRAINED_RADIUS`."""
    return float(_metadata(model).get("radius", TRAINED_RADIUS))


def _metadata(model: "str | os.PathLike | LoadedModel") -> dict:
    from nunet.core.modelfile import LoadedModel, read_metadata
    from nunet.registry.models import resolve_model

    return model.metadata if isinstance(model, LoadedModel) else read_metadata(resolve_model(model))


def resolve_settings(settings: FilterSettings) -> FilterSettings:
    """``settings`` with the device resolved and checked against the hardware, and a strength
    checked against the model's family: the checks that need the machine or the registry, done once
    by every face before any compute (the values themselves were checked by :class:`FilterSettings`).

    Raises
    ------
    UsageError
        Naming the option: an unknown or absent device, fp16 on a CPU, a w outside the family.
    """
    from dataclasses import replace

    from nunet.errors import ModelError

    try:
        device = resolve_device(settings.device)
    except ModelError as exc:
        raise UsageError(f"--device: {exc}") from None
    if settings.w is not None:
        try:
            blend_weights(settings.w, family_of(_model_file(settings.model)))
        except ModelError as exc:
            raise UsageError(f"--w: {exc}") from None
    if settings.precision == "fp16" and device == "cpu":
        raise UsageError("--precision: 'fp16' needs a GPU; use 'bf16', 'auto' or 'fp32' on the CPU")
    if settings.precision == "bf16" and device == "cpu":
        import warnings

        from nunet.core.runtime import cpu_info

        if not cpu_info().native_bf16:
            warnings.warn(
                "--precision bf16: this CPU has no native bf16 (AVX512-BF16 or AMX); it is emulated and "
                "about 14x slower than fp32 here. 'auto' picks the fastest precision.",
                OptionWarning,
                stacklevel=3,
            )
    return replace(settings, device=device)
