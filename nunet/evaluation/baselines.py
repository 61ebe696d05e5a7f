"""The classical filters NU-Net is compared with (the paper's baselines), each giving a [0, 1] image.

Log LUT, Gaussian and median are followed by the paper's percentile stretch (2% -> 0, 99.8% -> 1,
clipped); the DoG has its negative part clipped to 0 (as an 8-bit DoG pipeline does) and is scaled
by its 99.8 percentile; the raw image is compared after a min-max stretch.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi


def stretch(image: np.ndarray, low: float = 2.0, high: float = 99.8) -> np.ndarray:
    """Map the ``low`` and ``high`` percentiles to 0 and 1, clipped (float32)."""
    image = np.asarray(image, dtype=np.float32)
    lo, hi = np.percentile(image, (low, high))
    if hi <= lo:
        return np.zeros_like(image)
    return np.clip((image - lo) / (hi - lo), 0.0, 1.0)


def minmax(image: np.ndarray) -> np.ndarray:
    """Map min and max to 0 and 1 (float32)."""
    return stretch(image, 0.0, 100.0)


def log_lut(image: np.ndarray) -> np.ndarray:
    """Logarithmic look-up table: log(1 + x) of the min-max scaled image, then the stretch."""
    return stretch(np.log1p(255.0 * minmax(image)))


def gaussian(image: np.ndarray, sigma: float = 1.0) -> np.ndarray:
    """Gaussian smoothing then the percentile stretch."""
    return stretch(ndi.gaussian_filter(np.asarray(image, dtype=np.float32), sigma))


def median(image: np.ndarray, size: int = 3) -> np.ndarray:
    """Median filter then the percentile stretch."""
    return stretch(ndi.median_filter(np.asarray(image, dtype=np.float32), size=size))


def dog(image: np.ndarray, radius: float) -> np.ndarray:
    """Difference of Gaussians tuned to blobs of ``radius`` px, negative responses set to 0.

    sigma1 = radius / sqrt(2) (the LoG scale of a disc of that radius), sigma2 = 1.6 * sigma1
    (the usual DoG approximation of a LoG). As in an 8-bit DoG pipeline the negative surround
    is clipped to 0; the positive response is then scaled so its 99.8 percentile is 1.
    """
    image = np.asarray(image, dtype=np.float32)
    sigma = radius / np.sqrt(2.0)
    response = np.clip(ndi.gaussian_filter(image, sigma) - ndi.gaussian_filter(image, 1.6 * sigma), 0.0, None)
    top = float(np.percentile(response, 99.8))
    return np.clip(response / top, 0.0, 1.0) if top > 0 else np.zeros_like(response)


CLASSICAL = ("log_lut", "gaussian", "median", "dog")


def classical(name: str, image: np.ndarray, radius: float) -> np.ndarray:
    """Apply one of the paper's classical baselines by name."""
    if name == "log_lut":
        return log_lut(image)
    if name == "gaussian":
        return gaussian(image)
    if name == "median":
        return median(image)
    if name == "dog":
        return dog(image, radius)
    raise ValueError(f"unknown filter '{name}'; use one of {', '.join(CLASSICAL)}")
