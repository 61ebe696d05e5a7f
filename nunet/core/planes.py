"""The plane loop: a stack of grey planes through a loaded NU-Net model, as one straight line.

Each batch of planes goes: normalise (and invert) -> pad (or frame, for a model trained with a
frame) -> whole-plane or tiled forward pass, in one or eight orientations -> crop -> clip to
[0, 1] (:mod:`nunet.core.preprocess`). Where it runs and at which precision is
:mod:`nunet.core.runtime`'s concern; what ``precision="auto"`` picks is measured by
:mod:`nunet.core.autotune`. Names, files, radius and strength are resolved above, in :mod:`nunet.api`.

Tiling
------
Planes larger than ``AUTO_TILING``'s threshold are filtered in tiles with a seam-free result
equal to the whole-plane one (:mod:`nunet.core.tiling`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np

from nunet.core.autotune import DEFAULT_TUNER, default_batch_size
from nunet.core.preprocess import (
    FULL_SCALE,
    Frame,
    crop_plane,
    frame_plane,
    invert_normalised,
    normalise_plane,
    normalise_planes_torch,
    pad_plane,
    padded_shape,
    to_unit_range,
)
from nunet.core.runtime import autocast, num_threads, reuse_freed_memory
from nunet.core.runtime import progress as progress_bar
from nunet.errors import ModelError
from nunet.options import FilterSettings

if TYPE_CHECKING:
    import torch

    from nunet.core.modelfile import LoadedModel

#: When ``tile_size`` is None, planes with more pixels than this are tiled, with tiles of this side.
#: CPU: measured on 2 cores, 256-px tiles are as fast as the whole plane or faster from about
#: 1280x1280 on, in far less memory (benchmarks/bench_inference.py); at bf16 (native, whole planes
#: in :class:`nunet.core.bf16.Bf16Net`) a 2048x2048 plane takes 4.0 s whole against 7.4 s tiled,
#: at a 1.2 GB peak (fp32 at 1280x1280: 0.94 GB), so bf16 tiles from 2048x2048 on. GPU: tiles keep
#: activations in host files, so only planes whose whole-plane activations could crowd GPU memory
#: (about 0.5 kB per pixel) are tiled.
AUTO_TILING = {"cpu": (1280 * 1280, 256), "cpu-bf16": (2048 * 2048, 256), "gpu": (2048 * 2048, 1024)}
#: torch.quantile's input size limit (elements); larger batches are normalised with NumPy.
QUANTILE_LIMIT = 2**24


def run_planes(
    planes: np.ndarray, loaded: "LoadedModel", settings: FilterSettings, *, progress: bool = False
) -> np.ndarray:
    """Filter planes ``(P, H, W)`` with a loaded model; return float32 ``(P, H, W)`` in [0, 1].

    One straight line per batch of planes: normalise (and invert) -> pad or frame -> whole-plane or
    tiled forward pass in each orientation -> crop. ``settings`` were checked when they were built
    and resolved (:func:`nunet.api.resolve_settings`: ``device`` is a real device); the normaliser's
    percentiles and the frame come from the model's metadata unless the settings give percentiles.
    """
    import torch

    device, precision, invert = settings.device, settings.precision, settings.invert
    tile_size, batch_size = settings.tile_size, settings.batch_size
    percentiles = settings.percentiles or loaded.percentiles
    if device == "cpu":
        reuse_freed_memory()
    tuned = precision == "auto"
    if tuned:
        precision = DEFAULT_TUNER.precision(loaded, device)
    count, height, width = planes.shape
    if batch_size is None:
        batch_size = DEFAULT_TUNER.batch_size(loaded, device, precision) if tuned else default_batch_size(device)
    threads = DEFAULT_TUNER.thread_count(loaded, precision, batch_size) if tuned and device == "cpu" else None
    frame = loaded.frame
    ph, pw = padded_shape(height + 2 * frame.pad, width + 2 * frame.pad)
    measure_tiles = tuned and tile_size is None and device == "cpu"
    tiled, tile_size = tiling_plan(ph, pw, tile_size, device, precision)
    if tiled and measure_tiles:
        with num_threads(threads):
            tile_size = DEFAULT_TUNER.tile_side(loaded, precision)
    if tiled:
        batch_size = 1
    out = np.empty((count, height, width), dtype=np.float32)
    if tiled:
        from nunet.core.tiling import tiled_passes
    views = ORIENTATIONS if settings.augment else ORIENTATIONS[:1]
    network = loaded.module if tiled else loaded.network(precision)  # tiles: the file's module under autocast
    steps = (tiled_passes(loaded.module) if tiled else 1) * len(views)  # a tiled plane reports each of its passes
    with (
        progress_bar(progress, count * steps, "passes" if tiled or settings.augment else "planes") as advance,
        num_threads(threads),
        torch.inference_mode(),
        autocast(device, precision),
    ):
        for start in range(0, count, batch_size):
            stop = min(count, start + batch_size)
            x = prepare_batch(planes[start:stop], percentiles, invert, frame, device)
            y = _forward(network, x, views, tile_size if tiled else None, advance)
            out[start:stop] = crop_plane(y[:, 0], height, width, offset=frame.pad).cpu().numpy()
    if not np.isfinite(out).all():  # a model that passed the load-time probe but fails on these planes
        raise ModelError(f"{loaded.name}: the filtered image has NaN or infinite pixels; nothing is written")
    return out


def _forward(
    module: "torch.nn.Module",
    x: "torch.Tensor",
    views: Sequence[tuple[int, bool]],
    tile_size: int | None,
    advance: Callable[[float], None],
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
            y = _tiled(module, oriented, tile_size, on_tile=advance)
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


def prepare_batch(
    planes: np.ndarray, percentiles: tuple[float, float], invert: bool, frame: Frame, device: str
) -> "torch.Tensor":
    """Raw ``(N, H, W)`` planes as the network's input ``(N, 1, H', W')`` on ``device``: normalised,
    inverted if asked, then reflect-padded, or framed (:mod:`nunet.core.preprocess`).

    On a CUDA device the raw planes are uploaded and prepared there (:func:`prepare_batch_torch`),
    so the CPU only copies; elsewhere, and for planes under 8 px, batches too large for
    ``torch.quantile`` or float64 data, with NumPy on the CPU.
    """
    import torch

    height, width = planes.shape[1:]
    single = planes.dtype != np.float64  # float64 is normalised in float64 (its range may exceed float32's)
    if device.startswith("cuda") and min(height, width) >= 8 and planes.size <= QUANTILE_LIMIT and single:
        return prepare_batch_torch(planes, percentiles, invert, frame, device)
    normalised = (normalise_plane(p, percentiles) for p in planes)
    prepared = [
        frame_plane(p, frame) if frame.pad else pad_plane(p)
        for p in (invert_normalised(p) if invert else p for p in normalised)
    ]
    batch = prepared[0][None] if len(prepared) == 1 else np.stack(prepared)  # no copy of one plane
    return torch.from_numpy(batch[:, None]).to(device)


def prepare_batch_torch(
    planes: np.ndarray, percentiles: tuple[float, float], invert: bool, frame: Frame, device: str
) -> "torch.Tensor":
    """:func:`prepare_batch`'s NumPy steps (normalise, invert, reflect-pad or frame) done by torch on ``device``."""
    import torch

    height, width = planes.shape[1:]
    x = torch.from_numpy(np.ascontiguousarray(planes, dtype=np.float32)).to(device)
    x = normalise_planes_torch(x, percentiles)
    if invert:
        torch.sub(FULL_SCALE, x, out=x)
    pad = frame.pad
    ph, pw = padded_shape(height + 2 * pad, width + 2 * pad)
    if pad:
        from nunet.core.model import frame_tensor

        return frame_tensor(x[:, None], [pad, pw - width - pad, pad, ph - height - pad], frame.fill)
    return torch.nn.functional.pad(x[:, None], (0, pw - width, 0, ph - height), mode="reflect")


def tiling_plan(
    height: int, width: int, tile_size: int | None, device: str, precision: str = "fp32"
) -> tuple[bool, int]:
    """Whether a padded plane is tiled, and the tile side (see ``AUTO_TILING``)."""
    if tile_size is None:
        kind = ("cpu-bf16" if precision == "bf16" else "cpu") if device == "cpu" else "gpu"
        pixels, side = AUTO_TILING[kind]
        return height * width > pixels, side
    return tile_size > 0 and max(height, width) > tile_size, tile_size


def _tiled(
    module: "torch.nn.Module", x: "torch.Tensor", tile_size: int, on_tile: "Callable[[float], None] | None" = None
) -> "torch.Tensor":
    from nunet.core.tiling import tiled_forward

    try:
        return tiled_forward(module, x, tile_size, on_tile)
    except AttributeError as exc:
        raise ModelError(f"tiling needs a model with NU-Net's layer names ({exc})") from exc
