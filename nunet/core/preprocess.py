"""The steps between an image and the network, each with its inverse where there is one.

Normalisation
-------------
Each YX plane is mapped linearly so that its 0.1 and 99.9 percentiles become 0 and 255
(the range the network was trained on); values outside are clipped. Because the first
convolution is followed by InstanceNorm, the network barely depends on the input's gain
and offset: the percentiles only decide which rare outliers (hot pixels) are clipped.
A constant plane is mapped to 0. The output is clipped to 0..255 and divided by 255
(:func:`to_unit_range`), giving float32 in [0, 1]. NU-Net enhances bright objects on a dark
background; with ``invert`` the normalised plane is flipped (255 - x) first, for dark nuclei on
a bright background (THG, bright-field), as the paper did for its dark-blob training sets.

Geometry
--------
Each plane is reflect-padded at its bottom and right to a multiple of 4 (at least 8 px)
(:func:`pad_plane`) and the output cropped back (:func:`crop_plane`), so the output has exactly
the input's spatial shape. A model trained with a frame (:class:`Frame`; metadata ``frame_pad``
and ``frame_fill``, see :mod:`nunet.training.loop`) gets the normalised plane framed instead
(:func:`frame_plane`), so that it sees where the image ends.

RGB input (an ``S`` axis) becomes grey with ITU-R 601 luma weights (0.299, 0.587, 0.114); an
alpha sample is dropped.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from nunet.errors import AxesError

if TYPE_CHECKING:
    import torch

PERCENTILES = (0.1, 99.9)
LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)
#: The top of the network's input and output range.
FULL_SCALE = 255.0


def to_grey(data: np.ndarray, axes: str) -> tuple[np.ndarray, str]:
    """Drop an ``S`` (RGB/RGBA sample) axis by luma weighting; other images pass unchanged."""
    if "S" not in axes:
        return data, axes
    samples = data.shape[-1]
    rgb = data[..., :3].astype(np.float32)
    grey = rgb @ LUMA if samples >= 3 else rgb.mean(axis=-1)
    return grey, axes[:-1]


def channel_picks(axes: str, shape: tuple[int, ...], channel: int | Sequence[int]) -> list[int]:
    """The channel indices ``channel`` asks for, checked against an image's axes and shape (an
    AxesError naming the problem: no C axis, or an index out of range)."""
    if "C" not in axes:
        raise AxesError(f"channel={channel} given but the image has no C axis (axes '{axes}')")
    picks = [channel] if isinstance(channel, int) else list(channel)
    n = shape[axes.index("C")]
    if not picks or any(not -n <= p < n for p in picks):
        raise AxesError(f"channel {channel} out of range: the image has {n} channel(s) (0..{n - 1})")
    return picks


def select_channels(data: np.ndarray, axes: str, channel: int | Sequence[int] | None) -> tuple[np.ndarray, str]:
    """Keep the chosen channel(s) of the ``C`` axis (None: all; a single int drops the axis).

    Negative indices count from the end, as in NumPy (-1 is the last channel).
    """
    if channel is None:
        return data, axes
    picks = channel_picks(axes, data.shape, channel)
    c = axes.index("C")
    data = np.take(data, picks, axis=c)
    if isinstance(channel, int):
        return np.squeeze(data, axis=c), axes.replace("C", "")
    return data, axes


def normalise_plane(plane: np.ndarray, percentiles: tuple[float, float] = PERCENTILES) -> np.ndarray:
    """Map a plane's percentiles to 0..255 (clipped), as float32 (see module docstring). float64 data
    is mapped in float64 first: values beyond float32's range, huge or tiny, keep their contrast."""
    plane = np.asarray(plane)
    if plane.dtype == np.float64:
        lo, hi = np.percentile(plane, percentiles)
        if not np.isfinite(lo) or not np.isfinite(hi):
            raise ValueError("plane contains NaN or infinite values")
        if hi <= lo:
            return np.zeros(plane.shape, np.float32)
        return np.clip((plane - lo) * (FULL_SCALE / (hi - lo)), 0.0, FULL_SCALE).astype(np.float32)
    plane = plane.astype(np.float32, copy=False)
    lo, hi = np.percentile(plane, percentiles)
    if not np.isfinite(lo) or not np.isfinite(hi):
        raise ValueError("plane contains NaN or infinite values")
    if hi <= lo:
        return np.zeros_like(plane)
    out = (plane - np.float32(lo)) * np.float32(FULL_SCALE / (hi - lo))
    return np.clip(out, 0.0, FULL_SCALE, out=out)


def normalise_planes_torch(x: "torch.Tensor", percentiles: tuple[float, float] = PERCENTILES) -> "torch.Tensor":
    """:func:`normalise_plane` for a float32 ``(N, H, W)`` tensor, on its device (same result)."""
    import torch

    q = torch.tensor(percentiles, dtype=x.dtype, device=x.device) / 100.0
    lo, hi = torch.quantile(x.reshape(len(x), -1), q, dim=1)
    if not bool(torch.isfinite(lo).all() and torch.isfinite(hi).all()):
        raise ValueError("plane contains NaN or infinite values")
    span = hi - lo
    scale = torch.where(span > 0, FULL_SCALE / span.clamp_min(1e-30), torch.zeros_like(span))
    return ((x - lo.view(-1, 1, 1)) * scale.view(-1, 1, 1)).clamp_(0.0, FULL_SCALE)


def invert_normalised(x: np.ndarray) -> np.ndarray:
    """Flip a normalised plane or batch in place (255 - x): dark nuclei become bright."""
    return np.subtract(FULL_SCALE, x, out=x)


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


FRAME_FILLS = ("mean", "edge", "zero")


@dataclass(frozen=True)
class Frame:
    """The frame a model was trained with: ``pad`` px of ``fill`` around each normalised plane (``pad``
    0: no frame, the plane is reflect-padded). ``fill``: ``mean`` (the plane's mean: the
    InstanceNorm statistics barely move), ``edge`` (the border pixels repeated) or ``zero``."""

    pad: int = 0
    fill: str = "mean"

    def __post_init__(self) -> None:
        if self.pad < 0 or self.pad % 2 or self.fill not in FRAME_FILLS:
            raise ValueError(f"a frame is an even pad >= 0 and a fill in {FRAME_FILLS}, got {self.pad}, {self.fill!r}")


def frame_plane(plane: np.ndarray, frame: Frame, side: int | None = None) -> np.ndarray:
    """Surround a (..., H, W) array with ``frame.pad`` px of ``frame.fill`` on every side, and extend it
    alike at the bottom and right to ``side + 2 pad`` (default: to :func:`padded_shape` of the framed plane).

    For models trained with a frame: the network sees where the image ends, where reflection at the
    border would show it a nucleus cut by the frame as a whole one centred on it. :func:`crop_plane`
    with ``offset=frame.pad`` crops the output back; :func:`nunet.core.model.frame_tensor` frames in torch.
    """
    height, width, pad = *plane.shape[-2:], frame.pad
    if side is None:
        full_height, full_width = padded_shape(height + 2 * pad, width + 2 * pad)
    else:
        full_height = full_width = side + 2 * pad
    pads = [(0, 0)] * (plane.ndim - 2) + [(pad, full_height - height - pad), (pad, full_width - width - pad)]
    if frame.fill == "edge":
        return np.pad(plane, pads, mode="edge")
    return np.pad(plane, pads, constant_values=float(plane.mean()) if frame.fill == "mean" else 0.0)


def crop_plane(x, height: int, width: int, offset: int = 0):
    """Undo :func:`pad_plane` (or :func:`frame_plane`, with ``offset`` its pad): the ``height`` x
    ``width`` plane at (``offset``, ``offset``) of a (..., H', W') array or tensor."""
    return x[..., offset : offset + height, offset : offset + width]


def to_unit_range(y: "torch.Tensor") -> "torch.Tensor":
    """The network's raw output clipped to 0..255 and divided by 255, in fp32 (in place when fp32)."""
    return y.float().clamp_(0.0, FULL_SCALE).div_(FULL_SCALE)
