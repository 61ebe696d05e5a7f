"""Seeded, realistic degradations of an image whose nuclei are labelled; the ground truth stays exact.

Real microscopes add to a clean image of nuclei what blob detection struggles with. Each factor
here is drawn from :class:`Ranges` by a seeded generator and applied in this order:

1. rescaling by a factor (image bilinear, labels nearest; the nucleus radius scales with it),
   then a crop to at most ``max_side`` pixels;
2. intensity spread: each nucleus's excess over the background is multiplied by its own factor,
   log-uniform over a ``spread``-fold range (dim nuclei beside bright ones);
3. uneven illumination: a multiplicative vignetting (``1 - v r^2`` from a random centre) and an
   additive smooth field whose amplitude is up to ``illumination`` times the nuclei's contrast
   (mean nucleus minus median background);
4. out-of-focus haze: a copy blurred at several nucleus radii, added with a weight;
5. debris and streaks: small bright spots (sigma 0.7-1.5 px) and short bright lines, up to a few
   times the nuclei's contrast, which are not nuclei and are not in the truth;
6. photon noise: the image scaled so that the mean nucleus gives ``photons`` expected counts
   (log-uniform), Poisson-sampled, plus Gaussian read noise.

The labels change only by the rescale and crop; centroids are those of the visible labels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi


@dataclass(frozen=True)
class Ranges:
    """Ranges the factors are drawn from (uniform unless said otherwise)."""

    scale: tuple[float, float] = (0.5, 2.0)  # log-uniform
    spread: tuple[float, float] = (1.0, 10.0)  # max/min nucleus brightness ratio
    vignetting: tuple[float, float] = (0.0, 0.6)
    illumination: tuple[float, float] = (0.0, 1.0)  # additive field amplitude / nuclei contrast
    haze: tuple[float, float] = (0.0, 1.0)
    debris_per_area: tuple[float, float] = (0.0, 40.0)  # spots per 256x256 px
    streaks_per_area: tuple[float, float] = (0.0, 6.0)
    debris_brightness: tuple[float, float] = (1.0, 4.0)  # times the nuclei contrast
    photons: tuple[float, float] = (3.0, 200.0)  # log-uniform, expected counts of a mean nucleus
    read_noise: tuple[float, float] = (0.5, 3.0)  # in photons
    max_side: int = 512


@dataclass
class Degraded:
    """A degraded image with its exact ground truth."""

    image: np.ndarray  # float32 (Y, X), photon counts
    labels: np.ndarray  # int32, same shape
    centroids: np.ndarray  # (N, 2) of the visible labels
    radius: float  # expected nucleus radius after the rescale (px)
    factors: dict  # the drawn factors, for reports


def _log_uniform(rng: np.random.Generator, bounds: tuple[float, float]) -> float:
    return float(np.exp(rng.uniform(np.log(bounds[0]), np.log(bounds[1]))))


def _smooth_field(shape: tuple[int, int], sigma: float, rng: np.random.Generator) -> np.ndarray:
    """A smooth random field in [0, 1] (min-max scaled), features of about ``sigma`` px."""
    small = tuple(max(4, int(np.ceil(n / sigma)) + 3) for n in shape)
    coarse = ndi.gaussian_filter(rng.normal(size=small), 1.0)
    field = ndi.zoom(coarse, (shape[0] / small[0], shape[1] / small[1]), order=3)[: shape[0], : shape[1]]
    field = np.pad(field, [(0, shape[0] - field.shape[0]), (0, shape[1] - field.shape[1])], mode="edge")
    return (field - field.min()) / max(float(np.ptp(field)), 1e-12)


def _debris(
    shape: tuple[int, int], spots: int, streaks: int, rng: np.random.Generator, brightness: tuple[float, float]
) -> np.ndarray:
    """Small bright spots and short 1-px streaks, blurred, peak values drawn from ``brightness``."""
    out = np.zeros(shape, np.float32)
    height, width = shape
    for _ in range(spots):
        y, x = rng.uniform(0, height), rng.uniform(0, width)
        sigma = rng.uniform(0.7, 1.5)
        reach = int(np.ceil(4 * sigma))
        y0, y1 = max(0, int(y) - reach), min(height, int(y) + reach + 1)
        x0, x1 = max(0, int(x) - reach), min(width, int(x) + reach + 1)
        yy, xx = np.mgrid[y0:y1, x0:x1]
        spot = rng.uniform(*brightness) * np.exp(-((yy - y) ** 2 + (xx - x) ** 2) / (2 * sigma**2))
        out[y0:y1, x0:x1] = np.maximum(out[y0:y1, x0:x1], spot)
    lines = np.zeros(shape, np.float32)
    for _ in range(streaks):
        y, x = rng.uniform(0, height), rng.uniform(0, width)
        angle, length = rng.uniform(0, np.pi), rng.uniform(8, 40)
        t = np.arange(0, length, 0.5)
        ys = np.round(y + t * np.sin(angle)).astype(int)
        xs = np.round(x + t * np.cos(angle)).astype(int)
        keep = (ys >= 0) & (ys < height) & (xs >= 0) & (xs < width)
        lines[ys[keep], xs[keep]] = rng.uniform(*brightness)
    # a 1-px line blurred at sigma 0.7 keeps about 0.57 of its peak: scale back up
    return np.maximum(out, ndi.gaussian_filter(lines, 0.7) / 0.57)


def centroids_of(labels: np.ndarray) -> np.ndarray:
    """Centroids (N, 2) of the labels present (label order)."""
    present = np.unique(labels)
    present = present[present > 0]
    return np.array(ndi.center_of_mass(labels > 0, labels, present)).reshape(-1, 2)


def degrade(image: np.ndarray, labels: np.ndarray, radius: float, seed: int, ranges: Ranges = Ranges()) -> Degraded:
    """Degrade a 2D image with labelled nuclei (see module docstring); the same seed, the same result."""
    rng = np.random.default_rng(seed)
    x = np.asarray(image, np.float32)
    lo, hi = np.percentile(x, (0.1, 99.9))
    x = np.clip((x - lo) / max(hi - lo, 1e-12), 0, None)
    labels = np.asarray(labels).astype(np.int32)

    scale = _log_uniform(rng, ranges.scale)
    x = ndi.zoom(x, scale, order=1)
    labels = ndi.zoom(labels, scale, order=0)
    side = ranges.max_side
    y0 = int(rng.integers(0, max(1, x.shape[0] - side + 1)))
    x0 = int(rng.integers(0, max(1, x.shape[1] - side + 1)))
    x, labels = x[y0 : y0 + side, x0 : x0 + side], labels[y0 : y0 + side, x0 : x0 + side]
    shape = x.shape
    foreground = labels > 0
    background = float(np.median(x[~foreground])) if (~foreground).any() else 0.0
    contrast = max(float(x[foreground].mean()) - background, 1e-3) if foreground.any() else 1.0

    spread = rng.uniform(*ranges.spread)
    gains = np.exp(rng.uniform(-0.5, 0.5, labels.max() + 1) * np.log(spread))
    gains[0] = 1.0
    gain_map = ndi.gaussian_filter(gains[labels].astype(np.float32), 1.5 * max(scale, 0.5))
    x = background + (x - background) * gain_map

    yy, xx = np.meshgrid(np.linspace(0, 1, shape[0]), np.linspace(0, 1, shape[1]), indexing="ij")
    cy, cx = rng.uniform(0.2, 0.8, 2)
    vignetting = rng.uniform(*ranges.vignetting)
    x = x * (1.0 - vignetting * ((yy - cy) ** 2 + (xx - cx) ** 2) / 0.68)
    illumination = rng.uniform(*ranges.illumination)
    x = x + illumination * contrast * _smooth_field(shape, max(shape) / 3.0, rng)

    haze = rng.uniform(*ranges.haze)
    x = x + haze * ndi.gaussian_filter(x, 4.0 * radius * scale)

    area = shape[0] * shape[1] / 256**2
    spots = int(rng.poisson(rng.uniform(*ranges.debris_per_area) * area))
    streaks = int(rng.poisson(rng.uniform(*ranges.streaks_per_area) * area))
    x = x + contrast * _debris(shape, spots, streaks, rng, ranges.debris_brightness)

    photons = _log_uniform(rng, ranges.photons)
    read_noise = rng.uniform(*ranges.read_noise)
    level = background + contrast
    counts = rng.poisson(np.clip(x, 0, None) * (photons / level)) + rng.normal(0.0, read_noise, shape)
    factors = {
        "scale": scale,
        "spread": spread,
        "vignetting": vignetting,
        "illumination": illumination,
        "haze": haze,
        "debris": spots,
        "streaks": streaks,
        "photons": photons,
        "read_noise": read_noise,
    }
    return Degraded(counts.astype(np.float32), labels, centroids_of(labels), radius * scale, factors)


def degrade_dark_aware(
    image: np.ndarray, labels: np.ndarray, radius: float, seed: int, ranges: Ranges, dark: bool
) -> Degraded:
    """:func:`degrade` for bright or dark nuclei: a dark-blob image is flipped for the degradation
    (which assumes bright nuclei) and its result flipped back, so it stays a dark-blob image."""
    source = image.max() - image if dark else image
    done = degrade(source, labels, radius, seed, ranges)
    if dark:
        done.image = done.image.max() - done.image
    return done
