"""The NU-Net training losses (paper eq. 1-3).

- Gram matrix of a feature map F (C x HW): G = F F^T / (C * H * W).
- Content loss: MSE between the features of output and input at the content tap (relu3_4).
- Morphological loss: for each tap, the MSE between the output's Gram and the Grams of a
  mini-batch of blob-mask targets, averaged over the targets; summed over taps; averaged over
  the content batch. (The paper's eq. 2 also divides by the number of taps; that constant is
  absorbed by the dry-run balancing.)
- Total: content + w * scale * morphological, where ``scale`` comes from the dry run so that
  both terms start with the same magnitude.
- Blob responses (not in the paper; for distilling a fast student, docs/experiments/27): the
  scale-normalised LoG that the evaluation's blob detection reads, so a student can learn how
  strongly the teacher's blobs answer it.

Target Grams are fixed: :class:`TargetGrams` precomputes them once, and the average over a
sampled target batch uses mean_s ||G - G_s||^2 = ||G||^2 - 2 <G, mean_s G_s> + mean_s ||G_s||^2.
"""

from __future__ import annotations

import math

import torch

#: The scales of :func:`blob_responses`, in multiples of ``radius / sqrt(2)``: the two ends and the middle of the
#: evaluation's detection scales (nunet.evaluation.metrics.SIGMA_RANGE; training does not import evaluation).
BLOB_SCALES = (0.5, 1.0, 1.5)


def gram(features: torch.Tensor) -> torch.Tensor:
    """Gram matrices (N, C, C) of features (N, C, H, W), normalised by C * H * W."""
    n, c, h, w = features.shape
    return _Gram.apply(features.reshape(n, c, h * w), 1.0 / (c * h * w))


class _Gram(torch.autograd.Function):
    """``G = s F F^T`` with the gradient ``s (dG + dG^T) F``: one matrix product in the backward
    pass instead of autograd's two (one per operand) and the sum of two feature-sized gradients."""

    @staticmethod
    def forward(ctx, flat: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.save_for_backward(flat)
        ctx.scale = scale
        return flat @ flat.transpose(1, 2) * scale

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        (flat,) = ctx.saved_tensors
        return ((grad + grad.transpose(1, 2)) * ctx.scale) @ flat, None


def content_loss(output_features: torch.Tensor, input_features: torch.Tensor) -> torch.Tensor:
    """MSE between the feature maps of output and input at one tap."""
    return torch.mean((output_features - input_features) ** 2)


class TargetGrams:
    """Precomputed Grams of a bank of blob-mask targets, one tensor (S, C, C) per tap."""

    def __init__(self, grams: list[torch.Tensor]) -> None:
        self.grams = grams

    @classmethod
    @torch.no_grad()
    def from_masks(cls, backbone: torch.nn.Module, masks: torch.Tensor, chunk: int = 8) -> "TargetGrams":
        """Grams of ``masks`` (S, 1, H, W) with values 0/255 through ``backbone``."""
        per_tap: list[list[torch.Tensor]] = []
        for start in range(0, len(masks), chunk):
            for i, features in enumerate(backbone(masks[start : start + chunk])):
                if len(per_tap) <= i:
                    per_tap.append([])
                per_tap[i].append(gram(features))
        return cls([torch.cat(g) for g in per_tap])

    def __len__(self) -> int:
        return len(self.grams[0])


def morphological_loss(
    output_features: list[torch.Tensor], targets: TargetGrams, index: torch.Tensor | None = None
) -> torch.Tensor:
    """Mean over the output batch and the selected targets of the Gram MSE, summed over taps.

    Parameters
    ----------
    output_features : list of Tensor
        The backbone's feature maps of the network output, one per tap.
    targets : TargetGrams
        The target bank.
    index : Tensor, optional
        Indices of the target mini-batch in the bank (default: every target).
    """
    total = output_features[0].new_zeros(())
    for features, bank in zip(output_features, targets.grams):
        chosen = bank if index is None else bank[index]
        g = gram(features)  # (N, C, C)
        mean_target = chosen.mean(dim=0)  # (C, C)
        target_sq = (chosen * chosen).sum(dim=(1, 2)).mean()
        per_output = (g * g).sum(dim=(1, 2)) - 2 * (g * mean_target).sum(dim=(1, 2)) + target_sq
        total = total + per_output.mean() / (g.shape[1] * g.shape[2])
    return total


def blob_responses(images: torch.Tensor, radius: float) -> torch.Tensor:
    """The scale-normalised Laplacian of Gaussian, ``-sigma^2 LoG``, of images ``(N, 1, H, W)`` at the
    scales the evaluation's blob detection reads for nuclei of ``radius`` px (``sigma`` = :data:`BLOB_SCALES`
    x ``radius / sqrt(2)``): ``(N, 3, H, W)``. A separable Gaussian (truncated at 3 sigma, reflected
    borders), then the 5-point Laplacian."""
    functional = torch.nn.functional
    laplace = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]], device=images.device)
    out = []
    for sigma in (scale * radius / math.sqrt(2.0) for scale in BLOB_SCALES):
        half = math.ceil(3 * sigma)
        offsets = torch.arange(-half, half + 1, device=images.device, dtype=images.dtype)
        taps = torch.exp(-(offsets**2) / (2 * sigma**2))
        taps = taps / taps.sum()
        x = functional.pad(images, (half, half, half, half), mode="reflect")
        x = functional.conv2d(functional.conv2d(x, taps.view(1, 1, 1, -1)), taps.view(1, 1, -1, 1))
        x = functional.conv2d(functional.pad(x, (1, 1, 1, 1), mode="replicate"), laplace.view(1, 1, 3, 3))
        out.append(-(sigma**2) * x)
    return torch.cat(out, dim=1)
