"""Filtering images with a NU-Net model: axes, batching, direct or tiled passes.

Each plane goes one way: normalise (and invert) -> pad (or frame, for a model trained with a
frame) -> whole-plane or tiled forward pass -> crop -> clip to [0, 1] (:mod:`nunet.preprocess`).
Where it runs and at which precision is :mod:`nunet.runtime`'s concern; what
``precision="auto"`` picks is measured by :mod:`nunet.autotune`.

Precision
---------
``fp32`` is the reference. ``bf16`` (CPU with native bf16, or GPU) and ``fp16`` (GPU) run the
convolutions under autocast; NU-Net's InstanceNorm layers take their statistics in fp32 whatever
the autocast (:class:`nunet.model.InstanceNorm`). ``auto`` keeps the fastest precision within
1e-2 of fp32 among those the hardware runs natively (see :mod:`nunet.autotune`).

Test-time augmentation
----------------------
``augment=True`` filters each plane in its eight orientations (four rotations by 90 degrees, each
also mirrored), turns the outputs back and averages them (like Cellpose's ``augment``): a
steadier output that follows a rotated or mirrored input exactly, for eight times the compute.

Object size
-----------
Models are trained on nuclei of one radius (their metadata's ``radius``, 7 px for the shipped
ones). With ``radius`` (default ``auto``: estimated once per image, :mod:`nunet.size`), the
planes of an image whose nuclei are larger are shrunk so they have that radius, filtered, and the
output resized back to the exact input shape; the output's nuclei keep their input size. Smaller
nuclei are filtered at their own scale (the models were trained on them too); ``radius="off"``
filters every image at its own scale.

Tiling
------
Planes larger than ``AUTO_TILING``'s threshold are filtered in tiles with a seam-free result
equal to the whole-plane one (:mod:`nunet.tiling`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np

from nunet.autotune import DEFAULT_TUNER, default_batch_size
from nunet.errors import ImageValueError, ModelError, OptionWarning
from nunet.io import Calibration, Image, check_axes, guess_axes, with_data
from nunet.preprocess import (
    FULL_SCALE,
    Frame,
    crop_plane,
    frame_plane,
    invert_normalised,
    normalise_plane,
    normalise_planes_torch,
    pad_plane,
    padded_shape,
    select_channels,
    to_grey,
    to_unit_range,
)
from nunet.registry import DEFAULT_MODEL, load_model
from nunet.runtime import autocast, num_threads, resolve_device, reuse_freed_memory
from nunet.runtime import progress as progress_bar
from nunet.settings import PRECISIONS, check_tile_size
from nunet.size import TRAINED_RADIUS, Radius, image_radius, resize_planes, zoom_factor, zoomed_shape

if TYPE_CHECKING:
    import torch

    from nunet.modelfile import LoadedModel

#: When ``tile_size`` is None, planes with more pixels than this are tiled, with tiles of this side.
#: CPU: measured on 2 cores, 256-px tiles are as fast as the whole plane or faster from about
#: 1280x1280 on, in far less memory (benchmarks/bench_inference.py). GPU: tiles keep activations
#: in host files, so only planes whose whole-plane activations could crowd GPU memory (about
#: 0.5 kB per pixel) are tiled.
AUTO_TILING = {"cpu": (1280 * 1280, 256), "gpu": (2048 * 2048, 1024)}
#: torch.quantile's input size limit (elements); larger batches are normalised with NumPy.
QUANTILE_LIMIT = 2**24


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
    planes, lead_shape, axes, order = _planes_of(image, channel)
    out = filter_planes(
        planes,
        model,
        w=w,
        radius=radius,
        calibration=image.calibration,
        tile_size=tile_size,
        batch_size=batch_size,
        device=device,
        precision=precision,
        percentiles=percentiles,
        invert=invert,
        augment=augment,
        progress=progress,
    )
    out = np.transpose(out.reshape(lead_shape + out.shape[-2:]), np.argsort(order))
    return with_data(image, out, axes)


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


def nucleus_radius(
    image: Image,
    radius: "str | float | Radius | None" = "auto",
    *,
    channel: int | Sequence[int] | None = None,
    invert: bool = False,
) -> float | None:
    """The nucleus radius (px) that :func:`filter_image` uses for ``image`` with these options: given,
    converted from a length with the image's calibration, or estimated (``auto``) from its planes;
    None for ``off`` or where no blob stands out (then the image is filtered at its own scale)."""
    calibration = image.calibration
    return image_radius(
        radius,
        lambda: _planes_of(image, channel)[0],
        invert,
        calibration.pixel_width,
        calibration.unit,
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
        Input percentiles mapped to 0 and 255 (see :mod:`nunet.preprocess`). Default: those the
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
    if isinstance(image, Image):
        img = image if axes is None else with_data(image, image.data, axes)
    else:
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
                stacklevel=2,
            )
    return filter_image(
        img,
        model,
        w=w,
        channel=channel,
        tile_size=tile_size,
        batch_size=batch_size,
        device=device,
        precision=precision,
        percentiles=percentiles,
        invert=invert,
        augment=augment,
        radius=radius,
        progress=progress,
    ).data


def filter_planes(
    planes: np.ndarray,
    model: "str | os.PathLike | LoadedModel" = DEFAULT_MODEL,
    *,
    w: float | None = None,
    radius: "str | float | Radius | None" = "auto",
    calibration: "Calibration | None" = None,
    **options,
) -> np.ndarray:
    """Filter a stack of planes ``(P, H, W)``; return float32 ``(P, H, W)`` in [0, 1].

    ``radius``: the nuclei's radius in pixels, a length (converted with ``calibration``), ``auto``
    (estimated once from these planes) or ``off``; the planes are resized to the model's radius and
    the output back (module docstring).
    With ``w``, the output blends the two members of ``model``'s family whose w brackets the
    requested one (see :func:`nunet.registry.family_of`, :func:`nunet.registry.blend_weights`).
    Other options as in :func:`enhance`.
    """
    calibration = calibration or Calibration()
    pixels = image_radius(radius, planes, options.get("invert", False), calibration.pixel_width, calibration.unit)
    shape = planes.shape[1:]
    factor = zoom_factor(pixels, model_radius(model))
    if factor != 1.0:
        planes = resize_planes(planes, zoomed_shape(shape, factor))
    if w is None:
        out = _filter_planes(planes, model, **options)
    else:
        from nunet.modelfile import LoadedModel
        from nunet.registry import blend_weights, family_of

        family = family_of(model.path if isinstance(model, LoadedModel) else model)
        out = np.zeros(planes.shape, dtype=np.float32)
        for name, weight in blend_weights(float(w), family):
            out += np.float32(weight) * _filter_planes(planes, name, **options)
    return np.clip(resize_planes(out, shape), 0.0, 1.0) if factor != 1.0 else out


def model_radius(model: "str | os.PathLike | LoadedModel") -> float:
    """The nucleus radius (px) a model was trained for: its metadata's ``radius``, else
    :data:`nunet.size.TRAINED_RADIUS`."""
    from nunet.modelfile import LoadedModel, read_metadata
    from nunet.registry import resolve_model

    metadata = model.metadata if isinstance(model, LoadedModel) else read_metadata(resolve_model(model))
    return float(metadata.get("radius", TRAINED_RADIUS))


def _filter_planes(
    planes: np.ndarray,
    model: "str | os.PathLike | LoadedModel",
    *,
    tile_size: int | None = None,
    batch_size: int | None = None,
    device: str = "auto",
    precision: str = "fp32",
    percentiles: tuple[float, float] | None = None,
    invert: bool = False,
    augment: bool = False,
    progress: bool = False,
) -> np.ndarray:
    import torch

    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got '{precision}'")
    device = resolve_device(device)
    if precision == "fp16" and device == "cpu":
        raise ValueError("precision 'fp16' needs a GPU; use 'bf16' or 'fp32' on the CPU")
    loaded = load_model(model, device)
    percentiles = percentiles or loaded.percentiles
    if device == "cpu":
        reuse_freed_memory()
    tuned = precision == "auto"
    if tuned:
        precision = DEFAULT_TUNER.precision(loaded, device)
    count, height, width = planes.shape
    if batch_size is None:
        batch_size = DEFAULT_TUNER.batch_size(loaded, device, precision) if tuned else default_batch_size(device)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    threads = DEFAULT_TUNER.thread_count(loaded, precision, batch_size) if tuned and device == "cpu" else None
    frame = loaded.frame
    ph, pw = padded_shape(height + 2 * frame.pad, width + 2 * frame.pad)
    measure_tiles = tuned and tile_size is None and device == "cpu"
    tiled, tile_size = _tiling(ph, pw, tile_size, device)
    if tiled and measure_tiles:
        with num_threads(threads):
            tile_size = DEFAULT_TUNER.tile_side(loaded, precision)
    if tiled:
        batch_size = 1
    out = np.empty((count, height, width), dtype=np.float32)
    if tiled:
        from nunet.tiling import TILED_PASSES
    views = ORIENTATIONS if augment else ORIENTATIONS[:1]
    steps = (TILED_PASSES if tiled else 1) * len(views)  # a tiled plane reports each of its passes
    with (
        progress_bar(progress, count * steps, "passes" if tiled or augment else "planes") as advance,
        num_threads(threads),
        torch.inference_mode(),
        autocast(device, precision),
    ):
        for start in range(0, count, batch_size):
            stop = min(count, start + batch_size)
            x = _prepare(planes[start:stop], percentiles, invert, frame, device)
            y = _forward(loaded.module, x, views, tile_size if tiled else None, advance)
            out[start:stop] = crop_plane(y[:, 0], height, width, offset=frame.pad).cpu().numpy()
    if not np.isfinite(out).all():  # a model that passed the load-time probe but fails on these planes
        raise ModelError(f"{loaded.name}: the filtered image has NaN or infinite pixels; nothing is written")
    return out


def _forward(
    module: "torch.nn.Module",
    x: "torch.Tensor",
    views: Sequence[tuple[int, bool]],
    tile_size: int | None,
    advance: Callable[[int], None],
) -> "torch.Tensor":
    """The network's output for ``x`` in [0, 1]: the mean over ``views`` (see :data:`ORIENTATIONS`)
    of whole-plane passes, or tiled ones when ``tile_size`` is given."""
    total = None
    for turns, mirror in views:
        oriented = _orient(x, turns, mirror)
        if tile_size is None:
            y = module(oriented)
            advance(len(x))
        else:
            y = _tiled(module, oriented, tile_size, on_pass=lambda: advance(1))
        y = _unorient(to_unit_range(y), turns, mirror)
        total = y if total is None else total.add_(y)
    return total.div_(len(views)) if len(views) > 1 else total


#: The eight orientations of a plane that ``augment`` averages over: (quarter turns, mirrored).
ORIENTATIONS = tuple((turns, mirror) for mirror in (False, True) for turns in range(4))


def _orient(x: "torch.Tensor", turns: int, mirror: bool) -> "torch.Tensor":
    """``x`` (N, 1, H, W) mirrored left-right (when ``mirror``), then turned ``turns`` quarter turns."""
    import torch

    x = x.flip(-1) if mirror else x
    return torch.rot90(x, turns, dims=(-2, -1)) if turns else x


def _unorient(y: "torch.Tensor", turns: int, mirror: bool) -> "torch.Tensor":
    """The inverse of :func:`_orient`: an output of the oriented plane, back in the plane's orientation."""
    import torch

    y = torch.rot90(y, -turns, dims=(-2, -1)) if turns else y
    return y.flip(-1) if mirror else y


def _prepare(
    planes: np.ndarray, percentiles: tuple[float, float], invert: bool, frame: Frame, device: str
) -> "torch.Tensor":
    """Raw ``(N, H, W)`` planes as the network's input ``(N, 1, H', W')`` on ``device``: normalised,
    inverted if asked, then reflect-padded, or framed (:mod:`nunet.preprocess`).

    On a CUDA device the raw planes are uploaded and prepared there (:func:`_prepare_torch`),
    so the CPU only copies; elsewhere, and for planes under 8 px, batches too large for
    ``torch.quantile`` or float64 data, with NumPy on the CPU.
    """
    import torch

    height, width = planes.shape[1:]
    single = planes.dtype != np.float64  # float64 is normalised in float64 (its range may exceed float32's)
    if device.startswith("cuda") and min(height, width) >= 8 and planes.size <= QUANTILE_LIMIT and single:
        return _prepare_torch(planes, percentiles, invert, frame, device)
    normalised = (normalise_plane(p, percentiles) for p in planes)
    prepared = [
        frame_plane(p, frame) if frame.pad else pad_plane(p)
        for p in (invert_normalised(p) if invert else p for p in normalised)
    ]
    batch = prepared[0][None] if len(prepared) == 1 else np.stack(prepared)  # no copy of one plane
    return torch.from_numpy(batch[:, None]).to(device)


def _prepare_torch(
    planes: np.ndarray, percentiles: tuple[float, float], invert: bool, frame: Frame, device: str
) -> "torch.Tensor":
    """:func:`_prepare`'s NumPy steps (normalise, invert, reflect-pad or frame) done by torch on ``device``."""
    import torch

    height, width = planes.shape[1:]
    x = torch.from_numpy(np.ascontiguousarray(planes, dtype=np.float32)).to(device)
    x = normalise_planes_torch(x, percentiles)
    if invert:
        torch.sub(FULL_SCALE, x, out=x)
    pad = frame.pad
    ph, pw = padded_shape(height + 2 * pad, width + 2 * pad)
    if pad:
        from nunet.model import frame_tensor

        return frame_tensor(x[:, None], [pad, pw - width - pad, pad, ph - height - pad], frame.fill)
    return torch.nn.functional.pad(x[:, None], (0, pw - width, 0, ph - height), mode="reflect")


def _tiling(height: int, width: int, tile_size: int | None, device: str) -> tuple[bool, int]:
    """Whether a padded plane is tiled, and the tile side (see ``AUTO_TILING``)."""
    if tile_size is None:
        pixels, side = AUTO_TILING["cpu" if device == "cpu" else "gpu"]
        return height * width > pixels, side
    check_tile_size(tile_size)
    return tile_size > 0 and max(height, width) > tile_size, tile_size


def _tiled(
    module: "torch.nn.Module", x: "torch.Tensor", tile_size: int, on_pass: "Callable[[], None] | None" = None
) -> "torch.Tensor":
    from nunet.tiling import tiled_forward

    try:
        return tiled_forward(module, x, tile_size, on_pass)
    except AttributeError as exc:
        raise ModelError(f"tiling needs a model with NU-Net's layer names ({exc})") from exc
