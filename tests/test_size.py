"""Object size: the radius estimate, the radius option, and filtering at the model's scale."""

from __future__ import annotations

import numpy as np
import pytest

from nunet import enhance
from nunet.core.size import estimate_radius, output_radius, resize_planes, zoom_factor, zoomed_shape
from nunet.data.dsb import median_radius
from nunet.data.synth import synth_image
from nunet.errors import UsageError
from nunet.options import Radius


@pytest.mark.parametrize(("modality", "zoom"), [("sparse", 1.0), ("sparse", 3.0), ("low_snr", 1.0), ("uneven", 2.0)])
def test_the_estimate_finds_the_median_radius_of_synthetic_nuclei(modality, zoom):
    from scipy import ndimage as ndi

    image = synth_image(modality, (256, 256), seed=11)
    data, labels = ndi.zoom(image.image, zoom, order=1), ndi.zoom(image.labels, zoom, order=0)
    truth = median_radius(labels)  # sqrt(area / pi), the DSB split's and the evaluation's radius
    assert 0.8 * truth <= estimate_radius(data[None]) <= 1.25 * truth


def test_the_estimate_holds_on_degraded_planes():
    """Haze, uneven light, debris and photon noise (nunet.data.degrade): the smoothing follows the
    noise and the blobs' scales are corrected for it (the fixed 1-px smoothing missed one of these)."""
    from nunet.data.degrade import Ranges, degrade

    for seed in range(8):
        image = synth_image("sparse", (256, 256), seed=30 + seed)
        truth = median_radius(image.labels)
        degraded = degrade(image.image, image.labels, truth, 500 + seed, Ranges(scale=(1.0, 1.0), max_side=256))
        assert 0.8 * truth <= estimate_radius(degraded.image[None]) <= 1.25 * truth


def test_the_estimate_of_dark_nuclei_needs_invert():
    image = synth_image("sparse", (256, 256), seed=12)
    dark, truth = image.image.max() - image.image, median_radius(image.labels)
    assert 0.8 * truth <= estimate_radius(dark[None], invert=True) <= 1.25 * truth


def test_the_estimate_of_brightfield_finds_the_nuclei_not_the_cells_around_them():
    """Synthetic brightfield (``cells``): dark nuclei in faint cells of 3-7 nucleus radii. A cell holds
    the centre of its stronger nucleus and does not vote (the votes alone read up to 3.2x the radius)."""
    ratios = []
    for seed in range(6):
        image = synth_image("cells", (256, 256), seed=20 + seed)
        ratios.append(estimate_radius(image.image[None], invert=True) / median_radius(image.labels))
    assert max(ratios) < 1.6 and 0.8 <= np.median(ratios) <= 1.25


def test_no_estimate_for_a_flat_plane():
    assert estimate_radius(np.full((2, 64, 64), 7.0)) is None


def test_radius_option_parses_pixels_lengths_auto_and_off():
    assert Radius.parse("auto") == Radius.parse(None) == Radius()
    assert Radius.parse("12").pixels() == Radius.parse(12).pixels() == Radius.parse("12px").pixels() == 12.0
    assert Radius.parse("3.5um").pixels(0.5, "micron") == pytest.approx(7.0)
    assert Radius.parse("3.5 µm").pixels(0.25, "µm") == pytest.approx(14.0)
    assert Radius.parse("0.7um").pixels(100.0, "nm") == pytest.approx(7.0)
    assert Radius.parse("off").pixels() is None and str(Radius.parse("off")) == "off"
    for bad in ("-2", "0", "big", "3 parsec", "nan"):
        with pytest.raises(UsageError, match="--radius"):
            Radius.parse(bad)
    with pytest.raises(UsageError, match="needs an image calibrated in a length unit"):
        Radius.parse("3um").pixels(1.0, None)


def test_zoom_factor_is_bounded_and_leaves_near_radii_alone():
    assert zoom_factor(None, 7.0) == 1.0
    assert zoom_factor(7.5, 7.0) == 1.0
    assert zoom_factor(14.0, 7.0) == pytest.approx(0.5)
    assert zoom_factor(500.0, 7.0) == pytest.approx(1 / 8)
    assert zoom_factor(1.0, 7.0) == zoom_factor(4.0, 7.0) == 1.0  # small nuclei: filtered at their own scale


def test_resize_round_trip_keeps_the_exact_shape():
    planes = np.random.default_rng(0).random((2, 37, 53)).astype(np.float32)
    for factor in (0.31, 0.5, 1.7, 2.5):
        small = resize_planes(planes, zoomed_shape((37, 53), factor))
        assert small.shape[1:] == zoomed_shape((37, 53), factor)
        assert resize_planes(small, (37, 53)).shape == planes.shape


def cones(centres: list[tuple[int, int]], radius: float, shape=(128, 128)) -> np.ndarray:
    """A filter output as the models were trained to draw it: a cone per nucleus, 1 at its centre and
    0.5 at its edge (``cone_mask``), 0 outside; where two discs overlap, the higher cone."""
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    out = np.zeros(shape, np.float32)
    for y, x in centres:
        distance = np.hypot(yy - y, xx - x)
        out = np.maximum(out, np.where(distance <= radius, 1.0 - 0.5 * distance / radius, 0.0))
    return out


def test_the_output_radius_reads_the_nuclei_not_the_specks_of_a_degraded_output():
    alone = [(20, 20), (20, 60), (60, 20), (100, 100), (100, 60)]
    touching = [(60, 70), (60, 86)]  # one region over the level, two peaks: two nuclei of its area's half
    out = cones(alone + touching, 9.0)
    assert output_radius(out[None], 9.0) == pytest.approx(9.0, rel=0.08)
    specks = np.zeros_like(out)
    rng = np.random.default_rng(0)
    for y, x in rng.integers(0, 126, (150, 2)):
        specks[y : y + 2, x : x + 2] = 0.6  # noise and debris: too small to be nuclei
    assert output_radius(np.maximum(out, specks)[None], 9.0) == pytest.approx(9.0, rel=0.08)
    assert output_radius(np.zeros((1, 64, 64), np.float32), 9.0) is None


def test_the_second_look_reads_large_nuclei_off_a_trained_models_output():
    """The shipped fast model filters the sampled planes at the scale-space estimate; its output's area
    per nucleus gives the radius, and the image filtered once at it is the result."""
    from scipy import ndimage as ndi

    from nunet.api import filter_planes_sized, resolve_settings
    from nunet.options import FilterSettings

    source = synth_image("sparse", (96, 96), seed=3)
    image = ndi.zoom(source.image, 3.0, order=1)
    truth = median_radius(ndi.zoom(source.labels, 3.0, order=0))  # ~21 px
    out, used = filter_planes_sized(image[None], resolve_settings(FilterSettings(model="nunet-fast", device="cpu")))
    assert 0.8 * truth <= used <= 1.25 * truth and used != estimate_radius(image[None])  # the output's reading
    np.testing.assert_array_equal(out[0], enhance(image, "nunet-fast", device="cpu", radius=used))


def test_only_models_that_draw_nuclei_over_their_masks_take_the_second_look(model):
    """Cone targets at full strength (the strongest members of the shipped families); not a member that
    keeps some of the input, nor a model trained otherwise (the random test model)."""
    from nunet.api import draws_masks

    assert draws_masks("nunet-v11") and draws_masks("nunet-fast")
    assert not draws_masks("nunet-v11-w0.5") and not draws_masks(model)


def test_large_nuclei_are_filtered_at_the_models_scale_and_come_back_at_theirs(model):
    from scipy import ndimage as ndi

    image = ndi.zoom(synth_image("sparse", (96, 96), seed=3).image, 3.0, order=1)  # radius ~21 px
    out = enhance(image, model)
    assert out.shape == image.shape and out.dtype == np.float32 and 0 <= out.min() and out.max() <= 1
    estimate = estimate_radius(image[None])  # the random test model takes no second look
    assert estimate > 14
    np.testing.assert_array_equal(out, enhance(image, model, radius=estimate))  # auto: the estimate, once
    assert not np.allclose(out, enhance(image, model, radius="off"), atol=0.05)  # off: the image's own scale
    near = enhance(image, model, radius=7.5)  # within the tolerance of the model's 7 px: no resize
    np.testing.assert_array_equal(near, enhance(image, model, radius="off"))


def test_a_radius_in_microns_uses_the_images_calibration(model):
    from nunet.io import Calibration, Image

    data = synth_image("sparse", (64, 64), seed=4).image
    calibrated = Image(data, "YX", Calibration(0.5, 0.5, "micron"))
    np.testing.assert_array_equal(enhance(calibrated, model, radius="7um"), enhance(data, model, radius=14))
    with pytest.raises(UsageError, match="calibrated in a length unit"):
        enhance(data, model, radius="7um")
