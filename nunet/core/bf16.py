"""A model's network run natively in bf16 on a CPU: bf16 weights, channels-last activations.

Under ``torch.autocast`` every convolution casts its weights and input to bf16 on each call, the
layers autocast keeps in fp32 (reflection padding among them) cast their input back, and oneDNN
reorders each NCHW activation into the blocked layout its AMX kernels read and back again.
Measured on a 2-core AMX Xeon (``nunet-v8``, 400x400 plane): fp32 178 ms, autocast bf16 110-128 ms,
while the convolutions alone run near the bf16 matmul ceiling (8.8x fp32's) once their operands
stay bf16 and channels-last. :class:`Bf16Net` runs the published layer sequence
(:data:`nunet.core.model.ENCODER`, the residual blocks, :data:`~nunet.core.model.DECODER`,
:data:`~nunet.core.model.OUTPUT`) that way: the weights converted once, every activation bf16 in
channels-last memory, the InstanceNorm statistics taken in fp32 by ``group_norm``'s kernel, and
the output convolution accumulated in fp32 (:func:`nunet.core.model.single_output_conv`). Same
function as the model file's module; its [0, 1] output differs from fp32 as much as autocast's
does (largest pixel error 0.004-0.02 by model and plane, for both), and ``auto`` keeps fp32 where its
probe plane is further than ``nunet.core.autotune.AUTO_TOLERANCE``.

Used for whole-plane passes on a CPU at ``bf16`` (:meth:`nunet.core.modelfile.LoadedModel.network`);
tiled passes (:mod:`nunet.core.tiling`) and GPUs keep autocast on the model file's module.
"""

from __future__ import annotations

import torch
from torch import nn

from nunet.core.model import (
    DECODER,
    ENCODER,
    OUTPUT,
    RESIDUAL,
    ConvSpec,
    phase_kernels_2x2,
    residual_blocks,
    single_output_conv,
)

EPS = 1e-5  # InstanceNorm2d's


def expected_keys(blocks: list[str]) -> set[str]:
    """The state-dict keys of a NU-Net with these residual blocks: a weight and a bias per layer."""
    convs = [spec.path for spec in (*ENCODER, *DECODER, OUTPUT)]
    norms = [spec.norm for spec in (*ENCODER, *DECODER) if spec.norm]
    for block in blocks:
        convs += [f"{block}.{spec.path}" for spec in RESIDUAL]
        norms += [f"{block}.{spec.norm}" for spec in RESIDUAL]
    return {f"{path}.{kind}" for path in convs + norms for kind in ("weight", "bias")}


def phase_kernels(weight: torch.Tensor) -> torch.Tensor:
    """A 3x3 convolution's weight ``(C_out, C_in, 3, 3)`` after nearest x2 upsampling, as the
    ``(4 C_out, C_in, 3, 3)`` weight of one 3x3 convolution on the replicate-padded low-resolution
    grid: output channel ``(2a + b) C_out + c`` is output pixel ``(2i + a, 2j + b)`` of channel ``c``.

    The phases' 2x2 kernels (:func:`nunet.core.model.phase_kernels_2x2`) sit at offset ``(a, b)``
    of the 3x3 window: 2.25x the multiply-adds, but one convolution, which AMX ran faster than four
    2x2 ones (the one 2x2 convolution with a channel per phase that fp32 uses has not been measured
    on AMX).
    """
    channels = weight.shape[0]
    phases = phase_kernels_2x2(weight)
    kernels = torch.zeros((4, *weight.shape), dtype=weight.dtype)
    for a in range(2):
        for b in range(2):
            first = (2 * a + b) * channels
            kernels[2 * a + b, :, :, a : a + 2, b : b + 2] = phases[first : first + channels]
    return kernels.flatten(0, 1)


class Bf16Net:
    """A NU-Net's layers in native bf16 (see the module docstring); called like the module it
    was built from: ``(N, 1, H, W)`` float32 in, float32 out.

    Parameters
    ----------
    module : torch.nn.Module
        A NU-Net (a model file's TorchScript module or :class:`nunet.core.model.NUNet`) on the CPU.

    Raises
    ------
    ValueError
        When ``module``'s parameters are not those of the published layer sequence (a network of
        another shape: run it under autocast instead).
    """

    def __init__(self, module: nn.Module) -> None:
        state = {key: value.detach().cpu() for key, value in module.state_dict().items()}
        self.blocks = residual_blocks(module)
        if set(state) != expected_keys(self.blocks):
            raise ValueError("not NU-Net's layer sequence")
        self.weights = {
            key: value.to(torch.bfloat16).contiguous(memory_format=torch.channels_last)
            if value.dim() == 4
            else value.to(torch.bfloat16)
            for key, value in state.items()
        }
        self.rows = {  # (C_out, 1, k, k) as (C_out, k, 1, k): one input channel per kernel row
            spec.path: self.weights[f"{spec.path}.weight"].transpose(1, 2).contiguous(memory_format=torch.channels_last)
            for spec in ENCODER
            if state[f"{spec.path}.weight"].shape[1] == 1 and spec.stride == 1
        }
        self.phases = {
            spec.path: phase_kernels(state[f"{spec.path}.weight"])
            .to(torch.bfloat16)
            .contiguous(memory_format=torch.channels_last)
            for spec in DECODER
        }

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast("cpu", enabled=False):
            y = x.to(torch.bfloat16).contiguous(memory_format=torch.channels_last)
            for spec in ENCODER:
                y = self._norm(self._conv(y, spec.path, spec), spec.norm, relu=True)
            for block in self.blocks:
                first, second = RESIDUAL
                z = self._norm(self._conv(y, f"{block}.{first.path}", first), f"{block}.{first.norm}", relu=True)
                y = y + self._norm(self._conv(z, f"{block}.{second.path}", second), f"{block}.{second.norm}")
            for spec in DECODER:
                y = self._norm(self._upsample_conv(y, spec.path), spec.norm, relu=True)
            return self._conv(y, OUTPUT.path, OUTPUT)

    def _conv(self, x: torch.Tensor, path: str, spec: ConvSpec) -> torch.Tensor:
        """Reflection padding and the convolution at ``path``.

        Two layers are rearranged, as oneDNN runs convolutions with one input or one output
        channel far below its rate: the first (one grey channel in) reads a stack of the ``k``
        row-shifted planes with ``1 x k`` kernels, the output layer (one channel out) sums row
        convolutions in fp32 (:func:`nunet.core.model.single_output_conv`).
        """
        k = spec.kernel
        padded = nn.functional.pad(x, [k // 2] * 4, mode="reflect")
        weight, bias = self.weights[f"{path}.weight"], self.weights[f"{path}.bias"]
        if spec is OUTPUT:
            return single_output_conv(padded, weight, bias)
        if path in self.rows:
            height = padded.shape[-2] - k + 1
            shifted = torch.cat([padded[:, :, r : r + height] for r in range(k)], 1)
            return nn.functional.conv2d(shifted.contiguous(memory_format=torch.channels_last), self.rows[path], bias)
        return nn.functional.conv2d(padded, weight, bias, stride=spec.stride)

    def _upsample_conv(self, x: torch.Tensor, path: str) -> torch.Tensor:
        """Nearest x2 upsampling and the 3x3 convolution at ``path``, as one 3x3 convolution on the
        low-resolution grid with an output channel per phase (:func:`phase_kernels`), whose
        ``(h, w, 2, 2, C)`` result is interleaved into a channels-last ``(N, C, 2h, 2w)``."""
        n, _, h, w = x.shape
        padded = nn.functional.pad(x, [1, 1, 1, 1], mode="replicate")
        phases = nn.functional.conv2d(padded, self.phases[path], self.weights[f"{path}.bias"].repeat(4))
        channels = phases.shape[1] // 4
        pixels = phases.permute(0, 2, 3, 1).view(n, h, w, 2, 2, channels).permute(0, 1, 3, 2, 4, 5)
        return pixels.reshape(n, 2 * h, 2 * w, channels).permute(0, 3, 1, 2)

    def _norm(self, x: torch.Tensor, path: str | None, relu: bool = False) -> torch.Tensor:
        """The InstanceNorm at ``path`` (a GroupNorm of one channel per group), then ReLU in place."""
        y = nn.functional.group_norm(x, x.shape[1], self.weights[f"{path}.weight"], self.weights[f"{path}.bias"], EPS)
        return torch.relu_(y) if relu else y
