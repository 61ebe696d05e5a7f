"""Start a student of other residual-block widths from a trained network's weights: keep each block's
strongest inner channels, or add inner channels that start silent."""

from __future__ import annotations

import torch

#: A residual block's parameters with one row per inner channel (the first convolution's outputs and their norm).
INNER_ROWS = ("conv1.conv.weight", "conv1.conv.bias", "in1.weight", "in1.bias")


def fit_residual_blocks(state: dict[str, torch.Tensor], shapes: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` fitted to the parameter shapes of ``shapes`` (a freshly initialised network's state
    dict) where its residual blocks have another number of channels between their two convolutions;
    other parameters are kept as they are.

    A narrower block keeps the inner channels with the largest ``(|scale| + max(shift, 0)) * |w|``:
    the channel's InstanceNorm scale and positive shift (what survives the ReLU) times the norm of
    the second convolution's weights reading it; channel order is preserved. A wider block keeps all
    of ``state``'s inner channels first and takes the new ones from ``shapes`` (their fresh
    initialisation), read by the second convolution with zero weights: the wider network starts by
    computing what ``state``'s did, and the new channels learn from there.

    Parameters
    ----------
    state : dict
        The trained network's parameters (e.g. a model file's state dict).
    shapes : dict
        The student's freshly initialised state dict.

    Returns
    -------
    dict
        Parameters that load strictly into the student.
    """
    out = dict(state)
    blocks = sorted({key.split(".")[0] for key in shapes if key.startswith("res")})
    for block in blocks:
        inner = shapes[f"{block}.conv1.conv.weight"].shape[0]
        had = state[f"{block}.conv1.conv.weight"].shape[0]
        reader = state[f"{block}.conv2.conv.weight"]  # (C, had, 3, 3)
        if had > inner:
            scale, shift = state[f"{block}.in1.weight"], state[f"{block}.in1.bias"]
            strength = (scale.abs() + shift.clamp(min=0)) * reader.flatten(2).norm(dim=(0, 2))
            keep = strength.topk(inner).indices.sort().values
            for name in INNER_ROWS:
                out[f"{block}.{name}"] = state[f"{block}.{name}"][keep].clone()
            out[f"{block}.conv2.conv.weight"] = reader[:, keep].clone()
        elif had < inner:
            for name in INNER_ROWS:
                out[f"{block}.{name}"] = torch.cat([state[f"{block}.{name}"], shapes[f"{block}.{name}"][had:]])
            silent = torch.zeros_like(shapes[f"{block}.conv2.conv.weight"][:, had:])
            out[f"{block}.conv2.conv.weight"] = torch.cat([reader, silent], dim=1)
    return out
