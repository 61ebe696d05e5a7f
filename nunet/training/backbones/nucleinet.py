"""``nuclei-vgg``: a perceptual network that knows what a nucleus is (``nunet train --backbone nuclei-vgg``).

ImageNet features bring "what an object looks like" to the paper's content and morphological
losses. ``nuclei-vgg`` brings what a nucleus is instead: a small VGG (four blocks of two 3x3
convolutions, 32-64-128-128 channels, one grey input channel) trained on degraded ``nunet.data.synth``
images (illumination fields, haze, debris, intensity spread, few photons; training seeds only) to
predict what is known there, per pixel:

``foreground``  nuclei, with 1-px gaps between touching ones (:func:`nunet.training.targets.binary_mask`);
``boundary``    pixels whose 3x3 neighbourhood holds another label (nucleus edges and contacts);
``centre``      depth inside each nucleus, 0 at its edge and 1 at its innermost pixel.

Each block's last ReLU is a tap (full, 1/2, 1/4, 1/8 resolution); a 1x1 convolution per tap,
upsampled and summed (HED's side outputs), gives the three logits; binary cross-entropy trains
them. Frozen, the taps serve the training losses as VGG19's do (content tap: the second), so
NU-Net training itself stays self-supervised, as Cellpose 3 trains its restoration networks
through a segmentation network. The weights ship in ``models/backbones/nuclei-vgg.pt``
(``nunet train-backbone`` remakes them).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from nunet.errors import NUNetError

NAME = "nuclei-vgg"


CFG = (32, 32, "M", 64, 64, "M", 128, 128, "M", 128, 128)


TAPS = (4, 9, 14, 19)  # ends (exclusive) of the four blocks in vgg_features(CFG, 1)


HEADS = ("foreground", "boundary", "centre")


MEAN, STD = 0.5, 0.25  # input normalisation of grey images in 0..1


WEIGHTS_FILE = Path("backbones") / f"{NAME}.pt"  # inside a model folder (nunet.registry.models.model_dirs)


class NucleiNet(nn.Module):
    """The trainable network: the VGG blocks (``stages``) and one 1x1 head per tap."""

    def __init__(self) -> None:
        from nunet.training.backbones.vgg import split, vgg_features

        super().__init__()
        self.stages = split(vgg_features(CFG, in_channels=1), TAPS)
        widths = [[m.out_channels for m in stage if isinstance(m, nn.Conv2d)][-1] for stage in self.stages]
        self.heads = nn.ModuleList(nn.Conv2d(width, len(HEADS), 1) for width in widths)

    def forward(self, grey: torch.Tensor) -> torch.Tensor:
        """Logits ``(N, 3, H, W)`` of grey images ``(N, 1, H, W)`` in 0..255 (H, W multiples of 8)."""
        x = (grey / 255.0 - MEAN) / STD
        logits = torch.zeros((), device=grey.device)
        for stage, head in zip(self.stages, self.heads):
            x = stage(x)
            side = head(x)
            logits = logits + nn.functional.interpolate(side, size=grey.shape[-2:], mode="bilinear")
        return logits


def find_weights(path: str | Path | None = None) -> Path:
    """The weights file: ``path`` if given, else ``backbones/nuclei-vgg.pt`` in the model folders."""
    from nunet.registry.models import model_dirs

    if path is not None:
        if not Path(path).is_file():
            raise NUNetError(f"{path}: no such nuclei-vgg weights file")
        return Path(path)
    for folder in model_dirs():
        if (folder / WEIGHTS_FILE).is_file():
            return folder / WEIGHTS_FILE
    raise NUNetError(f"{WEIGHTS_FILE} not found in the model folders; remake it with `nunet train-backbone`")


def load_backbone(path: str | Path | None = None):
    """The frozen :class:`nunet.training.backbones.vgg.VGGBackbone` of trained ``nuclei-vgg`` weights
    (its taps, not its heads)."""
    from nunet.training.backbones.vgg import VGGBackbone, sha256

    file = find_weights(path)
    try:
        saved = torch.load(file, map_location="cpu", weights_only=True)
        net = NucleiNet()
        net.load_state_dict(saved["state"])
    except (OSError, RuntimeError, KeyError, TypeError) as error:
        raise NUNetError(f"{file}: not a nuclei-vgg weights file ({error})") from error
    return VGGBackbone(net.stages, 1, NAME, f"nunet.data.synth sha256:{sha256(file)}", (MEAN,), (STD,))
