"""NU-Net in the published layers' plain form, for exporters (ONNX) that reject nunet's CPU-fast forms.

:class:`nunet.core.model.NUNet` computes InstanceNorm as a GroupNorm, each upsampling convolution on
the low-resolution grid and the output convolution as row convolutions: the same function, but
ONNX's exporter rejects ``group_norm(x, x.shape[1])``. :class:`PlainNUNet` has the same parameter
names and computes the published layers directly (instance norm, nearest x2 upsampling then a
3x3 convolution, a 9x9 output convolution), so the state dict of any nunet model, TorchScript
included, loads into it strictly and gives the same output up to float rounding.
"""

from __future__ import annotations

import torch
from torch import nn

from nunet.core.model import ConvLayer  # reflection padding + convolution: already the plain form


class _Upsample(nn.Module):
    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = ConvLayer(in_channels, out_channels, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(nn.functional.interpolate(x, scale_factor=2.0, mode="nearest"))


def _norm(channels: int) -> nn.InstanceNorm2d:
    return nn.InstanceNorm2d(channels, affine=True)


class _Residual(nn.Module):
    def __init__(self, channels: int, inner: int) -> None:
        super().__init__()
        self.conv1, self.in1 = ConvLayer(channels, inner, 3), _norm(inner)
        self.conv2, self.in2 = ConvLayer(inner, channels, 3), _norm(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.in2(self.conv2(torch.relu(self.in1(self.conv1(x)))))


class PlainNUNet(nn.Module):
    """The published NU-Net layers in plain form (see module docstring); input (N, 1, H, W) in 0..255.
    ``widths`` and ``blocks`` as the network's (:class:`nunet.core.model.NUNet`: (32, 64, 128), 5);
    ``inner``: the channels inside each residual block (default: the quarter-resolution width)."""

    def __init__(self, widths: tuple[int, int, int] = (32, 64, 128), blocks: int = 5, inner: int | None = None) -> None:
        super().__init__()
        full, half, quarter = widths
        self.conv1, self.in1 = ConvLayer(1, full, 9), _norm(full)
        self.conv2, self.in2 = ConvLayer(full, half, 3, stride=2), _norm(half)
        self.conv3, self.in3 = ConvLayer(half, quarter, 3, stride=2), _norm(quarter)
        self.blocks = [f"res{i}" for i in range(1, blocks + 1)]
        for name in self.blocks:
            setattr(self, name, _Residual(quarter, inner or quarter))
        self.deconv1, self.in4 = _Upsample(quarter, half), _norm(half)
        self.deconv2, self.in5 = _Upsample(half, full), _norm(full)
        self.deconv3 = ConvLayer(full, 1, 9)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.in1(self.conv1(x)))
        y = torch.relu(self.in2(self.conv2(y)))
        y = torch.relu(self.in3(self.conv3(y)))
        for name in self.blocks:  # traced for ONNX, never scripted
            y = getattr(self, name)(y)
        y = torch.relu(self.in4(self.deconv1(y)))
        y = torch.relu(self.in5(self.deconv2(y)))
        return self.deconv3(y)


def plain_twin(module: torch.nn.Module) -> PlainNUNet:
    """A :class:`PlainNUNet` of ``module``'s widths and blocks holding its parameters (loaded
    strictly), in eval mode on the CPU."""
    state = {k: v.detach().cpu() for k, v in module.state_dict().items()}
    widths = tuple(int(state[f"{layer}.conv.weight"].shape[0]) for layer in ("conv1", "conv2", "conv3"))
    blocks = len({key.split(".")[0] for key in state if key.startswith("res")})
    inner = int(state["res1.conv1.conv.weight"].shape[0]) if blocks else None
    twin = PlainNUNet(widths, blocks, inner)
    twin.load_state_dict(state, strict=True)
    return twin.eval()
