"""The NU-Net paper's evaluation metrics: contrast ratio and blob_log detection F1.

Contrast (paper Table 2): CR = mean(foreground) / mean(background) over a mask; the gain is
CR_after - CR_before and the fold change CR_after / CR_before. Every filtered image is
compared in [0, 1] (see :mod:`nunet.evaluation.baselines` for the classical filters; CR of the raw image,
min-max stretched, does not depend on a gain, only on the offset it keeps).
Deviation: a background mean below 1/255 is taken as 1/255 (one grey level), so that a filter
zeroing the background gives a large but finite CR.

Detection (paper Sec. 3.3): scikit-image ``blob_log`` with sigmas from the expected radius;
detections matched one-to-one to ground-truth centroids within a radius by optimal
assignment (Hungarian algorithm on distances); precision, recall and F1.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

MIN_BACKGROUND = 1.0 / 255.0
#: Detection scales: ``blob_log``'s sigmas span these multiples of ``radius / sqrt(2)`` (five steps).
SIGMA_RANGE = (0.5, 1.5)


def contrast_ratio(image: np.ndarray, mask: np.ndarray) -> float:
    """mean(image[mask]) / mean(image[~mask]); background mean floored at 1/255 (see module doc)."""
    mask = np.asarray(mask, dtype=bool)
    if mask.all() or not mask.any():
        raise ValueError("the mask needs both foreground and background pixels")
    return float(image[mask].mean() / max(float(image[~mask].mean()), MIN_BACKGROUND))


def detect_blobs(image: np.ndarray, radius: float, threshold: float) -> np.ndarray:
    """Centroids ``(N, 2)`` found by ``skimage.feature.blob_log`` on a [0, 1] image.

    Sigmas span radius/2 to 1.5 * radius, divided by sqrt(2) (a blob's LoG scale).
    """
    return BlobCandidates.of(image, radius, threshold).detect(threshold)


@dataclass(frozen=True)
class BlobCandidates:
    """``blob_log``'s scale-space maxima above a lowest threshold, for detection at many thresholds.

    skimage's ``blob_log`` finds the local maxima of the scale-normalised LoG cube that exceed the
    threshold, then prunes overlapping blobs. The maxima do not depend on the threshold, so they are
    found once here (above ``lowest``) and :meth:`detect` keeps those above a higher threshold and
    prunes them as ``blob_log`` does: the same detections, without recomputing the cube.
    """

    maxima: np.ndarray  # (M, 3) y, x, sigma, sorted by decreasing response
    values: np.ndarray  # (M,) LoG response of each maximum

    @classmethod
    def of(cls, image: np.ndarray, radius: float, lowest: float) -> "BlobCandidates":
        from skimage.feature import peak_local_max

        image = np.asarray(image, dtype=np.float32)
        sigma = radius / np.sqrt(2.0)
        sigmas = np.linspace(SIGMA_RANGE[0] * sigma, SIGMA_RANGE[1] * sigma, 5).astype(np.float32)
        cube = np.empty(image.shape + (len(sigmas),), dtype=np.float32)
        for i, s in enumerate(sigmas):
            cube[..., i] = -ndi.gaussian_laplace(image, s) * s**2
        peaks = peak_local_max(
            cube, threshold_abs=lowest, threshold_rel=None, exclude_border=False, footprint=np.ones((3, 3, 3))
        )
        values = cube[tuple(peaks.T)] if len(peaks) else np.zeros(0, np.float32)
        maxima = (
            np.hstack([peaks[:, :2].astype(np.float32), sigmas[peaks[:, 2]][:, None]])
            if len(peaks)
            else np.zeros((0, 3), np.float32)
        )
        return cls(maxima, values)

    def detect(self, threshold: float) -> np.ndarray:
        """Centroids ``(N, 2)`` that ``blob_log`` finds at ``threshold`` (>= the lowest one)."""
        from skimage.feature.blob import _prune_blobs

        kept = self.maxima[self.values > threshold]
        if not len(kept):
            return np.zeros((0, 2))
        return _prune_blobs(kept, 0.5, sigma_dim=1)[:, :2]


@dataclass(frozen=True)
class Matching:
    """One-to-one matching of detections to ground truth."""

    true_positives: int
    false_positives: int
    false_negatives: int

    @property
    def precision(self) -> float:
        found = self.true_positives + self.false_positives
        return self.true_positives / found if found else 0.0

    @property
    def recall(self) -> float:
        truth = self.true_positives + self.false_negatives
        return self.true_positives / truth if truth else 0.0

    @property
    def f1(self) -> float:
        denominator = 2 * self.true_positives + self.false_positives + self.false_negatives
        return 2 * self.true_positives / denominator if denominator else 1.0


def match(detections: np.ndarray, truth: np.ndarray, max_distance: float) -> Matching:
    """Optimal one-to-one assignment of detections to true centroids within ``max_distance``."""
    from scipy.optimize import linear_sum_assignment
    from scipy.spatial.distance import cdist

    detections, truth = np.asarray(detections).reshape(-1, 2), np.asarray(truth).reshape(-1, 2)
    if len(detections) == 0 or len(truth) == 0:
        return Matching(0, len(detections), len(truth))
    distance = cdist(detections, truth)
    cost = np.where(distance <= max_distance, distance, 1e9)
    rows, cols = linear_sum_assignment(cost)
    tp = int((cost[rows, cols] <= max_distance).sum())
    return Matching(tp, len(detections) - tp, len(truth) - tp)


def best_threshold(
    images: Sequence[np.ndarray],
    truths: Sequence[np.ndarray],
    radius: float | Sequence[float],
    thresholds: Sequence[float],
) -> tuple[float, float]:
    """The blob_log threshold with the highest mean F1 over a condition's images: (threshold, F1).

    ``radius`` is the expected nucleus radius, one for all images or one per image.
    """
    radii = [radius] * len(images) if np.isscalar(radius) else list(radius)
    candidates = [BlobCandidates.of(im, r, min(thresholds)) for im, r in zip(images, radii)]
    scores = [
        float(np.mean([match(c.detect(t), gt, r).f1 for c, gt, r in zip(candidates, truths, radii)]))
        for t in thresholds
    ]
    best = int(np.argmax(scores))
    return float(thresholds[best]), scores[best]
