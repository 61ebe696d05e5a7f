"""``nuclei-vgg``: a perceptual network that knows what a nucleus is (``nunet train --backbone nuclei-vgg``).

ImageNet features bring "what an object looks like" to the paper's content and morphological
losses. ``nuclei-vgg`` brings what a nucleus is instead: a small VGG (four blocks of two 3x3
convolutions, 32-64-128-128 channels, one grey input channel) trained on degraded ``nunet.synth``
images (illumination fields, haze, debris, intensity spread, few photons; training seeds only) to
predict what is known there, per pixel:

``foreground``  nuclei, with 1-px gaps between touching ones (:func:`nunet.train.binary_mask`);
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

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from nunet.errors import NUNetError

NAME = "nuclei-vgg"
CFG = (32, 32, "M", 64, 64, "M", 128, 128, "M", 128, 128)
TAPS = (4, 9, 14, 19)  # ends (exclusive) of the four blocks in vgg_features(CFG, 1)
HEADS = ("foreground", "boundary", "centre")
MEAN, STD = 0.5, 0.25  # input normalisation of grey images in 0..1
WEIGHTS_FILE = Path("backbones") / f"{NAME}.pt"  # inside a model folder (nunet.registry.model_dirs)


class NucleiNet(nn.Module):
    """The trainable network: the VGG blocks (``stages``) and one 1x1 head per tap."""

    def __init__(self) -> None:
        from nunet.vgg import split, vgg_features

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


def targets(labels: np.ndarray) -> np.ndarray:
    """The three per-pixel targets ``(3, H, W)`` in 0..1 of a label image (see the module docstring)."""
    from scipy import ndimage as ndi

    from nunet.train import DOME_FLOOR, binary_mask, dome_mask

    labels = np.asarray(labels).astype(np.int64)
    foreground = binary_mask(labels, separate_touching=True)
    boundary = (labels > 0) & (ndi.grey_dilation(labels, size=3) != ndi.grey_erosion(labels, size=3))
    centre = np.clip((dome_mask(labels) / 255.0 - DOME_FLOOR) / (1.0 - DOME_FLOOR), 0.0, 1.0) * foreground
    return np.stack([foreground, boundary.astype(np.float32), centre]).astype(np.float32)


@dataclass(frozen=True)
class BackboneTraining:
    """Options of ``nunet train-backbone``; the bank is :func:`nunet.train.supervised_bank`'s."""

    steps: int = 2500
    batch: int = 8
    crop: int = 128
    lr: float = 1e-3
    seed: int = 0
    images: int = 32  # synthetic images per modality
    stacks: int = 4  # synthetic 3D stacks per modality (every plane joins the bank)
    time_limit_s: float = 0.0  # 0: no limit

    def validate(self) -> "BackboneTraining":
        if min(self.steps, self.batch, self.images) < 1 or self.stacks < 0 or self.crop < 16 or self.crop % 8:
            raise NUNetError("train-backbone: need steps, batch, images >= 1, stacks >= 0, crop a multiple of 8 >= 16")
        if self.lr <= 0 or self.time_limit_s < 0:
            raise NUNetError("train-backbone: need lr > 0 and time_limit_s >= 0")
        return self


def train_backbone(options: BackboneTraining, out: Path, progress=None) -> dict:
    """Train :class:`NucleiNet` and save its weights to ``out`` (atomically); return the summary.

    ``progress(step, total, loss)`` is called after each step. The file holds ``state`` (the
    state dict), ``training`` (the options) and ``log`` (loss per step).
    """
    from nunet._atomic import atomic_path
    from nunet.train import TrainConfig, degraded_crop, supervised_bank

    options.validate()
    bank_config = TrainConfig(
        crop=options.crop, seed=options.seed, supervised_images=options.images, supervised_stacks=options.stacks
    )
    bank = supervised_bank(bank_config)
    rng = np.random.default_rng([options.seed, 5])
    torch.manual_seed(options.seed)
    net = NucleiNet().train()
    optimiser = torch.optim.AdamW(net.parameters(), lr=options.lr)
    log: list[float] = []
    started = time.perf_counter()
    for step in range(1, options.steps + 1):
        crops = [degraded_crop(bank, options.crop, options.seed, rng) for _ in range(options.batch)]
        inputs = torch.from_numpy(np.stack([x for x, _ in crops])[:, None])
        wanted = torch.from_numpy(np.stack([targets(labels) for _, labels in crops]))
        loss = nn.functional.binary_cross_entropy_with_logits(net(inputs), wanted)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        log.append(loss.item())
        if progress:
            progress(step, options.steps, log[-1])
        if options.time_limit_s and time.perf_counter() - started > options.time_limit_s:
            break
    summary = {"training": asdict(options), "steps": len(log), "bank": len(bank), "log": log}
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        torch.save({"state": net.state_dict(), **summary}, tmp)
    return summary


def find_weights(path: str | Path | None = None) -> Path:
    """The weights file: ``path`` if given, else ``backbones/nuclei-vgg.pt`` in the model folders."""
    from nunet.registry import model_dirs

    if path is not None:
        if not Path(path).is_file():
            raise NUNetError(f"{path}: no such nuclei-vgg weights file")
        return Path(path)
    for folder in model_dirs():
        if (folder / WEIGHTS_FILE).is_file():
            return folder / WEIGHTS_FILE
    raise NUNetError(f"{WEIGHTS_FILE} not found in the model folders; remake it with `nunet train-backbone`")


def load_backbone(path: str | Path | None = None):
    """The frozen :class:`nunet.vgg.VGGBackbone` of trained ``nuclei-vgg`` weights (its taps, not its heads)."""
    from nunet.vgg import VGGBackbone, sha256

    file = find_weights(path)
    try:
        saved = torch.load(file, map_location="cpu", weights_only=True)
        net = NucleiNet()
        net.load_state_dict(saved["state"])
    except (OSError, RuntimeError, KeyError, TypeError) as error:
        raise NUNetError(f"{file}: not a nuclei-vgg weights file ({error})") from error
    return VGGBackbone(net.stages, 1, NAME, f"nunet.synth sha256:{sha256(file)}", (MEAN,), (STD,))
