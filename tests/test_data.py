"""Synthetic, degraded and real data: seeded, with their truth exact, training and evaluation seeds apart."""

from __future__ import annotations

import numpy as np
import pytest

from nunet.data.degrade import Ranges, degrade
from nunet.data.synth import (
    EVAL_SEED_LIMIT,
    MODALITIES,
    PRESETS,
    evaluation_seed,
    fibres,
    synth_image,
    synth_suite,
    training_seed,
)
from nunet.errors import NUNetError


def test_degradation_is_seeded_and_keeps_the_truth_exact():
    s = synth_image("sparse", (128, 128), seed=3)
    a, b = degrade(s.image, s.labels, s.radius, seed=7), degrade(s.image, s.labels, s.radius, seed=7)
    np.testing.assert_array_equal(a.image, b.image)
    assert a.factors == b.factors
    other = degrade(s.image, s.labels, s.radius, seed=8)
    assert other.factors != a.factors
    # no rescale: the labels are the input's, so debris and streaks never enter the truth
    same = degrade(s.image, s.labels, s.radius, seed=7, ranges=Ranges(scale=(1.0, 1.0), debris_per_area=(40, 40)))
    np.testing.assert_array_equal(same.labels, s.labels)
    np.testing.assert_allclose(same.centroids, s.centroids, atol=1e-9)
    assert same.factors["debris"] > 0 and same.radius == s.radius
    # a rescale moves the centroids with it and scales the radius
    double = degrade(s.image, s.labels, s.radius, seed=7, ranges=Ranges(scale=(2.0, 2.0), max_side=256))
    assert double.image.shape == (256, 256) and double.radius == pytest.approx(2 * s.radius)
    assert len(double.centroids) == len(s.centroids)


def test_debris_is_bright_and_off_the_nuclei_mask():
    s = synth_image("sparse", (128, 128), seed=4)
    quiet = Ranges(
        scale=(1, 1),
        spread=(1, 1),
        vignetting=(0, 0),
        illumination=(0, 0),
        haze=(0, 0),
        photons=(1e6, 1e6),
        read_noise=(0, 0),
        debris_per_area=(0, 0),
        streaks_per_area=(0, 0),
    )
    from dataclasses import replace

    clean = degrade(s.image, s.labels, s.radius, seed=1, ranges=quiet)
    dirty = degrade(
        s.image, s.labels, s.radius, seed=1, ranges=replace(quiet, debris_per_area=(60, 60), debris_brightness=(4, 4))
    )
    extra = dirty.image - clean.image
    assert extra.max() > 2 * np.percentile(clean.image[s.labels > 0], 50)  # spots brighter than nuclei
    np.testing.assert_array_equal(dirty.labels, clean.labels)


def test_training_and_evaluation_seeds_never_meet():
    assert all(training_seed(seed, *parts) >= EVAL_SEED_LIMIT for seed in range(5) for parts in [(0, 1, 2), (3, 12345)])
    assert evaluation_seed(12) == 12
    with pytest.raises(ValueError, match="held-out range"):
        evaluation_seed(EVAL_SEED_LIMIT)


def test_real_images_are_found_or_the_error_names_the_path(tmp_path):
    from nunet.data.real import load_real_images

    with pytest.raises(NUNetError, match="missing.whl: not the stardist wheel"):
        load_real_images(tmp_path / "missing.whl")
    real = load_real_images()  # .ci/run installs the stardist package's data (no dependencies)
    assert real.image2d.shape == (512, 512) and real.labels2d.max() >= 100
    assert real.stack.shape == real.labels3d.shape == (31, 61, 57)


def test_defocus_spreads_the_light_of_a_point_wider_with_its_distance_from_the_plane():
    from scipy import ndimage as ndi

    from nunet.training.data import defocus

    stack = np.random.default_rng(0).random((12, 32, 32)).astype(np.float32)
    np.testing.assert_allclose(defocus(stack, 2.0, 0.0), ndi.gaussian_filter(stack, (2.0, 0, 0)))
    point = np.zeros((31, 65, 65), np.float32)
    point[15, 32, 32] = 1.0
    blurred = defocus(point, 2.0, 1.5)
    offsets = np.arange(-6, 7)  # sigma 2: reach 6 planes
    weights = np.exp(-(offsets**2) / 8.0) / np.exp(-(offsets**2) / 8.0).sum()
    sums = [float(blurred[15 + k].sum()) for k in range(5)]
    np.testing.assert_allclose(sums, weights[6:11], rtol=1e-3)  # each plane gets its Gaussian share of the light
    widths = [int((blurred[15 + k] > blurred[15 + k].max() / 2).sum()) for k in range(5)]
    assert widths == sorted(widths) and widths[0] == 1 and widths[4] > 40  # and sees it wider further away
    np.testing.assert_allclose(blurred[15 - 3], blurred[15 + 3], atol=1e-7)


@pytest.mark.parametrize("modality", PRESETS)
def test_synthetic_images_are_seeded_and_consistent(modality):
    a, b = synth_image(modality, (96, 96), seed=3), synth_image(modality, (96, 96), seed=3)
    np.testing.assert_array_equal(a.image, b.image)
    assert len(a.centroids) == len(np.setdiff1d(np.unique(a.labels), [0])) > 0
    inside, outside = a.image[a.labels > 0].mean(), a.image[a.labels == 0].mean()
    assert (inside < outside) if PRESETS[modality].dark_blobs else (inside > outside)
    assert not np.array_equal(a.image, synth_image(modality, (96, 96), seed=4).image)


def test_a_fibre_is_a_long_thin_bright_path():
    rng = np.random.default_rng(2)
    image = fibres((128, 128), 256**2 / 128**2 * 1, rng, length=(60.0, 60.0))  # exactly one fibre
    drawn = image > 0.2 * image.max()
    ys, xs = np.nonzero(drawn)
    extent = np.hypot(np.ptp(ys), np.ptp(xs))
    assert image.min() >= 0 and extent > 25  # long (part may leave the field) ...
    assert drawn.sum() < 5 * extent  # ... and a few pixels wide
    assert fibres((4, 64, 64), 400, rng).shape == (4, 64, 64)


def test_thg_fibres_background_is_fibrous_and_nuclei_dark():
    def bright_tail(s):  # thin bright fibres on a dimmer ground: a long upper tail of the background
        background = s.image[s.labels == 0]
        median = np.median(background)
        return (np.percentile(background, 99) - median) / (median - np.percentile(background, 1))

    s = synth_image("thg_fibres", (128, 128), seed=1)
    assert bright_tail(s) > 2.5 > bright_tail(synth_image("thg", (128, 128), seed=1))
    assert s.image[s.labels > 0].mean() < 0.6 * s.image[s.labels == 0].mean()


def test_brightfield_cells_are_broad_and_faint_around_darker_nuclei():
    """``cells``: the ground around each nucleus (within 3x its radius) is darker than the free
    background and far lighter than the nucleus: inverted, a broad dim blob around a bright one."""
    from scipy import ndimage as ndi

    s = synth_image("cells", (256, 256), seed=5)
    nuclei = s.labels > 0
    near = ndi.binary_dilation(nuclei, iterations=3 * 6) & ~ndi.binary_dilation(nuclei, iterations=3)
    free = ~ndi.binary_dilation(nuclei, iterations=60)
    ground, cell, nucleus = (float(np.median(s.image[m])) for m in (free, near, nuclei))
    assert nucleus < 0.6 * ground and 0.6 * ground < cell < 0.97 * ground
    with pytest.raises(ValueError, match="2D only"):
        synth_image("cells", (4, 64, 64))


def test_suite_seeds_do_not_depend_on_the_chosen_modalities():
    full = synth_suite(1, (64, 64))
    alone = synth_suite(1, (64, 64), modalities=("thg",))
    np.testing.assert_array_equal(alone[0].image, full[MODALITIES.index("thg")].image)
    with pytest.raises(ValueError, match="unknown modality 'nope'"):
        synth_suite(1, (64, 64), modalities=("nope",))


def test_synthetic_stack_is_3d():
    stack = synth_image("sparse", (6, 64, 64), seed=1)
    assert stack.image.shape == (6, 64, 64) and stack.centroids.shape[1] == 3
