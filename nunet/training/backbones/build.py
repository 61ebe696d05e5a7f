"""The perceptual backbones by name (``--backbone``): :func:`build_backbone` from a :class:`BackboneSpec`."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from nunet.errors import NUNetError
from nunet.training.backbones.vgg import (
    CAFFE_BGR_MEAN,
    CAFFE_STD,
    VGG16_CFG,
    VGG16_TAPS,
    Backbone,
    MultiScaleBackbone,
    VGGBackbone,
    find_hed_weights,
    find_vgg19_weights,
    hed_vgg16_state,
    sha256,
    split,
    vgg_features,
)

BACKBONES = ("vgg19", "random-vgg19", "random-multiscale", "hed-vgg16", "nuclei-vgg")


MULTISCALE_SIZES = (3, 5, 7, 11, 15, 23)


@dataclass(frozen=True)
class BackboneSpec:
    """Which backbone to build: name, seed of random ones, ImageNet weights options."""

    name: str = "random-vgg19"
    seed: int = 0
    vgg_weights: str | None = None
    download: bool = False


def build_backbone(spec: BackboneSpec) -> Backbone:
    """Build a frozen backbone from its spec."""
    if spec.name == "vgg19":
        path = find_vgg19_weights(spec.vgg_weights, spec.download)
        features = vgg_features()
        state = torch.load(path, map_location="cpu", weights_only=True)
        features.load_state_dict({k[len("features.") :]: v for k, v in state.items() if k.startswith("features.")})
        return VGGBackbone(split(features), 1, "vgg19", f"imagenet sha256:{sha256(path)}")
    if spec.name == "hed-vgg16":
        path = find_hed_weights(spec.vgg_weights)
        features = vgg_features(VGG16_CFG)
        features.load_state_dict(hed_vgg16_state(path, features))
        return VGGBackbone(
            split(features, VGG16_TAPS),
            1,
            "hed-vgg16",
            f"hed-bsds500 sha256:{sha256(path)}",
            CAFFE_BGR_MEAN,
            CAFFE_STD,
        )
    if spec.name == "nuclei-vgg":
        from nunet.training.backbones.nucleinet import load_backbone

        return load_backbone(spec.vgg_weights)
    generator = torch.Generator().manual_seed(spec.seed)
    if spec.name == "random-vgg19":
        features = vgg_features()
        for module in features:
            if isinstance(module, nn.Conv2d):
                fan_in = module.in_channels * module.kernel_size[0] * module.kernel_size[1]
                with torch.no_grad():
                    module.weight.normal_(0.0, (2.0 / fan_in) ** 0.5, generator=generator)
                    module.bias.zero_()
        return VGGBackbone(split(features), 1, "random-vgg19", f"seed {spec.seed}")
    if spec.name == "random-multiscale":
        stages = nn.ModuleList()
        for size in MULTISCALE_SIZES:
            conv = nn.Conv2d(3, 128, size, padding=size // 2)
            with torch.no_grad():
                conv.weight.uniform_(-1.0, 1.0, generator=generator).mul_((3.0 / (3 * size * size)) ** 0.5)
                conv.bias.zero_()
            stages.append(nn.Sequential(conv, nn.ReLU()))
        return MultiScaleBackbone(stages, 2, "random-multiscale", f"seed {spec.seed}")
    raise NUNetError(f"unknown backbone '{spec.name}'; use one of {', '.join(BACKBONES)}")
