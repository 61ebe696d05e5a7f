"""Filtering images with a NU-Net model: axes, normalisation, padding, batching, tiling.

Normalisation
-------------
Each YX plane is mapped linearly so that its 0.1 and 99.9 percentiles become 0 and 255
(the range the network was trained on); values outside are clipped. Because the first
convolution is followed by InstanceNorm, the network barely depends on the input's gain
and offset: the percentiles only decide which rare outliers (hot pixels) are clipped.
A constant plane is mapped to 0. The output is clipped to 0..255 and divided by 255,
giving float32 in [0, 1]. NU-Net enhances bright objects on a dark background; with
``invert`` the normalised plane is flipped (255 - x) first, for dark nuclei on a bright
background (THG, bright-field), as the paper did for its dark-blob training sets.

Geometry
--------
Each plane is reflect-padded at its bottom and right to a multiple of 4 (at least 8 px)
and the output cropped back, so the output has exactly the input's spatial shape. RGB
input (an ``S`` axis) becomes grey with ITU-R 601 luma weights (0.299, 0.587, 0.114);
an alpha sample is dropped.

Precision
---------
``fp32`` is the reference. ``bf16`` (CPU with native bf16, or GPU) and ``fp16`` (GPU) run the
convolutions under autocast; NU-Net's InstanceNorm layers take their statistics in fp32 whatever
the autocast (:class:`nunet.model.InstanceNorm`). ``auto`` measures, once per model and device in
a process, fp32 and every candidate on a synthetic nuclei plane, and keeps the fastest whose
[0, 1] output differs from fp32 by at most ``AUTO_TOLERANCE`` (max abs). Unless a batch size is
given, it then times the plane batch sizes of ``BATCH_CANDIDATES`` at that precision and keeps
the smallest within 5% of the best time per plane (:func:`smallest_within`). On a CPU it also
times torch's thread count and half of it, keeps the smaller within 5% (fewer threads leave
cores to the reader and writer threads of a batch), and runs with it for the call only (the
process's setting is restored afterwards). When a CPU plane is large enough to be tiled
(``AUTO_TILING``) and no tile size is given, it also times the tile sides of
``TILE_CANDIDATES`` on a 1024x1024 probe plane and keeps the smallest within 5% of the fastest
(:func:`choose_tile_size`). On a GPU, tiling only guards memory and keeps its fixed side.

Memory
------
A CPU forward pass on a 400x400 plane allocates and frees about 100 MB of activations. By
default glibc gives such blocks back to the system when they are freed, so every pass faults
them in afresh (about 22,000 page faults and a quarter of the CPU time, measured here). Before
its first CPU inference nunet therefore asks glibc (``mallopt``) to serve blocks of up to
32 MiB from its heap and to keep up to 1 GiB of freed heap for reuse
(:func:`reuse_freed_memory`); the process's memory then stays near its peak between passes.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Sequence
from functools import lru_cache
from typing import TYPE_CHECKING

import numpy as np

from nunet.errors import AxesError, ModelError
from nunet.io import Image, check_axes, guess_axes, with_data
from nunet.registry import DEFAULT_MODEL

if TYPE_CHECKING:
    import torch

    from nunet.modelfile import LoadedModel

PERCENTILES = (0.1, 99.9)
#: When ``tile_size`` is None, planes with more pixels than this are tiled, with tiles of this side.
#: CPU: measured on 2 cores, 256-px tiles are as fast as the whole plane or faster from about
#: 1280x1280 on, in far less memory (benchmarks/bench_inference.py). GPU: tiles keep activations
#: in host files, so only planes whose whole-plane activations could crowd GPU memory (about
#: 0.5 kB per pixel) are tiled.
AUTO_TILING = {"cpu": (1280 * 1280, 256), "gpu": (2048 * 2048, 1024)}
#: Tile sides ``auto`` times on a CPU for planes it tiles, and the side of the probe plane.
TILE_CANDIDATES = (256, 512)
TILE_PROBE_SIDE = 1024
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
AUTO_TOLERANCE = 1e-2
#: torch.quantile's input size limit (elements); larger batches are normalised with NumPy.
QUANTILE_LIMIT = 2**24
LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def resolve_device(device: str = "auto") -> str:
    """Map ``"auto"`` to ``"cuda"``, then ``"mps"``, then ``"cpu"``; check an explicit choice exists."""
    import torch

    if device == "auto":
        if torch.cuda.is_available():
            return "cuda"
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return "mps"
        return "cpu"
    kind = device.split(":")[0]
    if kind == "cuda" and not torch.cuda.is_available():
        raise ModelError(f"device '{device}' requested but CUDA is not available")
    if kind == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ModelError(f"device '{device}' requested but MPS is not available")
    if kind not in ("cpu", "cuda", "mps"):
        raise ModelError(f"unknown device '{device}' (use auto, cpu, cuda, cuda:N or mps)")
    return device


#: glibc mallopt parameters (malloc.h) and the values :func:`reuse_freed_memory` sets.
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
KEEP_FREED_BYTES, HEAP_BLOCK_BYTES = 1 << 30, 32 << 20


@lru_cache(maxsize=1)
def reuse_freed_memory() -> bool:
    """Make glibc reuse freed activation memory instead of returning it (see module docstring).

    Returns False, changing nothing, where the C library is not glibc (macOS, Windows, musl).
    """
    import ctypes
    import platform

    if platform.libc_ver()[0] != "glibc":
        return False
    mallopt = ctypes.CDLL(None).mallopt
    blocks = mallopt(M_MMAP_THRESHOLD, HEAP_BLOCK_BYTES)
    return bool(blocks) and bool(mallopt(M_TRIM_THRESHOLD, KEEP_FREED_BYTES))


@lru_cache(maxsize=4)
def _cached_model(path: str, mtime: float, device: str) -> "LoadedModel":
    from nunet.modelfile import load_model_file

    return load_model_file(path, device=device)


def get_model(model: "str | os.PathLike | LoadedModel", device: str) -> "LoadedModel":
    """Return a loaded model on ``device``, reusing recently loaded files (cheap in loops)."""
    from nunet.modelfile import LoadedModel
    from nunet.registry import load_model, resolve_model

    if isinstance(model, LoadedModel):
        return load_model(model, device=device)
    path = resolve_model(model).resolve()
    return _cached_model(str(path), path.stat().st_mtime, device)


def normalise_plane(plane: np.ndarray, percentiles: tuple[float, float] = PERCENTILES) -> np.ndarray:
    """Map a plane's percentiles to 0..255 (clipped), as float32 (see module docstring)."""
    plane = np.asarray(plane, dtype=np.float32)
    lo, hi = np.percentile(plane, percentiles)
    if not np.isfinite(lo) or not np.isfinite(hi):
        raise ValueError("plane contains NaN or infinite values")
    if hi <= lo:
        return np.zeros_like(plane)
    out = (plane - np.float32(lo)) * np.float32(255.0 / (hi - lo))
    return np.clip(out, 0.0, 255.0, out=out)


def padded_shape(height: int, width: int) -> tuple[int, int]:
    """Smallest shape >= (height, width) with sides multiples of 4 and at least 8."""
    return max(8, -(-height // 4) * 4), max(8, -(-width // 4) * 4)


def pad_plane(plane: np.ndarray) -> np.ndarray:
    """Reflect-pad a (..., H, W) array at the bottom/right to :func:`padded_shape`."""
    height, width = plane.shape[-2:]
    ph, pw = padded_shape(height, width)
    pads = [(0, 0)] * (plane.ndim - 2) + [(0, ph - height), (0, pw - width)]
    mode = "reflect" if min(height, width) > 1 else "edge"
    return np.pad(plane, pads, mode=mode)


def _to_grey(data: np.ndarray, axes: str) -> tuple[np.ndarray, str]:
    if "S" not in axes:
        return data, axes
    samples = data.shape[-1]
    rgb = data[..., :3].astype(np.float32)
    grey = rgb @ LUMA if samples >= 3 else rgb.mean(axis=-1)
    return grey, axes[:-1]


def _select_channels(data: np.ndarray, axes: str, channel: int | Sequence[int] | None) -> tuple[np.ndarray, str]:
    if channel is None:
        return data, axes
    if "C" not in axes:
        raise AxesError(f"channel={channel} given but the image has no C axis (axes '{axes}')")
    c = axes.index("C")
    picks = [channel] if isinstance(channel, int) else list(channel)
    n = data.shape[c]
    bad = [p for p in picks if not -n <= p < n]
    if bad or not picks:
        raise AxesError(f"channel {channel} out of range: the image has {n} channel(s) (0..{n - 1})")
    data = np.take(data, picks, axis=c)
    if isinstance(channel, int):
        return np.squeeze(data, axis=c), axes.replace("C", "")
    return data, axes


def filter_image(image: Image, model: "str | os.PathLike | LoadedModel" = DEFAULT_MODEL, *,
                 w: float | None = None, channel: int | Sequence[int] | None = None, tile_size: int | None = None,
                 batch_size: int | None = None, device: str = "auto", precision: str = "fp32",
                 percentiles: tuple[float, float] = PERCENTILES, invert: bool = False,
                 progress: bool = False) -> Image:
    """Filter every YX plane of an :class:`~nunet.io.Image`; keep its calibration.

    Returns
    -------
    Image
        float32 data in [0, 1]; axes as the input's, without ``S`` (RGB becomes grey) and
        without ``C`` when ``channel`` is a single int.

    See :func:`enhance` for the parameters.
    """
    axes = check_axes(image.axes, image.data.shape)
    data, axes = _to_grey(image.data, axes)
    data, axes = _select_channels(data, axes, channel)
    other = [i for i, a in enumerate(axes) if a not in "YX"]
    order = other + [axes.index("Y"), axes.index("X")]
    moved = np.transpose(data, order)
    lead_shape = moved.shape[:-2]
    planes = moved.reshape((-1,) + moved.shape[-2:])
    out = filter_planes(planes, model, w=w, tile_size=tile_size, batch_size=batch_size, device=device,
                        precision=precision, percentiles=percentiles, invert=invert, progress=progress)
    out = np.transpose(out.reshape(lead_shape + out.shape[-2:]), np.argsort(order))
    return with_data(image, out, axes)


def enhance(image: "np.ndarray | Image", model: "str | os.PathLike | LoadedModel" = DEFAULT_MODEL, *,
            w: float | None = None, axes: str | None = None, channel: int | Sequence[int] | None = None,
            tile_size: int | None = None, batch_size: int | None = None, device: str = "auto",
            precision: str = "fp32", percentiles: tuple[float, float] = PERCENTILES,
            invert: bool = False, progress: bool = False) -> np.ndarray:
    """Filter an image with NU-Net.

    Parameters
    ----------
    image : numpy.ndarray or Image
        Any integer or float dtype. An :class:`~nunet.io.Image` brings its own axes.
    model : str, path-like or LoadedModel
        Registered name, TorchScript file, or a model from :func:`nunet.load_model`.
    w : float, optional
        Filtering strength instead of a model: blends the outputs of the two registered
        models whose w brackets it (e.g. 7.5 -> half nunet-w7, half nunet-w8); ``model``
        is then ignored. A w outside the registered range is an error.
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
    percentiles : (float, float)
        Input percentiles mapped to 0 and 255 (see module docstring).
    invert : bool
        The image has dark nuclei on a bright background: flip it after normalisation.
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
    return filter_image(img, model, w=w, channel=channel, tile_size=tile_size, batch_size=batch_size,
                        device=device, precision=precision, percentiles=percentiles, invert=invert,
                        progress=progress).data


def blend_weights(w: float, available: Sequence[tuple[str, float]]) -> list[tuple[str, float]]:
    """Models and weights whose blend gives strength ``w``: the two registered w's around it.

    Parameters
    ----------
    w : float
        Requested strength.
    available : sequence of (name, w)
        Models with a known w.

    Returns
    -------
    list of (name, weight)
        One model with weight 1 for an exact match, else the two nearest with linear weights.
    """
    family = sorted(available, key=lambda item: item[1])
    if not family:
        raise ModelError("w= needs registered models with a w in their metadata; none found")
    for name, model_w in family:
        if abs(model_w - w) < 1e-9:
            return [(name, 1.0)]
    lo = [m for m in family if m[1] < w]
    hi = [m for m in family if m[1] > w]
    if not lo or not hi:
        span = ", ".join(f"{n} (w={mw:g})" for n, mw in family)
        raise ModelError(f"w={w:g} is outside the range of the registered models: {span}")
    (lo_name, lo_w), (hi_name, hi_w) = lo[-1], hi[0]
    t = (w - lo_w) / (hi_w - lo_w)
    return [(lo_name, 1.0 - t), (hi_name, t)]


def filter_planes(planes: np.ndarray, model: "str | os.PathLike | LoadedModel" = DEFAULT_MODEL, *,
                  w: float | None = None, **options) -> np.ndarray:
    """Filter a stack of planes ``(P, H, W)``; return float32 ``(P, H, W)`` in [0, 1].

    With ``w``, ``model`` is ignored: the output blends the two registered models whose w
    brackets the requested one (see :func:`blend_weights`). Other options as in :func:`enhance`.
    """
    if w is None:
        return _filter_planes(planes, model, **options)
    from nunet.registry import list_models

    family = [(e.name, e.w) for e in list_models() if e.w is not None]
    out = np.zeros(planes.shape, dtype=np.float32)
    for name, weight in blend_weights(float(w), family):
        out += np.float32(weight) * _filter_planes(planes, name, **options)
    return out


def _filter_planes(planes: np.ndarray, model: "str | os.PathLike | LoadedModel", *,
                   tile_size: int | None = None, batch_size: int | None = None, device: str = "auto",
                   precision: str = "fp32", percentiles: tuple[float, float] = PERCENTILES,
                   invert: bool = False, progress: bool = False) -> np.ndarray:
    import torch

    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got '{precision}'")
    device = resolve_device(device)
    if precision == "fp16" and device == "cpu":
        raise ValueError("precision 'fp16' needs a GPU; use 'bf16' or 'fp32' on the CPU")
    loaded = get_model(model, device)
    if device == "cpu":
        reuse_freed_memory()
    tuned = precision == "auto"
    if tuned:
        precision = choose_precision(loaded, device)
    count, height, width = planes.shape
    if batch_size is None:
        batch_size = choose_batch_size(loaded, device, precision) if tuned else default_batch_size(device)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    threads = choose_threads(loaded, precision, batch_size) if tuned and device == "cpu" else None
    ph, pw = padded_shape(height, width)
    measure_tiles = tuned and tile_size is None and device == "cpu"
    tiled, tile_size = _tiling(ph, pw, tile_size, device)
    if tiled and measure_tiles:
        with _num_threads(threads):
            tile_size = choose_tile_size(loaded, precision)
    if tiled:
        batch_size = 1
    out = np.empty((count, height, width), dtype=np.float32)
    starts = range(0, count, batch_size)
    if tiled:
        from nunet.tiling import TILED_PASSES
    steps = TILED_PASSES if tiled else 1  # a tiled plane reports each of its passes
    with _progress(progress, count * steps, "passes" if tiled else "planes") as advance, \
            _num_threads(threads), torch.inference_mode(), _autocast(device, precision):
        for start in starts:
            stop = min(count, start + batch_size)
            x = _prepare(planes[start:stop], percentiles, invert, device)
            if tiled:
                y = _tiled(loaded.module, x, tile_size, on_pass=lambda: advance(1))
            else:
                y = loaded.module(x)
            y = _to_unit_range(y)[:, 0, :height, :width]
            out[start:stop] = y.cpu().numpy()
            if not tiled:
                advance(stop - start)
    return out


def _prepare(planes: np.ndarray, percentiles: tuple[float, float], invert: bool, device: str) -> "torch.Tensor":
    """Raw ``(N, H, W)`` planes as the network's input ``(N, 1, H', W')`` on ``device``.

    On a CUDA device the raw planes are uploaded and prepared there (:func:`_prepare_torch`),
    so the CPU only copies; elsewhere, and for planes under 8 px or batches too large for
    ``torch.quantile``, with NumPy on the CPU.
    """
    import torch

    height, width = planes.shape[1:]
    if device.startswith("cuda") and min(height, width) >= 8 and planes.size <= QUANTILE_LIMIT:
        return _prepare_torch(planes, percentiles, invert, device)
    prepared = [pad_plane(normalise_plane(p, percentiles)) for p in planes]
    batch = prepared[0][None] if len(prepared) == 1 else np.stack(prepared)  # no copy of one plane
    if invert:
        np.subtract(255.0, batch, out=batch)
    return torch.from_numpy(batch[:, None]).to(device)


def _prepare_torch(planes: np.ndarray, percentiles: tuple[float, float], invert: bool,
                   device: str) -> "torch.Tensor":
    """:func:`_prepare`'s NumPy steps (normalise, invert, reflect-pad) done by torch on ``device``."""
    import torch

    height, width = planes.shape[1:]
    x = torch.from_numpy(np.ascontiguousarray(planes, dtype=np.float32)).to(device)
    x = normalise_planes_torch(x, percentiles)
    if invert:
        torch.sub(255.0, x, out=x)
    ph, pw = padded_shape(height, width)
    return torch.nn.functional.pad(x[:, None], (0, pw - width, 0, ph - height), mode="reflect")


def normalise_planes_torch(x: "torch.Tensor", percentiles: tuple[float, float] = PERCENTILES) -> "torch.Tensor":
    """:func:`normalise_plane` for a float32 ``(N, H, W)`` tensor, on its device (same result)."""
    import torch

    q = torch.tensor(percentiles, dtype=x.dtype, device=x.device) / 100.0
    lo, hi = torch.quantile(x.reshape(len(x), -1), q, dim=1)
    if not bool(torch.isfinite(lo).all() and torch.isfinite(hi).all()):
        raise ValueError("plane contains NaN or infinite values")
    span = hi - lo
    scale = torch.where(span > 0, 255.0 / span.clamp_min(1e-30), torch.zeros_like(span))
    return ((x - lo.view(-1, 1, 1)) * scale.view(-1, 1, 1)).clamp_(0.0, 255.0)


def _to_unit_range(y: "torch.Tensor") -> "torch.Tensor":
    """The network's raw output clipped to 0..255 and divided by 255, in fp32 (in place when fp32)."""
    return y.float().clamp_(0.0, 255.0).div_(255.0)


_CHOSEN: dict[tuple[str, str], str] = {}
_BATCH: dict[tuple[str, str, str], int] = {}
_THREADS: dict[tuple[str, str, int, int], int] = {}
_TILE: dict[tuple[str, str, int], int] = {}
_SECONDS: dict[tuple[str, str, str, int, int], float] = {}
#: Plane batch sizes ``auto`` tries, per device kind.
BATCH_CANDIDATES = {"cpu": (1, 2, 4), "cuda": (1, 4, 8, 16, 32), "mps": (1, 4, 8, 16)}


def default_batch_size(device: str) -> int:
    """Planes per forward pass: 1 on a CPU (measured: larger batches are slower per plane), else 8."""
    return 1 if device == "cpu" else 8


@lru_cache(maxsize=1)
def _probe_plane() -> np.ndarray:
    """A normalised 256x256 synthetic nuclei plane (made once; read-only)."""
    from nunet.synth import synth_image

    plane = normalise_plane(synth_image("dense", (256, 256), seed=0).image)
    plane.flags.writeable = False
    return plane


def _probe_planes(count: int) -> np.ndarray:
    """``count`` copies of :func:`_probe_plane`, ``(count, 1, 256, 256)``."""
    return np.repeat(_probe_plane()[None, None], count, axis=0)


def _best_seconds(loaded: "LoadedModel", x: "torch.Tensor", device: str,
                  precision: str) -> tuple[float, "torch.Tensor"]:
    """Best of 3 timed forward passes (after a warm-up), and the last output in [0, 1]."""
    import time

    import torch

    times = []
    with torch.inference_mode(), _autocast(device, precision):
        for _ in range(4):
            start = time.perf_counter()
            y = _to_unit_range(loaded.module(x)).cpu()
            times.append(time.perf_counter() - start)
    return min(times[1:]), y


def _timing_key(loaded: "LoadedModel", device: str, precision: str,
                batch: int) -> tuple[str, str, str, int, int]:
    import torch

    return str(loaded.path), device, precision, batch, torch.get_num_threads()


def _probe_seconds(loaded: "LoadedModel", device: str, precision: str, batch: int) -> float:
    """:func:`_best_seconds` on ``batch`` probe planes, measured once per model file, device,
    precision, batch size and CPU thread count (``auto``'s choices share their measurements)."""
    import torch

    key = _timing_key(loaded, device, precision, batch)
    if key not in _SECONDS:
        x = torch.from_numpy(_probe_planes(batch)).to(device)
        _SECONDS[key] = _best_seconds(loaded, x, device, precision)[0]
    return _SECONDS[key]


def choose_precision(loaded: "LoadedModel", device: str) -> str:
    """The precision ``auto`` picks for a model on a device (measured once, then cached).

    Candidates: fp32, plus bf16 on a CPU with native bf16, plus fp16 and bf16 on CUDA. Each is
    timed (best of 3, after a warm-up) on the device's default batch of a 256x256 synthetic
    nuclei plane; the fastest whose output stays within ``AUTO_TOLERANCE`` of fp32 wins.
    """
    import torch

    key = (str(loaded.path), device)
    if key in _CHOSEN:
        return _CHOSEN[key]
    kind = device.split(":")[0]
    candidates = ["fp32"]
    if kind == "cuda":
        candidates += ["fp16", "bf16"]
    elif kind == "cpu" and torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported():
        candidates.append("bf16")
    x = torch.from_numpy(_probe_planes(default_batch_size(device))).to(device)
    results = {precision: _best_seconds(loaded, x, device, precision) for precision in candidates}
    for precision, (seconds, _) in results.items():
        _SECONDS[_timing_key(loaded, device, precision, len(x))] = seconds
    reference = results["fp32"][1]
    allowed = [p for p in candidates if float((results[p][1] - reference).abs().max()) <= AUTO_TOLERANCE]
    _CHOSEN[key] = min(allowed, key=lambda p: results[p][0])
    return _CHOSEN[key]


def smallest_within(seconds: dict[int, float], tolerance: float = 0.05) -> int:
    """The smallest setting (batch size, thread count) whose time is within ``tolerance`` of the best.

    More planes per batch or more threads only earn their memory or cores when they are
    measurably faster.
    """
    best = min(seconds.values())
    return min(b for b, t in seconds.items() if t <= best * (1.0 + tolerance))


def choose_batch_size(loaded: "LoadedModel", device: str, precision: str) -> int:
    """The plane batch size ``auto`` uses: each of ``BATCH_CANDIDATES`` timed on 256x256 planes.

    Measured once per model file, device and precision, then cached; see :func:`smallest_within`.
    """
    key = (str(loaded.path), device, precision)
    if key not in _BATCH:
        per_plane = {batch: _probe_seconds(loaded, device, precision, batch) / batch
                     for batch in BATCH_CANDIDATES.get(device.split(":")[0], (1,))}
        _BATCH[key] = smallest_within(per_plane)
    return _BATCH[key]


def choose_threads(loaded: "LoadedModel", precision: str, batch_size: int) -> int:
    """The CPU thread count ``auto`` uses: torch's current count and half of it, timed on 256x256 planes.

    Measured once per model file, precision, batch size and current count, then cached; see
    :func:`smallest_within`.
    """
    import torch

    current = torch.get_num_threads()
    key = (str(loaded.path), precision, batch_size, current)
    if key not in _THREADS:
        seconds = {}
        for threads in sorted({current, max(1, current // 2)}):
            with _num_threads(threads):
                seconds[threads] = _probe_seconds(loaded, "cpu", precision, batch_size)
        _THREADS[key] = smallest_within(seconds)
    return _THREADS[key]


def choose_tile_size(loaded: "LoadedModel", precision: str) -> int:
    """The CPU tile side ``auto`` uses for planes it tiles: each of ``TILE_CANDIDATES`` timed.

    A ``TILE_PROBE_SIDE`` square of synthetic nuclei is run through the seam-free tiling once per
    candidate (about 2 s each on 2 cores; tiled passes need no warm-up). Larger tiles read fewer
    overlapping windows but hold more memory, so :func:`smallest_within` keeps the smallest side
    within 5% of the fastest. Measured once per model file, precision and CPU thread count, then
    cached.
    """
    import time

    import torch

    key = (str(loaded.path), precision, torch.get_num_threads())
    if key not in _TILE:
        plane = _probe_plane()
        repeats = TILE_PROBE_SIDE // plane.shape[0]
        x = torch.from_numpy(np.tile(plane, (repeats, repeats))[None, None])
        seconds = {}
        with torch.inference_mode(), _autocast("cpu", precision):
            for side in TILE_CANDIDATES:
                start = time.perf_counter()
                _tiled(loaded.module, x, side)
                seconds[side] = time.perf_counter() - start
        _TILE[key] = smallest_within(seconds)
    return _TILE[key]


@contextlib.contextmanager
def _num_threads(threads: int | None) -> Iterator[None]:
    """Run torch's CPU operators with ``threads`` threads (None: unchanged), then restore the count.

    The count is process-wide: it is only touched when it differs from the current one.
    """
    import torch

    before = torch.get_num_threads()
    if threads is None or threads == before:
        yield
        return
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _tiling(height: int, width: int, tile_size: int | None, device: str) -> tuple[bool, int]:
    """Whether a padded plane is tiled, and the tile side (see ``AUTO_TILING``)."""
    if tile_size is None:
        pixels, side = AUTO_TILING["cpu" if device == "cpu" else "gpu"]
        return height * width > pixels, side
    return tile_size > 0 and max(height, width) > tile_size, tile_size


def _tiled(module: "torch.nn.Module", x: "torch.Tensor", tile_size: int,
           on_pass: "Callable[[], None] | None" = None) -> "torch.Tensor":
    from nunet.tiling import tiled_forward

    try:
        return tiled_forward(module, x, tile_size, on_pass)
    except AttributeError as exc:
        raise ModelError(f"tiling needs a model with NU-Net's layer names ({exc})") from exc


def _autocast(device: str, precision: str):
    import torch

    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.split(":")[0], dtype=dtype)


class _progress:
    """Context manager yielding ``advance(n)``; shows a rich bar on stderr when enabled."""

    def __init__(self, enabled: bool, total: int, unit: str = "planes") -> None:
        self.enabled = enabled and total > 1
        self.total, self.unit = total, unit

    def __enter__(self):
        if not self.enabled:
            return lambda n: None
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

        self._bar = Progress(self.unit, BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                             console=Console(stderr=True), transient=True)
        self._bar.__enter__()
        task = self._bar.add_task(self.unit, total=self.total)
        return lambda n: self._bar.advance(task, n)

    def __exit__(self, *exc) -> None:
        if self.enabled:
            self._bar.__exit__(*exc)

