"""Training data: content planes from folders, synthetic images and DSB nuclei; supervised and
real banks; random crops with the contrast augmentation; the bank of blob-mask targets.
"""

from __future__ import annotations

import math
from functools import partial
from pathlib import Path

import numpy as np
import torch

from nunet.core.preprocess import Frame
from nunet.data.synth import PRESETS, modality_index, nuclei_labels, synth_image, training_seed
from nunet.errors import NUNetError
from nunet.training.config import STACK_DEPTH, TrainConfig
from nunet.training.targets import binary_mask, cone_mask, dome_mask, soft_mask


def _planes_of(folder: Path, invert: bool) -> list[np.ndarray]:
    from nunet.core.preprocess import LUMA, invert_normalised, normalise_plane
    from nunet.io import OTHER_SUFFIXES, TIFF_SUFFIXES, read_image

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


def content_datasets(config: TrainConfig, real: list = ()) -> dict[str, list[np.ndarray]]:
    """Content planes (0..255) grouped by dataset name: the folders', each synthetic modality's and, with
    ``dsb_content``, the DSB images of ``real`` (:func:`real_bank`'s; ``dsb-MODALITY``, bright nuclei)."""
    from nunet.core.preprocess import invert_normalised, normalise_plane

    datasets = {}
    for folder in config.content_dirs:
        datasets[Path(folder).name] = _planes_of(Path(folder), folder in config.invert_dirs)
    for modality in dict.fromkeys(config.synthetic_modalities) if config.synthetic_content else ():  # each once
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
    if config.dsb_content:
        for item in distinct(real):
            datasets.setdefault(item.modality, []).append(normalise_plane(item.image))
    return datasets


def _degraded(image, seed: int, side: int, dark: bool) -> tuple[np.ndarray, np.ndarray]:
    """A synthetic image degraded by :func:`nunet.data.degrade.degrade` (in the bright-nuclei domain), at
    most ``side`` px, with its labels; dark-blob images are flipped for the degradation and back."""
    from nunet.data.degrade import Ranges, degrade_dark_aware

    done = degrade_dark_aware(image.image, image.labels, image.radius, seed, Ranges(max_side=side), dark)
    return done.image, done.labels


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
    ``synthetic_modalities`` at twice the crop side (a modality listed n times: n times as many, each
    with seeds of its own), and every plane of ``supervised_stacks`` 3D stacks of each (but ``cells``,
    a 2D modality; ``STACK_DEPTH`` planes, every ``stack_z_step``-th of a deeper stack, with the
    out-of-focus light of :func:`defocus`; training seeds only). Dark-blob images are flipped, as a
    user flips them with ``invert``: the network always sees bright nuclei."""
    from dataclasses import replace

    side = (config.crop * 2, config.crop * 2)
    step = config.stack_z_step
    depth = STACK_DEPTH * step
    images = []

    def aspect(i: int, n: int) -> float:  # the first aspect_share of n images get aspect_max
        return config.aspect_max if i < round(config.aspect_share * n) else 0.0

    for k, m in enumerate(config.synthetic_modalities):
        repeat = config.synthetic_modalities[:k].count(m)  # a modality listed again: as many new images
        for i in range(config.supervised_images):
            seed = training_seed(config.seed, 2, i, modality_index(m), *([repeat] if repeat else []))
            images.append(synth_image(m, side, seed=seed, aspect_max=aspect(i, config.supervised_images)))
        stacks = 0 if repeat or PRESETS[m].cells[1] else config.supervised_stacks  # cells: 2D only
        for i in range(stacks):
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
    as :class:`nunet.data.synth.SynthImage` items of the supervised bank, each once per listing of its
    modality."""
    from nunet.data import dsb
    from nunet.data.degrade import centroids_of
    from nunet.data.synth import SynthImage

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
        item = SynthImage(image, labels, centroids_of(labels), config.radius, f"dsb-{real.modality}")
        items += [item] * config.dsb_modalities.count(real.modality)  # listed n times: drawn n times as often
    if not items:
        raise NUNetError(f"{config.dsb_data}: no DSB training images of {', '.join(config.dsb_modalities)}")
    return items


def distinct(bank: list) -> list:
    """Each image of a bank once, in order (:func:`real_bank` lists an image once per listing of its
    modality, as the same object)."""
    return list({id(item): item for item in bank}.values())


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
    With ``real`` images (:func:`real_bank`), each crop comes from them with probability ``dsb_share``;
    a crop is left undegraded with probability ``clean_share``."""
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
    frame = Frame(config.frame_pad, config.frame_fill)
    for _ in range(config.supervised_batch):
        pool = real if real and rng.random() < config.dsb_share else bank
        clean = bool(config.clean_share) and rng.random() < config.clean_share  # no draw at 0: old recipes' crops kept
        x, labels = degraded_crop(pool, side, config.seed, rng, frame, degrade=not clean)
        inputs.append(x)
        targets.append(strength * target(labels) + (1.0 - strength) * np.clip(x, 0.0, 255.0))
    return torch.from_numpy(np.stack(inputs)[:, None]), torch.from_numpy(np.stack(targets)[:, None].astype(np.float32))


def degraded_crop(
    bank: list, crop: int, seed: int, rng: np.random.Generator, frame: Frame = Frame(), degrade: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """One image of ``bank`` degraded (:func:`nunet.data.degrade.degrade`, a fresh training seed; without
    ``degrade`` only cut at a random place), at most ``crop`` px, reflect-padded to ``crop`` x ``crop``,
    normalised to 0..255, randomly rotated and flipped; with its labels, moved alike. With a ``frame``
    (pad > 0) the normalised image is instead framed (:func:`nunet.core.preprocess.frame_plane`:
    ``frame.pad`` px on every side, and to ``crop`` at the bottom and right) as a model trained so is
    run, its labels framed by 0 (no nucleus)."""
    from nunet.core.preprocess import frame_plane, normalise_plane

    image = bank[rng.integers(len(bank))]
    if degrade:
        plane, labels = _degraded(image, training_seed(seed, 3, int(rng.integers(2**31))), crop, False)
    else:
        y0, x0 = (int(rng.integers(max(1, n - crop + 1))) for n in image.image.shape)
        window = np.s_[y0 : y0 + crop, x0 : x0 + crop]
        plane, labels = np.asarray(image.image[window], np.float32), image.labels[window]
    if frame.pad:
        x = frame_plane(normalise_plane(plane), frame, crop)
        labels = frame_plane(labels, Frame(frame.pad, "zero"), crop)
    else:
        pad = [(0, crop - plane.shape[0]), (0, crop - plane.shape[1])]
        x, labels = normalise_plane(np.pad(plane, pad, mode="reflect")), np.pad(labels, pad, mode="reflect")
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
