"""Start a thinner student from a wider network's weights: keep each residual block's strongest inner channels."""

from __future__ import annotations

import torch


def thin_residual_blocks(state: dict[str, torch.Tensor], shapes: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` cut to the parameter shapes of ``shapes`` (a network's state dict) where its residual
    blocks have fewer channels between their two convolutions; other parameters are kept as they are.

    Each block keeps the inner channels with the largest ``(|scale| + max(shift, 0)) * |w|``: the
    channel's InstanceNorm scale and positive shift (what survives the ReLU) times the norm of the
    second convolution's weights reading it. Channel order is preserved.

    Parameters
    ----------
    state : dict
        The wider network's parameters (e.g. a model file's state dict).
    shapes : dict
        The thinner network's state dict (only its shapes are read).

    Returns
    -------
    dict
        Parameters that load strictly into the thinner network.
    """
    out = dict(state)
    blocks = sorted({key.split(".")[0] for key in shapes if key.startswith("res")})
    for block in blocks:
        inner = shapes[f"{block}.conv1.conv.weight"].shape[0]
        if state[f"{block}.conv1.conv.weight"].shape[0] == inner:
            continue
        scale, shift = state[f"{block}.in1.weight"], state[f"{block}.in1.bias"]
        reader = state[f"{block}.conv2.conv.weight"]  # (C, inner, 3, 3)
        strength = (scale.abs() + shift.clamp(min=0)) * reader.flatten(2).norm(dim=(0, 2))
        keep = strength.topk(inner).indices.sort().values
        for name in ("conv1.conv.weight", "conv1.conv.bias", "in1.weight", "in1.bias"):
            out[f"{block}.{name}"] = state[f"{block}.{name}"][keep].clone()
        out[f"{block}.conv2.conv.weight"] = reader[:, keep].clone()
    return out
