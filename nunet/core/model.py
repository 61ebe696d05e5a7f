"""The NU-Net network: Johnson et al.'s TransformerNet with one grey channel in and out.

The layer sequence below (``ENCODER``, ``RESIDUAL_BLOCKS`` with ``RESIDUAL``, ``DECODER``,
``OUTPUT``: module paths, kernels, strides and the InstanceNorm after each convolution) is part
of the model format: :mod:`nunet.core.tiling` walks it to run seam-free tiled inference on any
TorchScript model saved from :class:`NUNet`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional

import torch
from torch import nn


@dataclass(frozen=True)
class ConvSpec:
    """One convolution of NU-Net: its module path, kernel, stride, whether nearest x2 upsampling
    comes before it, and the path of the InstanceNorm that follows it (None: none)."""

    path: str
    kernel: int
    stride: int = 1
    upsample: bool = False
    norm: Optional[str] = None


ENCODER = (
    ConvSpec("conv1.conv", 9, norm="in1"),
    ConvSpec("conv2.conv", 3, 2, norm="in2"),
    ConvSpec("conv3.conv", 3, 2, norm="in3"),
)
#: The residual blocks of :class:`NUNet` (a model file may hold fewer: :func:`residual_blocks`).
RESIDUAL_BLOCKS = ("res1", "res2", "res3", "res4", "res5")
#: The two convolutions of each residual block, relative to the block.
RESIDUAL = (ConvSpec("conv1.conv", 3, norm="in1"), ConvSpec("conv2.conv", 3, norm="in2"))
DECODER = (
    ConvSpec("deconv1.conv.conv", 3, upsample=True, norm="in4"),
    ConvSpec("deconv2.conv.conv", 3, upsample=True, norm="in5"),
)
OUTPUT = ConvSpec("deconv3.conv", 9)


class InstanceNorm(nn.InstanceNorm2d):
    """Affine InstanceNorm2d computed as a GroupNorm with one group per channel (the same function).

    GroupNorm's kernels take the statistics in fp32 for bf16/fp16 inputs too and return the
    input's dtype, so under autocast the next convolution needs no cast; on a CPU they are
    several times faster than ``instance_norm``. Under CUDA autocast ``group_norm`` runs in fp32.
    """

    def __init__(self, channels: int) -> None:
        super().__init__(channels, affine=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.group_norm(x, x.shape[1], self.weight, self.bias, self.eps)


class ConvLayer(nn.Module):
    """Reflection padding of ``kernel_size // 2`` followed by a convolution."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1) -> None:
        super().__init__()
        self.pad = nn.ReflectionPad2d(kernel_size // 2)
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.pad(x))


class UpsampleConvLayer(nn.Module):
    """Nearest-neighbour x2 upsampling followed by a 3x3 :class:`ConvLayer`.

    Computed on the low-resolution grid by :func:`upsample_conv3x3` (same result, 2.25x
    fewer multiply-adds than upsampling first).
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = ConvLayer(in_channels, out_channels, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        padded = nn.functional.pad(x, [1, 1, 1, 1], mode="replicate")
        return upsample_conv3x3(padded, self.conv.conv.weight, self.conv.conv.bias)


class OutputLayer(ConvLayer):
    """The last :class:`ConvLayer` (one output channel), run by :func:`single_output_conv`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return single_output_conv(self.pad(x), self.conv.weight, self.conv.bias)


def upsample_conv3x3(padded: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
    """Nearest x2 upsampling, reflection padding by 1 and a 3x3 convolution, on the low-res grid.

    Parameters
    ----------
    padded : torch.Tensor
        The low-resolution input ``(N, C, h + 2, w + 2)``, padded by 1 pixel with
        *replicated* borders (the reflection of the upsampled image at its border repeats
        the border pixel of the low-resolution one).
    weight, bias : torch.Tensor
        The 3x3 convolution's parameters.

    Returns
    -------
    torch.Tensor
        ``(N, C_out, 2h, 2w)``. Output row ``2i`` reads upsampled rows ``2i-1, 2i, 2i+1``,
        i.e. low-res rows ``i-1, i, i``; row ``2i+1`` reads ``i, i, i+1``. Each of the four
        output phases ``(a, b)`` is therefore a 2x2 convolution with summed taps
        (:func:`phase_kernels_2x2`) read at offset ``(a, b)`` of the padded grid. The four run
        as one 2x2 convolution with ``4 C_out`` output channels over the ``(h + 1, w + 1)``
        grid (on a 2-core Xeon oneDNN ran it 1.3-1.8x as fast as four convolutions of
        ``C_out`` channels; the extra row and column cost ``1/h + 1/w``); the phases are
        interleaved into the output.
    """
    n, h, w = padded.shape[0], padded.shape[-2] - 2, padded.shape[-1] - 2
    channels = weight.shape[0]
    phases = nn.functional.conv2d(padded, phase_kernels_2x2(weight), None if bias is None else bias.repeat(4))
    out = torch.empty((n, channels, h, 2, w, 2), dtype=phases.dtype, device=padded.device)
    for a in range(2):
        for b in range(2):
            first = (2 * a + b) * channels
            out[:, :, :, a, :, b] = phases[:, first : first + channels, a : a + h, b : b + w]
    return out.view(n, channels, 2 * h, 2 * w)


def phase_kernels_2x2(weight: torch.Tensor) -> torch.Tensor:
    """A 3x3 convolution's weight ``(C_out, C_in, 3, 3)`` after nearest x2 upsampling, as the four
    phases' 2x2 kernels ``(4 C_out, C_in, 2, 2)``: output channel ``(2a + b) C_out + c`` is output
    pixel ``(2i + a, 2j + b)`` of channel ``c``, read at ``(i + a, j + b)`` of the padded grid."""
    rows = [
        torch.stack([weight[:, :, 0], weight[:, :, 1] + weight[:, :, 2]], 2),
        torch.stack([weight[:, :, 0] + weight[:, :, 1], weight[:, :, 2]], 2),
    ]
    kernels: list[torch.Tensor] = []
    for a in range(2):
        r = rows[a]
        kernels.append(torch.stack([r[..., 0], r[..., 1] + r[..., 2]], 3))
        kernels.append(torch.stack([r[..., 0] + r[..., 1], r[..., 2]], 3))
    return torch.cat(kernels, 0)


def single_output_conv(padded: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
    """A ``k x k`` convolution with one output channel (no padding), as ``k`` row convolutions.

    oneDNN runs a 32->1 9x9 convolution at a small fraction of the CPU's speed. Here one
    convolution with ``k`` output channels (``1 x k`` kernels, one per kernel row) gives each
    row's contribution, and the output is the sum of those planes shifted by their row
    offsets (accumulated in fp32).
    """
    k = weight.shape[-1]
    h, w = padded.shape[-2] - k + 1, padded.shape[-1] - k + 1
    rows = nn.functional.conv2d(padded, weight[0].permute(1, 0, 2).unsqueeze(2)).contiguous()  # (channels-last in)
    out = torch.zeros((padded.shape[0], h, w), dtype=torch.float32, device=padded.device)
    if bias is not None:
        out += bias.float()
    for r in range(k):
        out += rows[:, r, r : r + h]
    return out[:, None]


class ResidualBlock(nn.Module):
    """conv3x3-IN-ReLU-conv3x3-IN plus the input, with no activation after the sum; ``inner``
    channels between the two convolutions (default: ``channels``)."""

    def __init__(self, channels: int, inner: Optional[int] = None) -> None:
        super().__init__()
        inner = inner or channels
        self.conv1 = ConvLayer(channels, inner, 3)
        self.in1 = InstanceNorm(inner)
        self.conv2 = ConvLayer(inner, channels, 3)
        self.in2 = InstanceNorm(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu_(self.in1(self.conv1(x)))
        return x + self.in2(self.conv2(y))


class NUNet(nn.Module):
    """The NU-Net filter (1,668,865 parameters with the default ``widths``).

    Input: a batch of grey planes ``(N, 1, H, W)`` in the training range 0..255, with
    ``H`` and ``W`` multiples of 4. Output: the same shape, unclipped; clip to 0..255
    and divide by 255 to get the filtered image (:func:`nunet.enhance` does this).
    ``widths`` are the channels at full, half and quarter resolution (the residual trunk's last);
    ``inner`` the channels inside each residual block (default: the quarter-resolution width).
    """

    def __init__(self, widths: tuple[int, int, int] = (32, 64, 128), inner: Optional[int] = None) -> None:
        super().__init__()
        full, half, quarter = widths
        self.conv1 = ConvLayer(1, full, 9)
        self.in1 = InstanceNorm(full)
        self.conv2 = ConvLayer(full, half, 3, stride=2)
        self.in2 = InstanceNorm(half)
        self.conv3 = ConvLayer(half, quarter, 3, stride=2)
        self.in3 = InstanceNorm(quarter)
        self.res1 = ResidualBlock(quarter, inner)
        self.res2 = ResidualBlock(quarter, inner)
        self.res3 = ResidualBlock(quarter, inner)
        self.res4 = ResidualBlock(quarter, inner)
        self.res5 = ResidualBlock(quarter, inner)
        self.deconv1 = UpsampleConvLayer(quarter, half)
        self.in4 = InstanceNorm(half)
        self.deconv2 = UpsampleConvLayer(half, full)
        self.in5 = InstanceNorm(full)
        self.deconv3 = OutputLayer(full, 1, 9)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu_(self.in1(self.conv1(x)))
        y = torch.relu_(self.in2(self.conv2(y)))
        y = torch.relu_(self.in3(self.conv3(y)))
        y = self.res5(self.res4(self.res3(self.res2(self.res1(y)))))
        y = torch.relu_(self.in4(self.deconv1(y)))
        y = torch.relu_(self.in5(self.deconv2(y)))
        return self.deconv3(y)


class NUNetFast(NUNet):
    """NU-Net with half the channels (16, 32, 64) and four residual blocks: 4.4x fewer multiply-adds
    (the ``nunet-fast`` family, distilled from the default; same layer names, so tiling and the
    plain twin work unchanged)."""

    def __init__(self, inner: Optional[int] = None) -> None:
        super().__init__(widths=(16, 32, 64), inner=inner)
        del self.res5

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu_(self.in1(self.conv1(x)))
        y = torch.relu_(self.in2(self.conv2(y)))
        y = torch.relu_(self.in3(self.conv3(y)))
        y = self.res4(self.res3(self.res2(self.res1(y))))
        y = torch.relu_(self.in4(self.deconv1(y)))
        y = torch.relu_(self.in5(self.deconv2(y)))
        return self.deconv3(y)


class NUNetFastThin(NUNetFast):
    """:class:`NUNetFast` with 32 channels inside each residual block (the residual stream between
    the blocks keeps 64): 6.1x fewer multiply-adds than NU-Net, the ``nunet-fast`` family since
    the twentieth session (docs/experiments/24)."""

    def __init__(self) -> None:
        super().__init__(inner=32)


class NUNetFastMid(NUNetFast):
    """:class:`NUNetFast` with 48 channels inside each residual block (the residual stream keeps 64):
    5.1x fewer multiply-adds than NU-Net (docs/experiments/26)."""

    def __init__(self) -> None:
        super().__init__(inner=48)


#: The network architectures a model file may hold, by the name its metadata records (``architecture``).
ARCHITECTURES = {
    "nunet": NUNet,
    "nunet-fast": NUNetFast,
    "nunet-fast-48": NUNetFastMid,
    "nunet-fast-thin": NUNetFastThin,
}


def multiply_adds(net: nn.Module, side: int = 400) -> int:
    """Multiply-adds of every convolution ``net`` runs on one ``side`` x ``side`` plane (from the
    output sizes: run it on :func:`nunet.core.plain.plain_twin` for the published layers' cost)."""
    total = 0

    def count(module: nn.Module, inputs: object, output: torch.Tensor) -> None:
        nonlocal total
        total += output.numel() * module.in_channels * module.kernel_size[0] * module.kernel_size[1]

    hooks = [m.register_forward_hook(count) for m in net.modules() if isinstance(m, nn.Conv2d)]
    try:
        with torch.no_grad():
            net(torch.zeros((1, 1, side, side)))
    finally:
        for hook in hooks:
            hook.remove()
    return total


def residual_blocks(net: nn.Module) -> list[str]:
    """The names of a network's residual blocks in order (``res1``...; five for :class:`NUNet`)."""
    names = [name for name, _ in net.named_children() if name.startswith("res") and name[3:].isdigit()]
    return sorted(names, key=lambda name: int(name[3:]))


class Framed(nn.Module):
    """``net`` run as nunet runs a model trained with a frame: the input framed by ``pad`` px of
    ``fill``, the output cropped back (:func:`nunet.core.preprocess.frame_plane`), as one module for tools
    that only run weights (bioimage.io packages). Input sides are multiples of 4 and ``pad`` is even."""

    def __init__(self, net: nn.Module, pad: int, fill: str) -> None:
        super().__init__()
        self.net = net
        self.pad = pad
        self.fill = fill

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width, pad = x.shape[-2], x.shape[-1], self.pad
        framed = frame_tensor(x, [pad, pad, pad, pad], self.fill)
        return self.net(framed)[:, :, pad : pad + height, pad : pad + width]


def frame_tensor(x: torch.Tensor, pads: List[int], fill: str) -> torch.Tensor:
    """``x`` (N, C, H, W) padded by ``pads`` (left, right, top, bottom) with ``fill``: ``mean`` (each
    plane's), ``edge`` (its border pixels repeated) or ``zero``; :func:`nunet.core.preprocess.frame_plane`
    in torch."""
    if fill == "edge":
        return nn.functional.pad(x, pads, mode="replicate")
    if fill == "mean":
        mean = x.mean(dim=(-2, -1), keepdim=True)
        return nn.functional.pad(x - mean, pads) + mean
    return nn.functional.pad(x, pads)


def count_parameters(module: nn.Module) -> int:
    """Return the number of trainable parameters of ``module``."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def untrained(seed: int = 0) -> NUNet:
    """A seeded, randomly initialised NU-Net whose output spans the display range.

    Not a filter: it exercises pipelines (tests, demos) before trained weights are at hand.
    The last convolution is rescaled so that, on seeded noise, the output has mean 128
    and standard deviation 60 (a raw random init gives an almost constant output).
    """
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    net = NUNet().eval()
    probe = torch.rand((1, 1, 64, 64), generator=generator) * 255.0
    with torch.no_grad():
        raw = net(probe)
        scale = 60.0 / float(raw.std().clamp_min(1e-6))
        net.deconv3.conv.weight.mul_(scale)
        net.deconv3.conv.bias.mul_(scale).add_(128.0 - float(raw.mean()) * scale)
    return net
