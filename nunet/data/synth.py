"""Seeded synthetic microscopy of nuclei with ground truth (labels and centroids).

Each image is built as: elliptic nuclei (touching allowed) with heterogeneous brightness
and inner texture -> background (haze, textured tissue, or bright fibres for THG-like images)
-> uneven illumination -> Gaussian PSF blur -> Poisson photon noise and Gaussian read noise.
The same seed gives the same image. Modalities:

``sparse``  few bright nuclei on a dark background, good signal-to-noise;
``dense``   packed, touching nuclei of varied size (tissue-like);
``thg``     dark nuclei on a bright textured background (third-harmonic generation-like);
``low_snr`` sparse nuclei with few photons;
``uneven``  strong illumination gradient and haze;
``thg_fibres`` dark nuclei among bright curved fibres, as in THG images of brain tissue, where
            the signal comes from myelinated axons and neurons appear as dark holes.
``cells``   brightfield of whole cells: on a bright background, large faint cells (3-7 times
            the nucleus radius, textured, darker at their folded rims, overlapping) each
            absorbing a little light around one dark nucleus, and dark specks of debris; with
            ``invert`` each cell is a broad dim blob around a bright nucleus, which a filter of
            nuclei must leave out (the DSB brightfield images' difficulty).

``MODALITIES`` is the default suite and the default synthetic training content (the first five;
``thg_fibres`` and ``cells`` were added later and are chosen by name, so earlier figures stay
comparable).

2D images are ``(Y, X)``; 3D stacks ``(Z, Y, X)`` with ellipsoidal nuclei.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

MODALITIES = ("sparse", "dense", "thg", "low_snr", "uneven")


@dataclass(frozen=True)
class Modality:
    """Parameters of one kind of synthetic image."""

    radius: tuple[float, float]  # nucleus semi-axis range (px)
    density: float  # fraction of the area covered by nuclei
    aspect: tuple[float, float]  # ratio of the two semi-axes
    photons: float  # expected photons at the brightest nucleus
    read_noise: float  # Gaussian noise, in photons
    background: float  # background level relative to nuclei (0..1)
    texture: float  # amplitude of background texture (relative)
    gradient: float  # illumination falloff across the field (0: flat)
    dark_blobs: bool = False  # nuclei darker than the background
    fibres: float = 0.0  # bright fibres per 256x256 area forming the background (0: none)
    cells: tuple[float, float] = (0.0, 0.0)  # radius range of a faint cell around each nucleus, in nucleus
    # radii (0: no cells); brightfield absorption: only with dark_blobs


PRESETS = {
    "sparse": Modality((5, 9), 0.08, (1.0, 1.4), 400, 3, 0.05, 0.05, 0.1),
    "dense": Modality((4, 8), 0.35, (1.0, 1.6), 300, 4, 0.1, 0.1, 0.2),
    "thg": Modality((5, 8), 0.15, (1.0, 1.3), 300, 4, 0.8, 0.6, 0.2, dark_blobs=True),
    "low_snr": Modality((5, 9), 0.1, (1.0, 1.4), 25, 4, 0.1, 0.1, 0.1),
    "uneven": Modality((5, 9), 0.12, (1.0, 1.4), 300, 3, 0.3, 0.2, 0.8),
    "thg_fibres": Modality((5, 8), 0.15, (1.0, 1.3), 300, 4, 0.5, 0.3, 0.2, dark_blobs=True, fibres=400),
    "cells": Modality((5, 9), 0.015, (1.0, 1.5), 300, 3, 0.85, 0.05, 0.15, dark_blobs=True, cells=(3.0, 7.0)),
}


@dataclass
class SynthImage:
    """A synthetic image and its ground truth."""

    image: np.ndarray  # float32 photon counts, (Y, X) or (Z, Y, X)
    labels: np.ndarray  # int32 nucleus labels, same shape (0: background)
    centroids: np.ndarray  # (N, ndim) centroids of the visible nuclei, label order
    radius: float  # mean nucleus semi-axis (px), for DoG / LoG scales
    modality: str


def synth_image(
    modality: str = "sparse", shape: tuple[int, ...] = (256, 256), seed: int = 0, aspect_max: float = 0.0
) -> SynthImage:
    """Generate one image of ``modality`` (see module docstring) with its ground truth; ``aspect_max``
    > 0 draws the nuclei's aspect ratios from 1 to it instead of the modality's range."""
    from dataclasses import replace

    modality_index(modality)  # an unknown name is an error
    p = PRESETS[modality]
    if p.cells[1] and len(shape) != 2:
        raise ValueError(f"modality '{modality}' is 2D only")
    if aspect_max:
        p = replace(p, aspect=(1.0, aspect_max))
    rng = np.random.default_rng(seed)
    labels, brightness = nuclei_labels(p, shape, rng)
    nuclei = brightness[labels] * (labels > 0)
    texture = 1.0 + 0.25 * _smooth_noise(shape, 2.0, rng)
    nuclei = nuclei * np.clip(texture, 0.3, None)
    if p.fibres:
        strands = fibres(shape, p.fibres, rng)
        background = (
            p.background
            * (0.3 + 0.7 * strands / (strands.mean() + 1e-12))
            * np.clip(1.0 + p.texture * _smooth_noise(shape, 12.0, rng), 0.2, None)
        )
    else:
        background = p.background * (
            1.0 + p.texture * _smooth_noise(shape, 3.0, rng) + 0.5 * p.texture * _smooth_noise(shape, 12.0, rng)
        )
    if p.dark_blobs:
        signal = np.clip(background, 0.05, None) * (1.0 - 0.7 * (labels > 0) * np.clip(texture, 0.5, 1.2))
        if p.cells[1]:
            signal = signal * (1.0 - cell_absorption(labels, p, rng))
    else:
        signal = np.clip(background, 0.0, None) + nuclei
    signal = signal * _illumination(shape, p.gradient, rng)
    signal = ndi.gaussian_filter(signal, sigma=1.2)
    counts = rng.poisson(np.clip(signal, 0, None) * p.photons) + rng.normal(0.0, p.read_noise, shape)
    present = np.unique(labels)
    present = present[present > 0]
    centroids = np.array(ndi.center_of_mass(labels > 0, labels, present)).reshape(-1, len(shape))
    return SynthImage(counts.astype(np.float32), labels, centroids, float(np.mean(p.radius)), modality)


def nuclei_labels(p: Modality, shape: tuple[int, ...], rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Labels of random ellipses/ellipsoids until ``density`` of the field is covered.

    Returns the labels and a brightness per label (index 0, the background, is 0).
    """
    labels = np.zeros(shape, dtype=np.int32)
    target = p.density * labels.size
    covered, label = 0, 0
    while covered < target and label < 10_000:
        label += 1
        centre = rng.uniform(0, shape)
        radius = rng.uniform(*p.radius)
        axes = np.full(len(shape), radius)
        axes[-1] *= rng.uniform(*p.aspect)
        if len(shape) == 3:
            axes[0] = radius * 0.8
        angle = rng.uniform(0, np.pi)
        # Only the ellipse's bounding box can be inside it: evaluate the distance there.
        reach = int(np.ceil(axes.max())) + 1
        box = tuple(slice(max(0, int(c) - reach), min(n, int(c) + reach + 1)) for c, n in zip(centre, shape))
        grids = np.meshgrid(*[np.arange(s.start, s.stop) for s in box], indexing="ij")
        dy, dx = grids[-2] - centre[-2], grids[-1] - centre[-1]
        u = dx * np.cos(angle) + dy * np.sin(angle)
        v = -dx * np.sin(angle) + dy * np.cos(angle)
        dist = (u / axes[-1]) ** 2 + (v / axes[-2]) ** 2
        if len(shape) == 3:
            dist = dist + ((grids[0] - centre[0]) / axes[0]) ** 2
        inside = dist <= 1.0
        window = labels[box]
        covered += int(inside.sum() - (window[inside] > 0).sum())
        window[inside] = label
    brightness = np.concatenate([[0.0], rng.lognormal(0.0, 0.3, label).clip(0.3, 2.0) / 2.0])
    return labels, brightness


def cell_absorption(labels: np.ndarray, p: Modality, rng: np.random.Generator) -> np.ndarray:
    """The light a brightfield cell around each nucleus absorbs, in 0..0.6 (a YX plane).

    Each nucleus gets an elliptic cell of ``p.cells`` times its equivalent radius (aspect up to 1.6,
    its centre up to a third of its radius away from the nucleus), absorbing 0.05-0.2 with a
    faint texture and a third as much again on a rim of a tenth of its radius (the folded edge);
    overlapping cells add up. A few dark specks of debris (1-2 px) lie anywhere.
    """
    shape = labels.shape
    absorbed = np.zeros(shape)
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
    present = np.unique(labels)[1:]
    areas = ndi.sum_labels(np.ones(shape), labels, present)
    for centre, area in zip(ndi.center_of_mass(labels > 0, labels, present), areas):
        radius = np.sqrt(area / np.pi) * rng.uniform(*p.cells)
        axes = radius * np.array([1.0, rng.uniform(1.0, 1.6)])
        angle = rng.uniform(0, np.pi)
        cy, cx = np.array(centre) + rng.uniform(-radius / 3, radius / 3, 2)
        u = (xx - cx) * np.cos(angle) + (yy - cy) * np.sin(angle)
        v = -(xx - cx) * np.sin(angle) + (yy - cy) * np.cos(angle)
        dist = np.sqrt((u / axes[1]) ** 2 + (v / axes[0]) ** 2)
        absorbed += rng.uniform(0.05, 0.2) * (dist <= 1.0) * (1.0 + 0.3 * (dist > 0.9))
    absorbed *= np.clip(1.0 + 0.25 * _smooth_noise(shape, 3.0, rng), 0.2, None)
    specks = max(1, round(20 * labels.size / 256**2))
    points = np.zeros(shape)
    points[rng.integers(0, shape[0], specks), rng.integers(0, shape[1], specks)] = rng.uniform(2.0, 8.0, specks)
    return np.clip(ndi.gaussian_filter(absorbed, 1.0) + ndi.gaussian_filter(points, rng.uniform(0.7, 1.5)), 0, 0.6)


def fibres(
    shape: tuple[int, ...], per_area: float, rng: np.random.Generator, length: tuple[float, float] = (20.0, 120.0)
) -> np.ndarray:
    """Bright, gently curving fibres: ``per_area`` per 256x256 pixels of the YX plane (in 3D, for
    the whole stack), each a random path.

    Every fibre starts at a random point with a random direction that turns by a small random
    angle at each half-pixel step (in 3D mostly within the plane), runs for a length drawn from
    ``length`` (px) with a log-normal brightness, and is drawn 1 px wide, then blurred
    (sigma 1 px). Returns a non-negative image of ``shape``.
    """
    count = max(1, round(per_area * shape[-1] * shape[-2] / 256**2))
    step = 0.5
    steps = int(length[1] / step)
    position = rng.uniform(0, 1, (count, len(shape))) * np.array(shape)
    direction = rng.normal(size=(count, len(shape)))
    if len(shape) == 3:
        direction[:, 0] *= 0.2
    path = np.empty((count, steps, len(shape)))
    for k in range(steps):
        direction /= np.linalg.norm(direction, axis=1, keepdims=True)
        position = position + step * direction
        path[:, k] = position
        direction = direction + rng.normal(0.0, 0.02, direction.shape)
    drawn = np.arange(steps)[None, :] < (rng.uniform(*length, count) / step)[:, None]
    pixel = np.floor(path).astype(int)
    drawn &= np.all((pixel >= 0) & (pixel < np.array(shape)), axis=2)
    brightness = np.broadcast_to(rng.lognormal(0.0, 0.4, count)[:, None], drawn.shape)
    image = np.zeros(shape)
    np.maximum.at(image, tuple(pixel[drawn].T), brightness[drawn])
    return ndi.gaussian_filter(image, 1.0)


def _smooth_noise(shape: tuple[int, ...], sigma: float, rng: np.random.Generator) -> np.ndarray:
    noise = ndi.gaussian_filter(rng.normal(size=shape), sigma)
    return noise / (noise.std() + 1e-12)


def _illumination(shape: tuple[int, ...], gradient: float, rng: np.random.Generator) -> np.ndarray:
    """A smooth falloff from a random bright point: 1 there, ``1 - gradient`` at the far corner."""
    grids = np.meshgrid(*[np.linspace(0, 1, n) for n in shape[-2:]], indexing="ij")
    centre = rng.uniform(0, 1, 2)
    dist = np.sqrt((grids[0] - centre[0]) ** 2 + (grids[1] - centre[1]) ** 2) / np.sqrt(2)
    return np.broadcast_to(1.0 - gradient * dist, shape)


def synth_suite(
    n_per_modality: int = 4,
    shape: tuple[int, ...] = (256, 256),
    seed: int = 0,
    modalities: tuple[str, ...] = MODALITIES,
) -> list[SynthImage]:
    """A seeded list of images: ``n_per_modality`` of each modality.

    Image ``i`` of a modality has the seed ``1000 seed + 10 i + k``, ``k`` the modality's place in
    ``PRESETS``, whichever modalities are chosen.
    """
    return [
        synth_image(m, shape, seed=evaluation_seed(seed * 1000 + 10 * i + modality_index(m)))
        for m in modalities
        for i in range(n_per_modality)
    ]


#: Held-out split: every seed evaluation uses is below this; training draws its seeds at or above it.
EVAL_SEED_LIMIT = 10**6


def training_seed(seed: int, *parts: int) -> int:
    """A seed for training data made from a config seed and indices, never one evaluation uses.

    Raises ValueError (the held-out assertion) if the result falls in the evaluation range.
    """
    value = EVAL_SEED_LIMIT + int(np.random.SeedSequence([seed, *parts]).generate_state(1)[0])
    if value < EVAL_SEED_LIMIT:
        raise ValueError(f"training seed {value} falls in the evaluation range (< {EVAL_SEED_LIMIT})")
    return value


def evaluation_seed(value: int) -> int:
    """``value`` checked to be in the evaluation range (see :func:`training_seed`)."""
    if not 0 <= value < EVAL_SEED_LIMIT:
        raise ValueError(f"evaluation seed {value} is outside the held-out range 0..{EVAL_SEED_LIMIT - 1}")
    return value


def modality_index(modality: str) -> int:
    """The place of ``modality`` in ``PRESETS`` (part of its seeds); an unknown name is an error."""
    if modality not in PRESETS:
        raise ValueError(f"unknown modality '{modality}'; use one of {', '.join(PRESETS)}")
    return list(PRESETS).index(modality)
