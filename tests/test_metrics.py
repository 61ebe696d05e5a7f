"""Detection metrics and the classical baselines: contrast, matching F1, blob_log, DoG."""

from __future__ import annotations

import numpy as np
import pytest

from nunet.data.synth import synth_image
from nunet.evaluation import baselines, metrics


def test_contrast_ratio_of_a_two_level_image():
    image = np.full((10, 10), 0.2, np.float32)
    mask = np.zeros((10, 10), bool)
    mask[2:5, 2:5] = True
    image[mask] = 0.8
    assert metrics.contrast_ratio(image, mask) == pytest.approx(4.0)
    image[~mask] = 0.0
    assert metrics.contrast_ratio(image, mask) == pytest.approx(0.8 * 255)  # background floored at 1/255
    with pytest.raises(ValueError):
        metrics.contrast_ratio(image, np.ones((10, 10), bool))


def test_matching_f1():
    truth = np.array([[10, 10], [30, 30], [50, 50]], float)
    assert metrics.match(truth, truth, 3).f1 == 1.0
    empty = metrics.match(np.zeros((0, 2)), truth, 3)
    assert empty.f1 == 0.0 and empty.false_negatives == 3
    half = metrics.match(np.array([[11, 10], [90, 90]], float), truth, 3)
    assert (half.true_positives, half.false_positives, half.false_negatives) == (1, 1, 2)
    assert half.f1 == pytest.approx(2 / 5)


def test_matching_is_optimal_not_greedy():
    # greedy nearest-first pairs d0 with t1 (distance 1) and leaves d1 unmatched; optimal matches both
    truth = np.array([[0, 0], [0, 2]], float)
    detections = np.array([[0, 1.9], [0, 3.5]], float)
    assert metrics.match(detections, truth, 2.0).true_positives == 2


def test_blob_log_finds_gaussian_blobs():
    yy, xx = np.mgrid[0:64, 0:64]
    centres = np.array([[16, 16], [40, 44], [20, 50]])
    image = sum(np.exp(-((yy - y) ** 2 + (xx - x) ** 2) / (2 * 3.0**2)) for y, x in centres)
    found = metrics.detect_blobs(image / image.max(), radius=4.0, threshold=0.1)
    assert metrics.match(found, centres, 3).f1 == 1.0


@pytest.mark.parametrize("name", baselines.CLASSICAL)
def test_classical_filters_give_unit_range(name):
    image = synth_image("sparse", (64, 64), seed=0).image
    out = baselines.classical(name, image, radius=6.0)
    assert out.shape == image.shape and out.min() >= 0.0 and out.max() <= 1.0 and out.std() > 0


def test_dog_peaks_on_a_blob_of_its_radius():
    yy, xx = np.mgrid[0:64, 0:64]
    disc = (((yy - 32) ** 2 + (xx - 32) ** 2) <= 36).astype(np.float32)
    out = baselines.dog(disc, radius=6.0)
    assert out[32, 32] == out.max() == 1.0
    assert out[32, 32 + 9] < 0.5 and out[0, 0] < 0.5  # the surround just outside the disc and far away
