"""Seam-free tiled inference: tiles give exactly the whole-plane output.

NU-Net normalises every convolution's output with InstanceNorm, whose mean and
variance are taken over the whole plane. Run tile by tile, each tile would use its
own statistics, and the mosaic would show seams and tone shifts. Here the 15
InstanceNorm layers are resolved one after another: pass ``k`` runs every tile up to
norm layer ``k`` (norms ``0..k-1`` use the whole-plane statistics found by the earlier
passes) and accumulates that layer's per-channel sums over the tile's *core* only. A
last pass runs every tile through the whole net with all statistics fixed and keeps
its core. Tiles carry a halo wider than the receptive field (about 62 px), so the
reflection padding at a tile's inner edges never reaches its core.

Memory is bounded by one tile plus its halo; the price is about 8 forward passes'
worth of compute, so tiling is only used for planes larger than the tile size.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

#: Receptive-field radius of NU-Net is ~62 px; halos are rounded up to a multiple of 4.
HALO = 64
#: Downsampling factor of the input of each InstanceNorm layer, in forward order.
NORM_SCALES = (1, 2, 4) + (4,) * 10 + (2, 1)
EPS = 1e-5

Norm = Callable[[int, torch.Tensor, torch.nn.Module], torch.Tensor]


class _Stop(Exception):
    """Raised by a statistics pass once the layer it measures has been reached."""


@dataclass(frozen=True)
class Tile:
    """A core region ``[y0, y1) x [x0, x1)`` and its haloed input window."""

    y0: int
    y1: int
    x0: int
    x1: int
    wy0: int
    wy1: int
    wx0: int
    wx1: int


def plan_tiles(height: int, width: int, tile_size: int, halo: int = HALO) -> list[Tile]:
    """Split a plane (sides multiples of 4) into core tiles with halos clipped to the plane."""
    step = max(4, tile_size - tile_size % 4)
    tiles = []
    for y0 in range(0, height, step):
        for x0 in range(0, width, step):
            y1, x1 = min(y0 + step, height), min(x0 + step, width)
            tiles.append(Tile(y0, y1, x0, x1, max(0, y0 - halo), min(height, y1 + halo),
                              max(0, x0 - halo), min(width, x1 + halo)))
    return tiles


def forward_with_norm(net: torch.nn.Module, x: torch.Tensor, norm: Norm) -> torch.Tensor:
    """Run NU-Net's layers with InstanceNorm replaced by ``norm(index, activation, layer)``."""
    y = torch.relu(norm(0, net.conv1(x), net.in1))
    y = torch.relu(norm(1, net.conv2(y), net.in2))
    y = torch.relu(norm(2, net.conv3(y), net.in3))
    k = 3
    for block in (net.res1, net.res2, net.res3, net.res4, net.res5):
        r = torch.relu(norm(k, block.conv1(y), block.in1))
        y = y + norm(k + 1, block.conv2(r), block.in2)
        k += 2
    y = torch.relu(norm(13, net.deconv1(y), net.in4))
    y = torch.relu(norm(14, net.deconv2(y), net.in5))
    return net.deconv3(y)


def _apply(x: torch.Tensor, stats: tuple[torch.Tensor, torch.Tensor], layer: torch.nn.Module) -> torch.Tensor:
    mean, invstd = stats
    scale = (invstd * layer.weight.float()).view(1, -1, 1, 1)
    shift = (layer.bias.float() - mean * invstd * layer.weight.float()).view(1, -1, 1, 1)
    return (x.float() * scale + shift).to(x.dtype)


def tiled_forward(net: torch.nn.Module, x: torch.Tensor, tile_size: int,
                  halo: int = HALO) -> torch.Tensor:
    """Whole-plane NU-Net output of ``x`` (shape ``(1, 1, H, W)``, H and W multiples of 4), by tiles.

    Parameters
    ----------
    net : torch.nn.Module
        A NU-Net (eager or TorchScript) with the layer names of :class:`nunet.NUNet`.
    x : torch.Tensor
        One plane in the training range.
    tile_size : int
        Core tile side (rounded down to a multiple of 4).
    halo : int
        Margin added around each core; must cover the receptive field.

    Returns
    -------
    torch.Tensor
        The raw (unclipped) output, equal to ``net(x)`` up to float rounding.
    """
    _, _, height, width = x.shape
    tiles = plan_tiles(height, width, tile_size, halo)
    stats: list[tuple[torch.Tensor, torch.Tensor]] = []

    for target in range(len(NORM_SCALES)):
        scale = NORM_SCALES[target]
        total: torch.Tensor | None = None
        for tile in tiles:
            acc: list[torch.Tensor] = []

            def norm(k: int, a: torch.Tensor, layer: torch.nn.Module, tile: Tile = tile) -> torch.Tensor:
                if k < target:
                    return _apply(a, stats[k], layer)
                core = a[:, :, (tile.y0 - tile.wy0) // scale:(tile.y1 - tile.wy0) // scale,
                         (tile.x0 - tile.wx0) // scale:(tile.x1 - tile.wx0) // scale].double()
                acc.append(torch.stack([core.sum(dim=(0, 2, 3)), (core * core).sum(dim=(0, 2, 3))]))
                raise _Stop

            try:
                forward_with_norm(net, _window(x, tile), norm)
            except _Stop:
                pass
            total = acc[0] if total is None else total + acc[0]
        count = height * width / scale**2
        mean = total[0] / count
        var = (total[1] / count - mean * mean).clamp_min(0.0)
        stats.append((mean.float(), torch.rsqrt(var + EPS).float()))

    out = torch.empty((1, 1, height, width), dtype=torch.float32, device=x.device)
    for tile in tiles:
        y = forward_with_norm(net, _window(x, tile), lambda k, a, layer: _apply(a, stats[k], layer))
        out[:, :, tile.y0:tile.y1, tile.x0:tile.x1] = y[:, :, tile.y0 - tile.wy0:tile.y1 - tile.wy0,
                                                        tile.x0 - tile.wx0:tile.x1 - tile.wx0].float()
    return out


def _window(x: torch.Tensor, tile: Tile) -> torch.Tensor:
    return x[:, :, tile.wy0:tile.wy1, tile.wx0:tile.wx1]
