"""The NU-Net network: Johnson et al.'s TransformerNet with one grey channel in and out.

The layer names below are part of the model format: :mod:`nunet.tiling` walks them
to run seam-free tiled inference on any TorchScript model saved from this class.
"""

from __future__ import annotations

import torch
from torch import nn

#: Pixel range the network was trained on (inputs) and clips its output to.
TRAINING_RANGE = (0.0, 255.0)


class InstanceNorm(nn.InstanceNorm2d):
    """Affine InstanceNorm2d that computes in fp32 even under autocast (its output is fp32).

    Under bf16/fp16 autocast the convolutions run in low precision while every normalisation,
    statistics included, stays in fp32; the next convolution casts back.
    """

    def __init__(self, channels: int) -> None:
        super().__init__(channels, affine=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.instance_norm(x.float(), weight=self.weight, bias=self.bias, eps=self.eps)


class ConvLayer(nn.Module):
    """Reflection padding of ``kernel_size // 2`` followed by a convolution."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1) -> None:
        super().__init__()
        self.pad = nn.ReflectionPad2d(kernel_size // 2)
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.pad(x))


class UpsampleConvLayer(nn.Module):
    """Nearest-neighbour x2 upsampling followed by a :class:`ConvLayer`."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int) -> None:
        super().__init__()
        self.up = nn.Upsample(scale_factor=2.0, mode="nearest")
        self.conv = ConvLayer(in_channels, out_channels, kernel_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.up(x))


class ResidualBlock(nn.Module):
    """conv3x3-IN-ReLU-conv3x3-IN plus the input, with no activation after the sum."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = ConvLayer(channels, channels, 3)
        self.in1 = InstanceNorm(channels)
        self.conv2 = ConvLayer(channels, channels, 3)
        self.in2 = InstanceNorm(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.in1(self.conv1(x)))
        return x + self.in2(self.conv2(y))


class NUNet(nn.Module):
    """The NU-Net filter (1,668,865 parameters).

    Input: a batch of grey planes ``(N, 1, H, W)`` in the training range 0..255, with
    ``H`` and ``W`` multiples of 4. Output: the same shape, unclipped; clip to 0..255
    and divide by 255 to get the filtered image (:func:`nunet.enhance` does this).
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = ConvLayer(1, 32, 9)
        self.in1 = InstanceNorm(32)
        self.conv2 = ConvLayer(32, 64, 3, stride=2)
        self.in2 = InstanceNorm(64)
        self.conv3 = ConvLayer(64, 128, 3, stride=2)
        self.in3 = InstanceNorm(128)
        self.res1 = ResidualBlock(128)
        self.res2 = ResidualBlock(128)
        self.res3 = ResidualBlock(128)
        self.res4 = ResidualBlock(128)
        self.res5 = ResidualBlock(128)
        self.deconv1 = UpsampleConvLayer(128, 64, 3)
        self.in4 = InstanceNorm(64)
        self.deconv2 = UpsampleConvLayer(64, 32, 3)
        self.in5 = InstanceNorm(32)
        self.deconv3 = ConvLayer(32, 1, 9)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.in1(self.conv1(x)))
        y = torch.relu(self.in2(self.conv2(y)))
        y = torch.relu(self.in3(self.conv3(y)))
        y = self.res5(self.res4(self.res3(self.res2(self.res1(y)))))
        y = torch.relu(self.in4(self.deconv1(y)))
        y = torch.relu(self.in5(self.deconv2(y)))
        return self.deconv3(y)


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
