"""Seam-free tiled inference: tiles give exactly the whole-plane output, at one pass's cost.

NU-Net normalises every convolution's output with InstanceNorm, whose mean and variance
are taken over the whole plane. Run tile by tile, each tile would use its own statistics
and the mosaic would show seams and tone shifts. Here the network runs one convolution at
a time over the whole plane, tile by tile:

- each tile of a convolution's output reads its input window from the previous layer's
  activation: the tile plus the kernel's reach, with the plane's reflection padding where
  the window crosses the plane's border (and nearest-neighbour x2 upsampling for the
  decoder), so every output pixel is computed from exactly the inputs the whole-plane
  network uses;
- it writes its tile and adds its per-channel sums to the layer's totals; once every tile
  is done the InstanceNorm statistics are known, and the next layer applies the
  normalisation (and ReLU) as it reads;
- activations live in temporary files (:func:`scratch_dir`: ``TMPDIR`` if set, else the
  system's temporary folder, or ``/var/tmp`` when that one is a RAM-backed tmpfs), stored
  channels-last in float32 and memory-mapped one window at a time.

Every layer is computed once, so tiling costs one forward pass plus reading and writing
the activations; memory is bounded by one tile (input window, output tile), whatever the
plane size. Temporary disk use peaks at about ``192 * H * W`` bytes (the 32-channel
full-resolution activation and the 64-channel half-resolution one, float32).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from nunet.core.model import (
    DECODER,
    ENCODER,
    OUTPUT,
    RESIDUAL,
    ConvSpec,
    residual_blocks,
    single_output_conv,
    upsample_conv3x3,
)

EPS = 1e-5


#: Passes over the tiles of one plane: each convolution, and each residual block's sum.


class _FileStore:
    """An ``(H, W, C)`` float32 array in a file, read and written a window at a time.

    Reads map only the rows they need and unmap them once the window is copied out; writes
    go through ``os.pwrite``. Resident memory never holds more than one window of the array.
    """

    def __init__(self, path: Path, height: int, width: int, channels: int) -> None:
        self.path, self.height, self.width, self.channels = path, height, width, channels
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        os.ftruncate(self.fd, height * width * channels * 4)

    def view(self, y0: int, y1: int, x0: int, x1: int) -> torch.Tensor:
        """Rows ``[y0, y1)``, columns ``[x0, x1)`` as a tensor over the mapped file (copy before use)."""
        rows = np.memmap(
            self.path,
            np.float32,
            "c",
            offset=y0 * self.width * self.channels * 4,
            shape=(y1 - y0, self.width, self.channels),
        )
        return torch.from_numpy(rows[:, x0:x1])

    def write(self, y0: int, x0: int, block: torch.Tensor) -> None:
        """Write a contiguous float32 ``(h, w, C)`` block with its top-left corner at ``(y0, x0)``."""
        block = block.cpu().numpy()
        row_bytes = self.width * self.channels * 4
        if block.shape[1] == self.width:
            os.pwrite(self.fd, block.data, y0 * row_bytes)
            return
        for r in range(block.shape[0]):
            os.pwrite(self.fd, block[r].data, (y0 + r) * row_bytes + x0 * self.channels * 4)

    def remove(self) -> None:
        """Close and delete the file (again: nothing)."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        self.path.unlink(missing_ok=True)


class _ArrayStore:
    """The input plane, in memory, with the reading interface of :class:`_FileStore`."""

    def __init__(self, plane: torch.Tensor) -> None:
        self.tensor = plane[:, :, None]
        self.height, self.width, self.channels = self.tensor.shape

    def view(self, y0: int, y1: int, x0: int, x1: int) -> torch.Tensor:
        return self.tensor[y0:y1, x0:x1]

    def remove(self) -> None:
        pass


@dataclass
class _Activation:
    """A stored tensor and the per-channel affine map (+ ReLU) that its readers apply."""

    store: "_FileStore | _ArrayStore"
    scale: torch.Tensor | None = None
    shift: torch.Tensor | None = None
    relu: bool = False

    def window(self, rows: np.ndarray, cols: np.ndarray, device: torch.device) -> torch.Tensor:
        """``(1, C, len(rows), len(cols))`` float32 values at the given row and column indices.

        The map applies to the stored block once; the (reflected, upsampled) window is then
        gathered from it. The result is channels-last, which oneDNN convolves fastest.
        """
        r0, c0 = int(rows.min()), int(cols.min())
        t = self.store.view(r0, int(rows.max()) + 1, c0, int(cols.max()) + 1)
        t = torch.addcmul(self.shift, t, self.scale) if self.scale is not None else t.clone()
        if self.relu:
            t.relu_()
        rows, cols = rows - r0, cols - c0
        if not (_is_identity(rows, t.shape[0]) and _is_identity(cols, t.shape[1])):
            t = t[torch.from_numpy(rows)[:, None], torch.from_numpy(cols)[None, :]]
        return t.to(device).permute(2, 0, 1)[None]


def _is_identity(index: np.ndarray, size: int) -> bool:
    return len(index) == size and bool(np.all(index == np.arange(size)))


class _Moments:
    """Per-channel pixel count, sum and sum of squares of a layer's output, tile by tile.

    Each tile's sums are taken in float32 and added up in float64. The stored values are
    shifted per channel to a mean near 0 (see :meth:`_Runner.conv`), which keeps
    ``E[x^2] - E[x]^2`` free of cancellation.
    """

    def __init__(self, channels: int) -> None:
        self.count = 0
        self.sums = torch.zeros((2, channels), dtype=torch.float64)

    def add(self, tile: torch.Tensor) -> None:
        """Add an ``(h, w, C)`` tile."""
        values = tile.reshape(-1, tile.shape[-1])
        self.count += values.shape[0]
        self.sums[0] += values.sum(dim=0).double().cpu()
        self.sums[1] += (values * values).sum(dim=0).double().cpu()

    def mean_invstd(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and ``1 / sqrt(var + eps)`` (biased variance, as InstanceNorm), float32."""
        mean = self.sums[0] / self.count
        var = (self.sums[1] / self.count - mean * mean).clamp_min(0.0)
        return mean.float(), torch.rsqrt(var + EPS).float()


def _source_indices(o0: int, o1: int, spec: ConvSpec, size_in: int) -> np.ndarray:
    """Input indices (one axis) that output indices ``[o0, o1)`` of a padded conv read.

    Reflection padding at the plane's border; for an upsampling layer, the low-resolution
    rows ``o0/2 - 1 .. o1/2`` with the border replicated (see :func:`nunet.core.model.upsample_conv3x3`).
    """
    if spec.upsample:
        return np.clip(np.arange(o0 // 2 - 1, o1 // 2 + 1), 0, size_in - 1)
    pad = spec.kernel // 2
    i = np.arange(spec.stride * o0, spec.stride * (o1 - 1) + spec.kernel) - pad
    i = np.where(i < 0, -i, i)
    return np.where(i >= size_in, 2 * (size_in - 1) - i, i)


def _convolve(window: torch.Tensor, spec: ConvSpec, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """The layer's convolution of an already padded window, as :class:`nunet.NUNet` computes it."""
    if spec.upsample:
        return upsample_conv3x3(window, weight, bias)
    if weight.shape[0] == 1:
        return single_output_conv(window, weight, bias)
    return torch.nn.functional.conv2d(window, weight, bias, stride=spec.stride)


def scratch_dir(mounts: str = "/proc/mounts") -> str:
    """Folder for the activation files: ``TMPDIR`` if set; else the system's temporary folder,
    unless it is a tmpfs (RAM) and ``/var/tmp`` is a writable folder on another file system."""
    default = tempfile.gettempdir()
    if os.environ.get("TMPDIR"):
        return default
    if (
        fs_type(default, mounts) == "tmpfs"
        and os.path.isdir("/var/tmp")
        and os.access("/var/tmp", os.W_OK)
        and fs_type("/var/tmp", mounts) not in (None, "tmpfs")
    ):
        return "/var/tmp"
    return default


def fs_type(path: str, mounts: str) -> str | None:
    """File system type of the mount that holds ``path`` (Linux ``/proc/mounts``), or None."""
    try:
        with open(mounts) as fh:
            entries = [line.split()[1:3] for line in fh if len(line.split()) >= 3]
    except OSError:
        return None
    path = os.path.realpath(path)
    best = max(
        (point for point, _ in entries if path == point or path.startswith(point.rstrip("/") + "/")),
        key=len,
        default=None,
    )
    return next((kind for point, kind in entries if point == best), None)


def tiled_passes(net: torch.nn.Module) -> int:
    """How many passes over the tiles :func:`tiled_forward` makes for ``net`` (one per layer)."""
    return len(ENCODER) + 3 * len(residual_blocks(net)) + len(DECODER) + 1


def _tiles(height: int, width: int, side: int) -> Iterator[tuple[int, int, int, int]]:
    for y0 in range(0, height, side):
        for x0 in range(0, width, side):
            yield y0, min(y0 + side, height), x0, min(x0 + side, width)


def _module(net: torch.nn.Module, path: str) -> torch.nn.Module:
    for name in path.split("."):
        net = getattr(net, name)
    return net


class _Runner:
    """Runs NU-Net's layers one at a time over a plane's tiles (see the module docstring)."""

    def __init__(
        self,
        net: torch.nn.Module,
        tile_size: int,
        full_height: int,
        device: torch.device,
        folder: Path,
        on_tile: Callable[[float], None],
    ) -> None:
        self.net, self.device, self.folder, self.on_tile = net, device, folder, on_tile
        self.tile_size, self.full_height = tile_size, full_height
        self.stores: list[_FileStore] = []

    def side(self, height: int) -> int:
        """Tile side for a layer of this height: the same part of the plane at every resolution."""
        return max(4, self.tile_size * height // self.full_height)

    def new_store(self, height: int, width: int, channels: int) -> _FileStore:
        self.stores.append(_FileStore(self.folder / f"a{len(self.stores)}.f32", height, width, channels))
        return self.stores[-1]

    def close(self) -> None:
        """Remove every store still open (after an error, too)."""
        for store in self.stores:
            store.remove()

    def conv(
        self, source: _Activation, spec: ConvSpec, sink: Callable[[int, int, torch.Tensor], None] | None = None
    ) -> tuple[_FileStore | None, _Moments]:
        """Run one convolution over every tile; return its stored output and its per-channel moments.

        The stored output feeds an InstanceNorm, which ignores per-channel offsets: it is
        stored minus the first tile's channel means, so the moments are taken around a
        mean near zero. With ``sink``, the final layer's tiles (contiguous float32
        ``(h, w, C)``) go to ``sink(y0, x0, tile)`` unshifted, and no moments are taken.
        """
        conv = _module(self.net, spec.path)
        weight, bias = conv.weight, conv.bias
        factor = 2 if spec.upsample else 1
        height = source.store.height * factor // spec.stride
        width = source.store.width * factor // spec.stride
        store, moments, offset = None, _Moments(weight.shape[0]), None
        if sink is None:
            store = self.new_store(height, width, weight.shape[0])
        tiles = list(_tiles(height, width, self.side(height)))
        for y0, y1, x0, x1 in tiles:
            window = source.window(
                _source_indices(y0, y1, spec, source.store.height),
                _source_indices(x0, x1, spec, source.store.width),
                self.device,
            )
            out = _convolve(window, spec, weight, bias)[0].permute(1, 2, 0).float().contiguous()
            if store is None:
                sink(y0, x0, out)
            else:
                if offset is None:
                    offset = out.reshape(-1, out.shape[-1]).mean(dim=0)
                out -= offset
                moments.add(out)
                store.write(y0, x0, out)
            self.on_tile(1 / len(tiles))
        return store, moments

    @staticmethod
    def normalised(store: _FileStore, moments: _Moments, norm: torch.nn.Module, relu: bool) -> _Activation:
        """The activation ``store`` as the next layer reads it: InstanceNorm with the plane's statistics."""
        mean, invstd = moments.mean_invstd()
        scale = invstd * norm.weight.float().cpu()
        shift = norm.bias.float().cpu() - mean * scale
        return _Activation(store, scale, shift, relu)

    def residual(self, block: torch.nn.Module, name: str, x: _Activation) -> _Activation:
        """``x + IN(conv(ReLU(IN(conv(x)))))``, stored."""
        first, second = (replace(spec, path=f"{name}.{spec.path}") for spec in RESIDUAL)
        a, moments = self.conv(x, first)
        b, moments_b = self.conv(self.normalised(a, moments, _module(block, RESIDUAL[0].norm), relu=True), second)
        a.remove()
        b_in = self.normalised(b, moments_b, _module(block, RESIDUAL[1].norm), relu=False)
        out = self.new_store(b.height, b.width, b.channels)
        tiles = list(_tiles(b.height, b.width, self.side(b.height)))
        for y0, y1, x0, x1 in tiles:
            rows, cols = np.arange(y0, y1), np.arange(x0, x1)
            t = x.window(rows, cols, self.device) + b_in.window(rows, cols, self.device)
            out.write(y0, x0, t[0].permute(1, 2, 0).contiguous())
            self.on_tile(1 / len(tiles))
        b.remove()
        x.store.remove()
        return _Activation(out)


def tiled_forward(
    net: torch.nn.Module, x: torch.Tensor, tile_size: int, on_tile: Callable[[float], None] | None = None
) -> torch.Tensor:
    """Whole-plane NU-Net output of ``x`` (shape ``(1, 1, H, W)``, H and W multiples of 4), by tiles.

    Parameters
    ----------
    net : torch.nn.Module
        A NU-Net (eager or TorchScript) with the layer names of :class:`nunet.NUNet`.
    x : torch.Tensor
        One plane in the training range.
    tile_size : int
        Side of a tile at full resolution; layers at 1/2 and 1/4 resolution use tiles of
        the same area of the plane.
    on_tile : callable, optional
        Called after each tile of each pass with the fraction of the pass it was (progress bars: the
        fractions of one plane add up to :func:`tiled_passes`).

    Returns
    -------
    torch.Tensor
        The raw (unclipped) float32 output, equal to ``net(x)`` up to float rounding.
    """
    _, _, height, width = x.shape
    tile_size = max(4, tile_size - tile_size % 4)  # even tiles at half resolution
    out = torch.empty((1, 1, height, width), dtype=torch.float32, device=x.device)

    def to_out(y0: int, x0: int, t: torch.Tensor) -> None:
        out[0, 0, y0 : y0 + t.shape[0], x0 : x0 + t.shape[1]] = t[:, :, 0]

    with tempfile.TemporaryDirectory(prefix="nunet-tiles-", dir=scratch_dir()) as folder:
        runner = _Runner(net, tile_size, height, x.device, Path(folder), on_tile or (lambda fraction: None))

        def conv_norm_relu(act: _Activation, spec: ConvSpec) -> _Activation:
            store, moments = runner.conv(act, spec)
            act.store.remove()
            return runner.normalised(store, moments, _module(net, spec.norm), relu=True)

        try:
            act = _Activation(_ArrayStore(x[0, 0].float().cpu()))
            for spec in ENCODER:
                act = conv_norm_relu(act, spec)
            for name in residual_blocks(net):
                act = runner.residual(_module(net, name), name, act)
            for spec in DECODER:
                act = conv_norm_relu(act, spec)
            runner.conv(act, OUTPUT, sink=to_out)
        finally:
            runner.close()
    return out
