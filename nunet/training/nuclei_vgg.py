"""Training the ``nuclei-vgg`` backbone (``nunet train-backbone``): foreground, boundary and centre
heads on degraded synthetic nuclei (the network is :mod:`nunet.training.backbones.nucleinet`).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from nunet.errors import NUNetError
from nunet.training.backbones.nucleinet import NucleiNet


def targets(labels: np.ndarray) -> np.ndarray:
    """The three per-pixel targets ``(3, H, W)`` in 0..1 of a label image (see the module docstring)."""
    from scipy import ndimage as ndi

    from nunet.training.config import DOME_FLOOR
    from nunet.training.targets import binary_mask, dome_mask

    labels = np.asarray(labels).astype(np.int64)
    foreground = binary_mask(labels, separate_touching=True)
    boundary = (labels > 0) & (ndi.grey_dilation(labels, size=3) != ndi.grey_erosion(labels, size=3))
    centre = np.clip((dome_mask(labels) / 255.0 - DOME_FLOOR) / (1.0 - DOME_FLOOR), 0.0, 1.0) * foreground
    return np.stack([foreground, boundary.astype(np.float32), centre]).astype(np.float32)


@dataclass(frozen=True)
class BackboneTraining:
    """Options of ``nunet train-backbone``; the bank is :func:`nunet.training.data.supervised_bank`'s."""

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
    from nunet.training.config import TrainConfig
    from nunet.training.data import degraded_crop, supervised_bank

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
